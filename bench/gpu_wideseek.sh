#!/usr/bin/env bash
# WideSeek-R1 training study, short version, on one GPU: SFT warm start of SmolLM2-135M on oracle traces,
# 2 multi-agent GRPO steps (G = 4), then held-out item F1 Avg@4 of base / SFT / SFT+MARL (seed 0) and the
# trained policy at widths 1, 2, 4 -- the "headline" and "width" stages of `leanlm wideseek study`, with the
# CPU study's protocol (same turn limits, reply caps and held-out tasks) but fewer SFT examples and steps.
# Budget: under 8 minutes on one H100/H200-class GPU (model 135M; the offline world and BM25 index on CPU).
# Output: reports/gpu-wideseek/study/ (evals/*.jsonl, summary.json, marl-seed0/curves.png) and
# reports/gpu-wideseek/summary.json, for docs/results/wideseek.md "study" (GPU rows).
# Without a GPU it exits 0 after saying so; `--cpu` prints the settings and the plan (no model is loaded).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-reports/gpu-wideseek}
mkdir -p "$OUT"
cat > "$OUT/config.json" <<'JSON'
{"sft_examples": 48, "steps": 2, "seeds": [0], "widths": [1, 2, 4], "single_agent": false, "ablations": []}
JSON
if [[ "${1:-}" == "--cpu" ]]; then
  exec "$PY" -m leanlm.cli wideseek study --out "$OUT/study" --config "$OUT/config.json" --device cpu \
    --stages headline,width --dry-run
fi
if ! nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null; then
  echo "gpu_wideseek: no GPU visible, skipped (use --cpu for a dry run of the plan)" >&2
  exit 0
fi
start=$(date +%s)
timeout 450 env OMP_NUM_THREADS=4 "$PY" -m leanlm.cli wideseek study --out "$OUT/study" \
  --config "$OUT/config.json" --device cuda --stages headline,width | tee "$OUT/summary.json"
echo "gpu_wideseek: $(( $(date +%s) - start )) s; evals in $OUT/study/evals, timings in $OUT/study/timings.json"
