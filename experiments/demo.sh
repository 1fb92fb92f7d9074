#!/usr/bin/env bash
# `make demo`: a real small search over pruning schedules, then the front and an export.
# Args: BIN (venv bin folder), SHARED_CIFAR10 (tarball), DATA_CACHE, OUT (demo output folder).
set -euo pipefail
bin=$1 tarball=$2 cache=$3 out=$4
prunetune="$bin/prunetune"
config=experiments/demo_search.yaml

if [ -f "$tarball" ]; then
  root="$cache/cifar10-jpeg"
  if [ ! -d "$root/train" ]; then
    echo "unpacking the real CIFAR-10 training JPEGs to $root (once)" >&2
    mkdir -p "$root" && tar -xzf "$tarball" -C "$root"
  fi
  echo "demo data: the real CIFAR-10 training split (JPEG copy) in $root" >&2
  data=(data.name=imagefolder "data.root=$root")
else
  echo "no CIFAR-10 copy at $tarball: the demo uses GENERATED data, not real images" >&2
  echo "(pass SHARED_CIFAR10=/path/to/cifar10-train-jpeg.tar.gz to use real images)" >&2
  data=(data.name=synthetic)
fi

start=$(date +%s)
"$prunetune" search "$config" "${data[@]}" "out=$out"
"$prunetune" export "$config" "${data[@]}" "out=$out" --pick knee --out "$out/export"
echo "" >&2
echo "demo finished in $(( $(date +%s) - start )) s. Export: $out/export (schedule.yaml, pruned.pt, plots, report.html)" >&2
echo "open the results in the MLflow UI:" >&2
echo "  $bin/mlflow ui --backend-store-uri sqlite:///$(cd "$out" && pwd)/mlflow.db --host 127.0.0.1 --port 5000" >&2
