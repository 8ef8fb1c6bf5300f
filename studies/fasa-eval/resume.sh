#!/bin/bash
# Resume the full FASA evaluation (issue #14) in studies/fasa-eval/full, safely on a shared machine.
# Launch from the repository root at the lowest priority of its own autogroup:
#   setsid bash -c 'echo 19 > /proc/$$/autogroup; exec bash studies/fasa-eval/resume.sh >> /work/helpers/fasa/full-run.log 2>&1 < /dev/null' &
# 1. waits (in the shell, no memory held) until 6 GB are available (model ~1.2 GB + an 8K prompt ~1.5 GB,
#    estimated, + a 3 GB floor for the other jobs);
# 2. once per launch, recomputes one already-recorded 8K prompt with the current code and stops if any row
#    differs (so rows from older code and new rows stay comparable; ~180 CPU-s);
# 3. resumes the run; before each prompt it waits until 4.5 GB are available (--min-available-gb).
set -u
cd "$(dirname "$0")/../.."
RUN=studies/fasa-eval/full
while [ "$(awk '/MemAvailable/ {print int($2 / 1000)}' /proc/meminfo)" -lt 6000 ]; do sleep 60; done
echo "$(date -u +%H:%M) memory available; verifying recorded rows"
if [ "${SKIP_VERIFY:-0}" != 1 ]; then
  env OMP_NUM_THREADS=1 .venv/bin/python studies/fasa-eval/verify_rows.py $RUN niah_single/7936/0 || exit 1
fi
exec env OMP_NUM_THREADS=1 .venv/bin/leanlm fasa bench --eval --min-available-gb 4.5 \
    --out studies/fasa-eval/full.md --run-dir $RUN
