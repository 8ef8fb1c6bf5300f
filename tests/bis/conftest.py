"""Helpers for the BIS tests: write small JSONL corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def rollout(scores: list[float | None], tag: str = "", image: str = "img.png", **extra: object) -> dict:
    steps = [{"step": f"step {j} {tag}", "score": s} for j, s in enumerate(scores)]
    return {"image": image, "question": f"q {tag}", "steps_with_score": steps, **extra}


def write_jsonl(path: Path, records: list[dict | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


@pytest.fixture(name="rollout")
def rollout_fixture():
    return rollout


@pytest.fixture
def make_jsonl(tmp_path: Path):
    def make(name: str, records: list[dict | str]) -> Path:
        return write_jsonl(tmp_path / name, records)

    return make


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 synthetic rollouts over 4 sources (with the quirks: missing scores/images, empty steps)."""
    from leanlm.bis.synth import SynthConfig, write_corpus

    out = tmp_path_factory.mktemp("synth")
    write_corpus(out, SynthConfig(rollouts=3000, sources=4, seed=7, p_missing_score=0.02, p_no_image=0.02,
                                  p_empty_step=0.02, p_no_scored_step=0.01))
    return out
