#!/usr/bin/env bash
# The GPU check of issue 14, for the day a GPU is lent; under 8 minutes on one H100-class GPU,
# no network. First the CUDA path's tests (marked gpu; a missing GPU fails them instead of
# skipping them), then experiments/gpu/check.py: full-width VGG19 pruned to 8.84x on the CIFAR-10
# JPEGs and fine-tuned one epoch, printing training images/s (dense, pruned), the fine-tune
# epoch's time and 100 epochs projected, the measured latency speed-up, and a JSON line.
#
#   experiments/gpu/check.sh [DATA] [check.py options, e.g. --baseline dense.pt --json-out r.json]
#
# DATA: the JPEG tarball or a folder holding train/<class>/<image> (default:
# ../shared/data/cifar10-train-jpeg.tar.gz beside the repository, unpacked once into
# ~/.cache/prunetune-data/cifar10-jpeg). The interpreter: $PYTHON, else the venv `make install`
# builds when it is there, else python3.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z ${PYTHON:-} ]]; then
    venv="$HOME/.cache/prunetune/venv-$(python3 experiments/deps_hash.py)"
    PYTHON=python3
    [[ -x $venv/bin/python ]] && PYTHON=$venv/bin/python
fi
data=()
if [[ $# -gt 0 && $1 != -* ]]; then
    data=(--data "$1")
    shift
fi
start=$(date +%s)
echo "== the gpu tests ($PYTHON)" >&2
PRUNETUNE_REQUIRE_GPU=1 timeout 150 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests
echo "== VGG19 pruned to 8.84x and fine-tuned one epoch" >&2
timeout 300 "$PYTHON" experiments/gpu/check.py "${data[@]}" "$@"
echo "== the GPU check took $(( $(date +%s) - start )) s" >&2
