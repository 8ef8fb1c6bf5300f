#!/usr/bin/env bash
# Issue #16 on a GPU: the SmolLM2-135M PRM (embedded backbone, full fine-tune) on BIS-10%, random-10% and
# full data of the synthetic corpus with truth, SEEDS seeds, paired by seed (the same driver as the CPU study,
# `leanlm bis study`, so the cells, the val-chosen threshold and the Student-t intervals are the same).
# Writes OUT/study/cells.jsonl (resumable: rerun the script), OUT/study/report.md and OUT/summary.md.
# CPU smoke run: OUT=/tmp/g N=60 VAL=20 TEST=20 SEEDS=2 BACKBONE=tiny DEVICE=cpu LR=3e-3 bench/gpu_bis.sh
# NOT yet run on a GPU (none was lent when it was written). Expected on one H200: about 1-2 min per full-data
# cell at N=10000 (625 steps of batch 16 with max 384 tokens), so well under 8 minutes for 3 seeds.
set -euo pipefail
OUT=${OUT:-/tmp/gpu_bis}
N=${N:-10000}; VAL=${VAL:-1000}; TEST=${TEST:-2000}; SEEDS=${SEEDS:-3}
BACKBONE=${BACKBONE:-embedded}; DEVICE=${DEVICE:-cuda}; LR=${LR:-2e-5}
mkdir -p "$OUT"
L=".venv/bin/leanlm bis"
[ -d "$OUT/c/test" ] || $L synth "$OUT/c" --with-truth --rollouts "$N" --val "$VAL" --test "$TEST" > "$OUT/synth.json"
/usr/bin/time -f "study %e s" $L study "$OUT/c" --out "$OUT/study" --budgets 0.1 --selectors random,bis-0.2 \
  --seeds "$SEEDS" --backbone "$BACKBONE" --device "$DEVICE" --lr "$LR" --batch 16 --threads 0 --checkpoint-every 100 > "$OUT/study.log" 2>&1
cp "$OUT/study/report.md" "$OUT/summary.md"
cat "$OUT/summary.md"
