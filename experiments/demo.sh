#!/usr/bin/env bash
# `make demo`: pretrain a small VGG19 baseline, then replay the demo schedule on it.
# Args: BIN (venv bin folder), SHARED_CIFAR10 (tarball), DATA_CACHE, OUT.
set -euo pipefail
bin=$1 tarball=$2 cache=$3 out=$4
prunetune="$bin/prunetune"

if [ -f "$tarball" ]; then
  root="$cache/cifar10-jpeg"
  if [ ! -d "$root/train" ]; then
    echo "unpacking the real CIFAR-10 training JPEGs to $root (once)" >&2
    mkdir -p "$root" && tar -xzf "$tarball" -C "$root"
  fi
  echo "demo data: the real CIFAR-10 training split (JPEG copy) in $root" >&2
  data_args=(data.name=imagefolder "data.root=$root")
  replay_data="imagefolder:$root"
else
  echo "no CIFAR-10 copy at $tarball: the demo uses GENERATED data, not real images" >&2
  echo "(pass SHARED_CIFAR10=/path/to/cifar10-train-jpeg.tar.gz to use real images)" >&2
  data_args=(data.name=synthetic)
  replay_data="synthetic"
fi

if [ -f "$out/baseline/baseline.pt" ]; then
  echo "reusing the baseline in $out/baseline (delete it to pretrain again)" >&2
else
  "$prunetune" pretrain experiments/demo.yaml "${data_args[@]}" "out=$out/baseline"
fi
"$prunetune" replay experiments/demo_schedule.yaml --checkpoint "$out/baseline/baseline.pt" \
  --data "$replay_data" --out "$out/replay"
echo "demo outputs: $out/baseline (baseline.pt, metrics.json), $out/replay (pruned.pt, schedule.yaml, metrics.json)" >&2
