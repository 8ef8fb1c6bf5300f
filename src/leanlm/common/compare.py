"""What changed since the last ``leanlm reproduce`` run: verdicts, headline numbers, experiment status.

Both runs are read in ``results.json`` form (what :func:`leanlm.common.report.write_report` writes). A claim
is matched across runs by experiment name and metric key (by its text when it has no metric), so rewording a
claim's text keeps its history. Runs written before verdicts existed (no ``verdict`` field) compare by number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leanlm.common.progress import get_logger
from leanlm.common.verdicts import number

log = get_logger("leanlm.compare")


@dataclass
class Change:
    """One difference between the previous run and this one."""

    experiment: str
    claim: str
    kind: str  # "verdict" | "number (+x%)" | "new claim" | "claim gone" | "status" | "not in the previous run" | "not in this run"
    before: str
    now: str


@dataclass
class Comparison:
    """The previous run (where, when, which commit) and the changes since."""

    source: str
    date: str
    commit: str
    changes: list[Change]
    claims_compared: int


def find_previous(out_dir: Path) -> Path | None:
    """The earlier run to compare with: ``out_dir/results.json`` when the directory is being reused (as
    ``make demo`` reuses ``reports/latest``), else the newest ``results.json`` in a sibling directory."""
    out_dir = Path(out_dir)
    own = out_dir / "results.json"
    if own.is_file():
        return own
    parent = out_dir.parent
    if not parent.is_dir():
        return None
    resolved = out_dir.resolve()
    candidates = [d / "results.json" for d in parent.iterdir()
                  if d.is_dir() and d.resolve() != resolved and (d / "results.json").is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def load_previous(source: Path, strict: bool = False) -> dict[str, Any] | None:
    """Read a previous run (a ``results.json`` or a report directory holding one). A missing or unreadable
    file raises when ``strict`` (a path the user named) and is logged and skipped otherwise."""
    path = Path(source)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("experiments"), list):
            raise ValueError(f"{path}: not a leanlm results.json (no 'experiments' list)")
    except (OSError, ValueError) as exc:
        if strict:
            raise ValueError(f"cannot read the previous run {path}: {exc}") from exc
        log.warning("previous run %s not compared: %s", path, exc)
        return None
    data["_source"] = str(path)
    return data


def _claims(run: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for exp in run.get("experiments", []):
        for claim in exp.get("claims", []) or []:
            key = (exp.get("name", "?"), claim.get("metric") or claim.get("claim", "?"))
            out[key] = {**claim, "_status": exp.get("status")}
    return out


def compare_runs(previous: dict[str, Any], current: dict[str, Any]) -> Comparison:
    """The changes from ``previous`` to ``current`` (both in ``results.json`` form)."""
    changes: list[Change] = []
    before_exps = {e.get("name"): e for e in previous.get("experiments", [])}
    now_exps = {e.get("name"): e for e in current.get("experiments", [])}
    for name, exp in now_exps.items():
        old = before_exps.get(name)
        if old is None:
            changes.append(Change(name, "", "not in the previous run", "", exp.get("status", "?")))
        elif old.get("status") != exp.get("status"):
            changes.append(Change(name, "", "status", str(old.get("status")), str(exp.get("status"))))
    for name, old in before_exps.items():
        if name not in now_exps:
            changes.append(Change(name, "", "not in this run", str(old.get("status")), ""))

    before, now = _claims(previous), _claims(current)
    compared = 0
    for key, claim in now.items():
        name = key[0]
        old = before.get(key)
        if old is None:
            if name in before_exps:
                changes.append(Change(name, claim.get("claim", ""), "new claim", "", _describe(claim)))
            continue
        compared += 1
        old_verdict, new_verdict = old.get("verdict"), claim.get("verdict")
        if old_verdict is not None and old_verdict != new_verdict:
            changes.append(Change(name, claim.get("claim", ""), "verdict", _describe(old), _describe(claim)))
        elif str(old.get("ours", "")).strip() != str(claim.get("ours", "")).strip():
            changes.append(Change(name, claim.get("claim", ""), _number_kind(old.get("ours"), claim.get("ours")),
                                  _describe(old), _describe(claim)))
    for key, old in before.items():
        if key not in now and key[0] in now_exps:
            changes.append(Change(key[0], old.get("claim", ""), "claim gone", _describe(old), ""))
    env = previous.get("environment", {}) or {}
    return Comparison(source=str(previous.get("_source", "?")), date=str(env.get("date (UTC)", "?")),
                      commit=str(env.get("git commit", "?")), changes=changes, claims_compared=compared)


def _number_kind(before: Any, now: Any) -> str:
    """``number`` with the relative change when both values read as numbers (``number (-52%)``)."""
    a, b = number(before), number(now)
    if a is None or b is None or a == 0:
        return "number"
    return f"number ({100 * (b - a) / abs(a):+.0f}%)"


def _describe(claim: dict[str, Any]) -> str:
    ours = str(claim.get("ours", "n/a"))
    verdict = claim.get("verdict")
    return f"{ours} ({verdict})" if verdict else ours


__all__ = ["Change", "Comparison", "compare_runs", "find_previous", "load_previous"]
