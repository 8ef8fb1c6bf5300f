#!/bin/bash
# Resume the full FASA evaluation (issue #14) in studies/fasa-eval/full, safely on a shared machine.
# Launch from the repository root at the lowest priority of its own autogroup:
#   setsid bash -c 'echo 19 > /proc/$$/autogroup; exec bash studies/fasa-eval/resume.sh >> /work/helpers/fasa/full-run.log 2>&1 < /dev/null' &
# 1. waits (in the shell, no memory held) until START_GB (default 14) GB are available;
# 2. once per launch, recomputes one already-recorded 8K prompt with the current code and stops if any row
#    differs (so rows from older code and new rows stay comparable; ~180 CPU-s; SKIP_VERIFY=1 skips it);
# 3. resumes the run; before each prompt it waits until PROMPT_GB (default 13) GB are available.
# Why so much: the process peaks at ~3 GB RSS on an 8K prompt (measured: 2.8-3.05 GB), and on
# 2026-11-30 the BIS SmolLM2 run's two processes swung between 7 and 11 GB EACH within minutes, so a prompt
# started with less headroom could push the machine into the OOM killer (which would pick a BIS process).
# The defaults therefore wait for that run to end; on a quiet machine START_GB=6 PROMPT_GB=4.5 suffice.
set -u
cd "$(dirname "$0")/../.."
# RUN: the run directory (default: the tuned-difficulty run; studies/fasa-eval/full is the first run, at the
# default RULER-like difficulty, where full KV sat at the floor at 8K; it cannot resume under today's config).
RUN=${RUN:-studies/fasa-eval/tuned}
VERIFY_ID=${VERIFY_ID:-niah_single/7936/0}
START_GB=${START_GB:-14}
PROMPT_GB=${PROMPT_GB:-13}
while [ "$(awk '/MemAvailable/ {print int($2 / 1000)}' /proc/meminfo)" -lt "$(awk "BEGIN {print int($START_GB * 1000)}")" ]; do
  sleep 60
done
echo "$(date -u +%H:%M) memory available; verifying recorded rows"
if [ "${SKIP_VERIFY:-0}" != 1 ] && grep -q "\"$VERIFY_ID\"" "$RUN/answers.jsonl" 2>/dev/null; then
  env THREADS="${THREADS:-1}" OMP_NUM_THREADS="${THREADS:-1}" .venv/bin/python studies/fasa-eval/verify_rows.py \
      "$RUN" "$VERIFY_ID" || exit 1
fi
exec env OMP_NUM_THREADS=${THREADS:-1} .venv/bin/leanlm fasa bench --eval --threads "${THREADS:-1}" \
    --min-available-gb "$PROMPT_GB" --out "$RUN.md" --run-dir "$RUN"
