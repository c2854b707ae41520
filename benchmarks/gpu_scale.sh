#!/usr/bin/env bash
# The scale benchmark (benchmarks/scale.py) on a GPU machine: ViT-B-32 at 224 px in bf16, every phase with real batch
# sizes (the verdict stacks 20 candidates x 32 images), 2K- and 20K-pair synthetic shards, the full 1,000-class x
# 80-template zero-shot classifier and a 1,000-class synset tree; one process per GPU (1, and 2 when there are two).
# Prints the table and writes benchmarks/results/gpu_scale.{csv,md} (OUTPUT=folder to change it).
#
#   bash benchmarks/gpu_scale.sh                       # on a GPU machine
#   bash benchmarks/gpu_scale.sh --tiny                # the CPU check of this script (clipclean-tiny, bf16 autocast)
#   bash benchmarks/gpu_scale.sh --pretrained openai   # extra flags go to scale.py (here: pretrained weights)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
PYTHON="${PYTHON:-python}"

if [[ "${1:-}" == "--tiny" ]]; then
    shift
    exec "$PYTHON" benchmarks/scale.py --tiny --device cpu --precision bf16 --processes 1 \
        --output "${OUTPUT:-benchmarks/results}" --name gpu_scale_tiny "$@"
fi

GPUS="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')"
if [[ "$GPUS" -lt 1 ]]; then
    echo "gpu_scale.sh: no GPU visible (torch.cuda.device_count() == 0); 'bash benchmarks/gpu_scale.sh --tiny' is the CPU check" >&2
    exit 1
fi
PROCESSES=(1)
if [[ "$GPUS" -ge 2 ]]; then PROCESSES=(1 2); fi

exec "$PYTHON" benchmarks/scale.py --model ViT-B-32 --device cuda --precision bf16 --processes "${PROCESSES[@]}" \
    --threads 4 --workers 4 --steps 5 --batch-size 64 --micro-batch 64 --verdict-batch 32 \
    --shard-pairs 2000 20000 --zeroshot-classes 1000 --zeroshot-images-per-class 2 --zeroshot-templates 80 \
    --zeroshot-batch-size 256 --output "${OUTPUT:-benchmarks/results}" --name gpu_scale "$@"
