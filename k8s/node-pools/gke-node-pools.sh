#!/usr/bin/env bash
# Create Scout's two GPU node pools on an existing GKE cluster (label + taints as in README.md).
# Usage: CLUSTER=my-cluster REGION=europe-west4 k8s/node-pools/gke-node-pools.sh
set -euo pipefail
: "${CLUSTER:?set CLUSTER}" "${REGION:?set REGION}"
EDGE_GPU="${EDGE_GPU:-nvidia-l4}"
CLOUD_GPU="${CLOUD_GPU:-nvidia-l4}"

gcloud container node-pools create scout-edge-gpu \
  --cluster "$CLUSTER" --region "$REGION" \
  --machine-type g2-standard-8 --accelerator "type=$EDGE_GPU,count=1,gpu-driver-version=latest" \
  --num-nodes 1 --enable-autoscaling --min-nodes 0 --max-nodes 4 \
  --node-labels scout.dev/pool=edge-gpu \
  --node-taints scout.dev/pool=edge-gpu:NoSchedule,nvidia.com/gpu=present:NoSchedule

gcloud container node-pools create scout-cloud-gpu \
  --cluster "$CLUSTER" --region "$REGION" \
  --machine-type g2-standard-16 --accelerator "type=$CLOUD_GPU,count=1,gpu-driver-version=latest" \
  --num-nodes 1 --enable-autoscaling --min-nodes 1 --max-nodes 8 \
  --node-labels scout.dev/pool=cloud-gpu \
  --node-taints scout.dev/pool=cloud-gpu:NoSchedule,nvidia.com/gpu=present:NoSchedule
