#!/usr/bin/env bash
# Issue #16 on a GPU: the SmolLM2-135M PRM (embedded backbone, full fine-tune) on BIS-10%, random-10% and
# full data of the synthetic corpus with truth, one seed each. Writes OUT/*.json and OUT/summary.md.
# CPU smoke run: OUT=/tmp/g N=60 VAL=20 TEST=20 BACKBONE=tiny DEVICE=cpu bench/gpu_bis.sh
# NOT yet run on a GPU (none was lent when it was written); expected well under 8 minutes on one H200.
set -euo pipefail
OUT=${OUT:-/tmp/gpu_bis}
N=${N:-20000}; VAL=${VAL:-2000}; TEST=${TEST:-4000}
BACKBONE=${BACKBONE:-embedded}; DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
L=".venv/bin/leanlm bis"
$L synth "$OUT/c" --with-truth --rollouts "$N" --val "$VAL" --test "$TEST" > "$OUT/synth.json"
$L select "$OUT/c/train" -o "$OUT/bis10.jsonl" --ratio 0.1 --alpha 0.2 --no-hash
$L select "$OUT/c/train" -o "$OUT/random10.jsonl" --ratio 0.1 --scorer random --no-hash
for arm in bis10 random10 full; do
  data="$OUT/$arm.jsonl"; [ "$arm" = full ] && data="$OUT/c/train"
  /usr/bin/time -f "$arm train %e s" $L train "$data" --out "$OUT/ck-$arm" --backbone "$BACKBONE" --lr 2e-5 \
    --batch 16 --max-len 384 --checkpoint-every 0 --device "$DEVICE"
  $L eval "$OUT/ck-$arm/final" --test "$OUT/c/test" --val "$OUT/c/val" --json "$OUT/$arm.json" --device "$DEVICE" \
    | tee "$OUT/$arm.txt"
done
{ echo "| arm | AUC | F1 @0.5 | F1 @val threshold |"; echo "|---|---|---|---|"
  for arm in bis10 random10 full; do
    .venv/bin/python -c "import json,sys; d=json.load(open(sys.argv[1])); print(f\"| $arm | {d['auc']:.4f} | {d['fixed_0.5']['overall_micro_f1']:.4f} | {d['val_tuned']['overall_micro_f1']:.4f} |\")" "$OUT/$arm.json"
  done; } > "$OUT/summary.md"
cat "$OUT/summary.md"
