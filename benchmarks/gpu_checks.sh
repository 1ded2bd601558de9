#!/usr/bin/env bash
# GPU checks for a CUDA machine (not CI): gpu-marked BrainLM tests, then the step and fine-tuning benchmarks in
# fp32 and bf16 at batch 2, 8 and 32. Usage: OUT=folder BRAINMM_BRAINLM_FIXTURES=... bash benchmarks/gpu_checks.sh
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" >> "$OUT/gpu.txt" 2>&1
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_brainlm_parity.py > "$OUT/gpu_tests.txt" 2>&1
tail -3 "$OUT/gpu_tests.txt"
for b in 2 8 32; do
  echo "== step batch $b fp32 (ours vs eager reference)"
  timeout 60 python3 benchmarks/brainlm_step.py --device cuda --batch "$b" --rounds 2 --steps 3 --embed-batches 3 --skip-agreement 2>&1 | tail -6
  echo "== step batch $b bf16 autocast, both models"
  timeout 60 python3 benchmarks/brainlm_step.py --device cuda --batch "$b" --bf16 --rounds 2 --steps 3 --embed-batches 3 --skip-agreement 2>&1 | tail -6
  echo "== step batch $b ours bf16 vs ours fp32"
  timeout 60 python3 benchmarks/brainlm_step.py --device cuda --batch "$b" --precision bf16 --rounds 2 --steps 3 --embed-batches 3 2>&1 | tail -8
done > "$OUT/brainlm_step.txt"
timeout 150 python3 benchmarks/brainlm_finetune.py --device cuda --batch 8,32 --bf16 --steps 3 > "$OUT/brainlm_finetune.txt" 2>&1
tail -20 "$OUT/brainlm_finetune.txt"
