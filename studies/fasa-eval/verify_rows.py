"""Recompute one recorded prompt of a run directory with the current code and compare with its checkpointed rows.

    THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python studies/fasa-eval/verify_rows.py studies/fasa-eval/full niah_single/7936/0

Reruns every (method, budget) row and kvpress row recorded for that prompt (same config, calibrations and prompt)
and checks every field but the wall-clock ``seconds`` with ``==``. Prints the CPU seconds of the prompt; exits 1 on
any difference (then the recorded rows and new ones would not be comparable: do not resume into that directory).
Writes nothing into the run directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from leanlm.common.models import load_embedded
from leanlm.fasa.evaluation import run as R
from leanlm.fasa.evaluation.tasks import build_trial


def main(run_dir: Path, trial_id: str) -> int:
    # the run's thread count: probe sums (mass, rel_err) differ in the last bits between 1 and 2 threads
    # (measured 2026-11-30 on niah_single/7936/0: texts, correctness and recall identical, presses identical)
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    config = json.loads((run_dir / "config.json").read_text())
    rec = [r for r in R.read_jsonl(run_dir / "answers.jsonl") if r["id"] == trial_id]
    rec_p = [r for r in R.read_jsonl(run_dir / "presses.jsonl") if r["id"] == trial_id]
    if not rec:
        print(f"{run_dir}: no rows recorded for {trial_id}")
        return 1
    task, length, seed = trial_id.split("/")
    model, tok = load_embedded()
    offline = R.step_calibrate(model, tok, config, run_dir, print)  # reloads the saved calibrations
    tuned = run_dir / "task-params.json"  # the tuned difficulty knobs of this length, if the run tuned them
    params = (config.get("task_params") or (json.loads(tuned.read_text())["params"] if tuned.exists() else {}))
    trial = build_trial(tok, task, int(length), int(seed), params.get(length, {}).get(task))
    wanted = {(r["method"], int(r["budget"])) for r in rec}
    skip = {(n, b) for n, _, budgets in R.method_table(config) for b in budgets} - wanted
    press_skip = {(n, b) for n in [f"kvpress {p}" for p in config["presses"]] for b in config["press_budgets"]}
    press_skip -= {(r["method"], int(r["budget"])) for r in rec_p}
    new_p: list[dict] = []
    t0 = time.process_time()
    new = R.run_trial(model, tok, trial, offline, config, skip=skip, presses_skip=press_skip,
                      on_press_row=new_p.append)
    cpu = time.process_time() - t0

    def strip(rows):
        return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in rows),
                      key=lambda r: (r["method"], r["budget"]))

    same, same_p = strip(new) == strip(rec), strip(new_p) == strip(rec_p)
    print(json.dumps({"trial": trial_id, "rows": len(new), "press_rows": len(new_p), "identical": same,
                      "presses_identical": same_p, "cpu_s": round(cpu, 1)}))
    if not same:
        for a, b in zip(strip(new), strip(rec), strict=False):
            if a != b:
                print("DIFF", a["method"], a["budget"], {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)})
    return 0 if same and same_p else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: verify_rows.py RUN_DIR TASK/LENGTH/SEED")
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
