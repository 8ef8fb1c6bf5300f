#!/usr/bin/env bash
# OmniSIFT on a GPU: prefill time of a random thinker shaped like Qwen2.5-Omni-7B (28 layers, hidden 3584,
# 28/4 heads, intermediate 18944; bf16, sdpa) at 100% / 35% / 25% of the audio-visual tokens, plus the
# compressor's own time (STVP + VGAS). Two lengths: 32 s and 120 s of video at 256 tokens per frame and
# 25 audio tokens/s (9,001 and 33,729 tokens uncompressed). Encoders are not timed (unchanged by OmniSIFT).
# Budget: well under 8 minutes on one H100/H200-class GPU (random init + 2 x 3 settings x 4 rounds).
# Output: reports/gpu-omnisift/prefill-7b-{32,120}s.md (+ .json), to paste into docs/results/omnisift.md §4.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-reports/gpu-omnisift}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "no GPU visible" >&2; exit 1; }
for frames in 32 120; do
  timeout 200 "$PY" -m leanlm.cli omnisift prefill --shape 7b --device cuda --dtype bfloat16 \
    --frames "$frames" --tokens-per-frame 256 --repeats 3 --out "$OUT/prefill-7b-${frames}s.md"
done
echo "wrote $OUT/prefill-7b-32s.md $OUT/prefill-7b-120s.md"
