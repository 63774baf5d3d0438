#!/usr/bin/env bash
# The GPU benchmarks of issue 6, in one call (H100/H200): Phi-3-mini-shaped random model, MPNet-shaped random encoder,
# bf16. Each writes benchmarks/results/<name>-cuda-phi3-shape.json; the console output is kept in gpu-run.log.
set -euo pipefail
cd "$(dirname "$0")"
{
  python alignment.py --device cuda --model phi3-shape --encoder mpnet-shape --dtype bfloat16 --batch 16 \
    --max-length 256 --ref-steps 200 --passages 128
  python unlearn_step.py --device cuda --model phi3-shape --dtype bfloat16 --batch 16 --length 256 --steps 10
  python evaluation.py --device cuda --model phi3-shape --dtype bfloat16 --batch 64 --probes 256
} 2>&1 | tee results/gpu-run.log
