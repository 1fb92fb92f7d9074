#!/usr/bin/env bash
# A shared MLflow tracking server for prunetune searches.
#
# Local/loopback (what the tests start): sqlite + an artifact folder, proxied over HTTP, bound to
# 127.0.0.1 so nothing outside this machine can reach it.
#   experiments/cluster/mlflow-server.sh /srv/mlflow 5000
#
# Shared by a cluster (cloud-only): PostgreSQL + S3, still proxied so workers need no S3 keys.
# Binding to 0.0.0.0 exposes it: put an authenticating reverse proxy (nginx with basic auth or
# OAuth2 Proxy) in front, or use `mlflow server --app-name basic-auth`, and restrict the port.
#   mlflow server --backend-store-uri postgresql://mlflow:PASS@db:5432/mlflow \
#     --artifacts-destination s3://REPLACE_ME/mlflow --host 0.0.0.0 --port 5000
set -euo pipefail
root=${1:-$HOME/.cache/prunetune-mlflow}
port=${2:-5000}
mkdir -p "$root/artifacts"
exec mlflow server --backend-store-uri "sqlite:///$root/mlflow.db" \
  --artifacts-destination "$root/artifacts" --host 127.0.0.1 --port "$port"
