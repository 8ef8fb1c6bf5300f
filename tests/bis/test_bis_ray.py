"""The Ray Data engine on a local one-CPU Ray instance gives the stream engine's bytes (one test: Ray is slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from leanlm.bis.select import SelectConfig, select


@pytest.mark.distributed
@pytest.mark.slow
def test_ray_engine_byte_identical(synth_corpus: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        for group_by in ("file", "global"):
            base, out = tmp_path / f"b-{group_by}.jsonl", tmp_path / f"r-{group_by}.jsonl"
            d0 = select([synth_corpus], base, SelectConfig(group_by=group_by))
            d1 = select([synth_corpus], out, SelectConfig(group_by=group_by, engine="ray"))
            assert out.read_bytes() == base.read_bytes()
            assert d0["totals"] == d1["totals"]
    finally:
        ray.shutdown()
