#!/usr/bin/env bash
# leanlm.elastic on one GPU (issue 17), < 8 minutes: the CUDA training test, then the per-axis elastic study
# (depth/width/top-k/all vs plain vs from-scratch at equal tokens and equal total FLOPs, 5 seeds) at a larger
# scale than the CPU study, split over 4 worker processes sharing the GPU, then the summary.
# NOT RUN YET: no GPU was lent to the session that wrote it. Runs are resumable: if the 400 s training window
# ends early, rerun the script with the same OUT and it continues where it stopped.
#
#   OUT=/tmp/elastic-gpu bash bench/gpu_elastic.sh        # results: $OUT/results.md, $OUT/study.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/elastic-gpu-study}
WORKERS=${WORKERS:-4}
TRAIN_SECONDS=${TRAIN_SECONDS:-400}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "no GPU visible"; exit 1; }

# 1. CUDA path: one training step on the GPU gives the CPU loss (tests skip it without a GPU)
timeout 120 "$PY" -m pytest tests/elastic/test_elastic_train.py -q -k cuda

# 2. The study: 2x wider model than the CPU study (d=96, 8 experts of 48, top-2); smallest compared model
#    (combined cut) 0.376M parameters -> 920 steps x 64 x 128 = 7.5M tokens per run (20.1 tokens/parameter);
#    65 runs, 51k optimizer steps in all: ~12k per worker. If a step takes more than ~30 ms the 400 s window ends
#    early (rerun to resume, or set WORKERS=8).
cat > "$OUT/gpu_config.json" <<'JSON'
{"base": {"model": {"hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4, "num_experts": 8,
                    "num_experts_per_tok": 2, "moe_intermediate_size": 48, "num_shared_experts": 1, "num_mtp_modules": 0},
          "steps": 920, "batch_size": 64, "seq_len": 128, "lr": 3e-3, "train_articles": 8000, "eval_articles": 500,
          "eval_batches": 16, "eval_batch_size": 16, "log_every": 50, "checkpoint_every": 100, "device": "cuda"},
 "seeds": [0, 1, 2, 3, 4], "axes": ["depth", "width", "topk", "all"], "equal_flops": true, "threads": 2}
JSON
pids=()
for i in $(seq 0 $((WORKERS - 1))); do
  timeout "$TRAIN_SECONDS" "$PY" -m leanlm.cli elastic study --out "$OUT" --config "$OUT/gpu_config.json" --shard "$i/$WORKERS" \
    > "$OUT/worker$i.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || echo "worker $p stopped (timeout or error; see $OUT/worker*.log); rerun to resume"; done

# 3. Summary of whatever finished (paired differences, t intervals, claim rules) -> $OUT/results.md
timeout 60 "$PY" -m leanlm.cli elastic study --out "$OUT" --config "$OUT/gpu_config.json" --summarize-only
tail -n +1 "$OUT/results.md" | head -40
