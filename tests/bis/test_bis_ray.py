"""The Ray engine on a local two-node Ray cluster started by the test: same bytes as the stream engine, a bad
line named by file:line, and results computed on the cluster's nodes (not on a shared filesystem)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leanlm.bis.config import SelectConfig
from leanlm.bis.select import select
from leanlm.common.records import RecordError


@pytest.fixture(scope="module")
def two_node_cluster():
    """A head node and one worker node on localhost (Ray's ``cluster_utils``: ``ray start --head`` plus
    ``ray start --address``, as processes this test owns and stops), one CPU each."""
    pytest.importorskip("ray")
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.distributed
@pytest.mark.slow
def test_ray_pipeline_on_two_nodes(two_node_cluster, synth_corpus: Path, tmp_path: Path) -> None:
    import ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    for group_by in ("file", "global"):
        base, out = tmp_path / f"b-{group_by}.jsonl", tmp_path / f"r-{group_by}.jsonl"
        d0 = select([synth_corpus], base, SelectConfig(group_by=group_by))
        d1 = select([synth_corpus], out, SelectConfig(group_by=group_by, engine="ray"))
        assert out.read_bytes() == base.read_bytes()
        assert d0["totals"] == d1["totals"] and d0["groups"] == d1["groups"]
        assert all(f["engine"].startswith("ray (node ") for f in d1["files"])
    bad = tmp_path / "bad" / "x.jsonl"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"steps_with_score": [{"score": 1.0}]}) + "\n" + '{"steps_with_score": [{"score": "a"}]}\n')
    with pytest.raises(RecordError, match=r"x.jsonl:2: wrong type"):
        select([bad], tmp_path / "o.jsonl", SelectConfig(engine="ray"))
