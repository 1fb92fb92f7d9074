#!/usr/bin/env bash
# `make demo`: a real small search over pruning schedules, then the front and an export.
# Args: BIN (venv bin folder), SHARED_CIFAR10 (tarball), DATA_CACHE, OUT (demo output folder).
set -euo pipefail
bin=$1 tarball=$2 cache=$3 out=$4
prunetune="$bin/prunetune"
config=experiments/demo_search.yaml

# The first line says which data and why (experiments/demo_data.py: the shared JPEG copy, else
# torchvision's CIFAR-10 download when the network answers, else generated images).
choice=$("$bin/python" experiments/demo_data.py "$tarball" "$cache")
mapfile -t data <<< "$choice"

start=$(date +%s)
"$prunetune" search "$config" "${data[@]}" "out=$out"
"$prunetune" export "$config" "${data[@]}" "out=$out" --pick knee --out "$out/export"
echo "" >&2
echo "demo finished in $(( $(date +%s) - start )) s. Export: $out/export (schedule.yaml, pruned.pt, plots, report.html)" >&2
echo "open the results in the MLflow UI:" >&2
echo "  $bin/mlflow ui --backend-store-uri sqlite:///$(cd "$out" && pwd)/mlflow.db --host 127.0.0.1 --port 5000" >&2
