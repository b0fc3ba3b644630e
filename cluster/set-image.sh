#!/usr/bin/env bash
# Point every cluster config at another image reference (your registry), keeping them in step:
#   cluster/set-image.sh 123456789012.dkr.ecr.us-west-2.amazonaws.com/finedetail:0.1.0
# Rewrites cluster/IMAGE, the launcher configs and the KubeRay manifests (tests/test_cluster.py checks they agree).
set -euo pipefail
cd "$(dirname "$0")"
new="${1:?usage: cluster/set-image.sh REGISTRY/NAME:TAG}"
old="$(tr -d '[:space:]' < IMAGE)"
for f in aws-gpu.yaml local-onprem.yaml kuberay/rayjob.yaml kuberay/raycluster.yaml; do
    sed -i.bak "s#image: ${old}#image: ${new}#" "$f" && rm -f "$f.bak"
done
printf '%s\n' "$new" > IMAGE
echo "image: $old -> $new"
