#!/usr/bin/env bash
# FASA-C on a GPU (issue #11 section 4): kernel correctness, then one layer's decode attention
# TIP + top-k + FAC vs dense SDPA (GQA folded / enable_gqa) at 8K-64K, SmolLM2 and Llama-3.1-8B shapes.
# One Markdown table on stdout (and in $OUT, default fasa-gpu.md). Expected well under 8 minutes on one GPU.
#   bash bench/gpu_fasa.sh            # GPU run
#   bash bench/gpu_fasa.sh --cpu      # the CPU-interpretable part only (TRITON_INTERPRET=1; what the tests run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
if [ "${1:-}" = "--cpu" ]; then
  TRITON_INTERPRET=1 exec timeout 600 "$PY" -m leanlm.fasa.gpu_bench --smoke
fi
"$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'" 
timeout 480 "$PY" -m leanlm.fasa.gpu_bench --contexts "${CONTEXTS:-8192,16384,32768,65536}" --out "${OUT:-fasa-gpu.md}"
