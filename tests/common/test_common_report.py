"""The claims table (verdicts computed by rules) and the comparison with the previous run."""

from __future__ import annotations

import json
import os
import re

import pytest

from leanlm import reproduce as repro
from leanlm.common.compare import compare_runs, find_previous, load_previous
from leanlm.common.report import ExperimentResult


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(repro, "REGISTRY", {})
    monkeypatch.setattr(repro, "_IMPORT_ERRORS", {})
    monkeypatch.setattr(repro, "EXPERIMENT_MODULES", ())
    return repro.REGISTRY


def _register(values: dict, fail: bool = False):
    """Two experiments: 'alpha' (fasa) with four claims, 'beta' (bis) that fails when asked to."""

    @repro.register(
        name="alpha", module="fasa", title="Alpha experiment",
        claims=[
            repro.Claim("score as % of full", paper="99%", metric="pct", rule=repro.AtLeast("pct", 99, partly=90),
                        setting="135M model, 2K context"),
            repro.Claim("loss difference", paper="0", metric="diff", rule=repro.Within("diff", 0, spread="std"),
                        spread="std", spread_label="seed std"),
            repro.Claim("needs GPUs", paper="matches", rule=repro.NotTestable("needs 8B training")),
            repro.Claim("a baseline", paper="n/a", metric="ppl"),
            repro.Claim("skipped in quick mode", paper="40", metric="e2e", rule=repro.AtLeast("e2e", 40)),
        ],
    )
    def alpha(config, ctx):
        return ExperimentResult(metrics=dict(values))

    @repro.register(name="beta", module="bis", title="Beta experiment",
                    claims=[repro.Claim("exact", paper="required", metric="identical",
                                        rule=repro.Equals("identical", "yes"))])
    def beta(config, ctx):
        if fail:
            raise RuntimeError("beta broke")
        return ExperimentResult(metrics={"identical": "yes"})


def _verdicts(index_html: str) -> list[str]:
    table = index_html.split("id='claims-table'")[1].split("</table>")[0]
    return re.findall(r"<span class='v v-[a-z-]+'>([^<]+)</span>", table)


def test_claims_table_first_with_computed_verdicts(isolated_registry, tmp_path):
    _register({"pct": "95%", "diff": 0.01, "std": 0.02, "ppl": 12.3})
    index, _ = repro.reproduce("quick", out=tmp_path / "run", compare=False)
    page = index.read_text()
    # the claims table comes before the experiments summary and every section
    assert page.index("id='claims-table'") < page.index("id='experiments'") < page.index("id='alpha'")
    assert _verdicts(page) == ["partly", "reproduced", "not testable here", "not judged", "not measured", "reproduced"]
    assert "0.01 ± 0.02 (seed std)" in page
    assert "135M model, 2K context" in page and "FASA (2602.03152)" in page and "BIS (2602.04145)" in page
    assert page.count("href='#alpha'") == 5 and page.count("href='#beta'") == 1
    assert "95 &lt; 99 (rule: reproduced if pct ≥ 99; partly if ≥ 90)" in page
    md = (tmp_path / "run" / "index.md").read_text()
    assert md.index("## Claims") < md.index("## Experiments")
    assert "| FASA (2602.03152) | [score as % of full](#alpha) | 99% | 95% | 135M model, 2K context | **partly** |" in md
    assert '<a id="alpha"></a>' in md
    assert "6 claims: 2 reproduced, 1 partly, 1 not testable here, 1 not measured, 1 not judged." in md
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [c["verdict"] for c in data["experiments"][0]["claims"]][:2] == ["partly", "reproduced"]
    assert "compared_with" not in data


def test_failed_experiment_claims_show_as_failed(isolated_registry, tmp_path):
    _register({"pct": 100, "diff": 0.5, "std": 0.01, "ppl": 12.3}, fail=True)
    index, _ = repro.reproduce("quick", out=tmp_path / "run", compare=False)
    verdicts = _verdicts(index.read_text())
    assert verdicts[0] == "reproduced" and verdicts[1] == "not reproduced"
    assert verdicts[-1] == "experiment failed"


def test_import_failure_gets_a_failed_row(isolated_registry, tmp_path, monkeypatch):
    monkeypatch.setattr(repro, "_IMPORT_ERRORS", {"omnisift": "Traceback: ImportError"})
    _register({"pct": 100})
    index, _ = repro.reproduce("quick", out=tmp_path / "run", compare=False)
    page = index.read_text()
    assert "claims unknown: leanlm.omnisift.experiments failed to import" in page
    assert "href='#omnisift-import'" in page and "id='omnisift-import'" in page


def test_comparison_with_previous_sibling_run(isolated_registry, tmp_path):
    reports = tmp_path / "reports"
    _register({"pct": "95%", "diff": 0.01, "std": 0.02, "ppl": 12.3})
    repro.reproduce("quick", out=reports / "20260101-000000")
    first = reports / "20260101-000000" / "results.json"
    os.utime(first, (1, 1))  # older than anything written next
    assert find_previous(reports / "20260102-000000") == first
    # second run: pct now passes (verdict change), ppl changed (number change), beta fails (status change)
    _register({"pct": "100%", "diff": 0.01, "std": 0.02, "ppl": 11.0}, fail=True)
    index, _ = repro.reproduce("quick", out=reports / "20260102-000000")
    data = json.loads((reports / "20260102-000000" / "results.json").read_text())
    changes = {(c["experiment"], c["kind"], c["claim"]): (c["before"], c["now"])
               for c in data["compared_with"]["changes"]}
    assert changes[("alpha", "verdict", "score as % of full")] == ("95% (partly)", "100% (reproduced)")
    assert changes[("alpha", "number (-11%)", "a baseline")] == ("12.3 (not judged)", "11 (not judged)")
    assert changes[("beta", "status", "")] == ("ok", "failed")
    assert changes[("beta", "verdict", "exact")] == ("yes (reproduced)", "n/a (experiment failed)")
    assert len(changes) == 4  # unchanged claims are not listed
    assert data["compared_with"]["source"] == str(first)
    page = index.read_text()
    assert "id='changes'" in page and "Changes since the previous run" in page
    assert page.index("id='claims-table'") < page.index("id='changes'") < page.index("id='experiments'")
    md = (reports / "20260102-000000" / "index.md").read_text()
    assert "| alpha | score as % of full | verdict | 95% (partly) | 100% (reproduced) |" in md


def test_reused_out_dir_compares_with_what_it_held_and_no_change_is_said(isolated_registry, tmp_path):
    _register({"pct": "95%", "diff": 0.01, "std": 0.02, "ppl": 12.3})
    out = tmp_path / "latest"
    repro.reproduce("quick", out=out)
    assert find_previous(out) == out / "results.json"
    index, _ = repro.reproduce("quick", out=out)
    page = index.read_text()
    assert "No verdict or headline number changed" in page and "6 claims compared" in page


def test_comparison_reads_runs_from_before_verdicts_and_new_claims():
    old = {"environment": {"date (UTC)": "2026-01-01 00:00", "git commit": "abc"},
           "experiments": [{"name": "x", "status": "ok", "claims": [{"claim": "c", "paper": "1", "ours": "2"}]},
                           {"name": "gone", "status": "ok", "claims": []}]}
    new = {"experiments": [{"name": "x", "status": "ok", "claims": [
        {"claim": "c", "paper": "1", "ours": "3", "verdict": "partly", "metric": None},
        {"claim": "d", "paper": "1", "ours": "1", "verdict": "reproduced", "metric": "m"}]}]}
    cmp = compare_runs(old, new)
    kinds = sorted((c.kind, c.claim) for c in cmp.changes)
    assert kinds == [("new claim", "d"), ("not in this run", ""), ("number (+50%)", "c")]
    assert cmp.commit == "abc" and cmp.claims_compared == 1


def test_load_previous_strict_and_lenient(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    assert load_previous(bad) is None
    with pytest.raises(ValueError, match="cannot read the previous run"):
        load_previous(tmp_path, strict=True)
    with pytest.raises(ValueError, match="cannot read the previous run"):
        load_previous(tmp_path / "missing", strict=True)


def test_claim_rejects_a_rule_that_is_not_a_rule():
    with pytest.raises(TypeError, match="rule must be"):
        repro.Claim("x", paper="1", metric="m", rule="reproduced")  # type: ignore[arg-type]
