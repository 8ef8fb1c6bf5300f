"""The report in a real browser: headless Chromium (driven by Playwright) renders a small report at 1280 px.

Checks what a reader sees: the claims table, every figure decoded (no broken image), every in-page link
landing on a rendered section, no horizontal overflow, and no request leaving the file (self-contained).
``make test`` installs Chromium from the system packages when it is missing; without it, or without the
``playwright`` package, the test skips and says why. Set ``LEANLM_SCREENSHOT_DIR`` to keep the screenshot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from leanlm import reproduce as repro
from leanlm.common.report import ExperimentResult, Figure, Table

pytestmark = pytest.mark.slow

#: Flags that work on a machine with no network and no GPU (a fresh profile comes from Playwright itself).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed and `make test` could not install it (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        try:
            launched = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        except Exception as exc:  # e.g. a Chromium too old for this Playwright
            pytest.skip(f"Chromium at {executable} did not start under Playwright: {exc}")
        yield launched
        launched.close()


def _small_report(tmp_path: Path, monkeypatch) -> tuple[Path, int, int]:
    """A report with two experiments (one failing), three figures, a very wide table; returns
    (index.html, number of figures, number of claims rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(repro, "REGISTRY", {})
    monkeypatch.setattr(repro, "_IMPORT_ERRORS", {})
    monkeypatch.setattr(repro, "EXPERIMENT_MODULES", ())

    @repro.register(
        name="wide-one", module="fasa", title="An experiment with figures and a wide table",
        claims=[
            repro.Claim("score as % of full KV at budget 256 " * 3, paper="99%", metric="pct",
                        rule=repro.AtLeast("pct", 99, partly=90), setting="135M model, 2K context"),
            repro.Claim("speed-up", paper="2.56x", metric="speedup", rule=repro.AtLeast("speedup", 2.56)),
            repro.Claim("needs GPUs", paper="matches", rule=repro.NotTestable("needs 8B training on GPUs")),
        ],
    )
    def wide(config, ctx):
        figures = []
        for i, (w, h) in enumerate([(6, 3), (14, 3), (4, 4)]):  # one wider than the page at 110 dpi
            fig, ax = plt.subplots(figsize=(w, h))
            ax.plot(range(10), [x * (i + 1) for x in range(10)])
            figures.append(Figure.from_matplotlib(fig, f"figure {i + 1}"))
        columns = [f"a rather long column name {i}" for i in range(16)]
        table = Table("Wide", columns, [["x" * 30] * 16, list(range(16))])
        return ExperimentResult(tables=[table], figures=figures, metrics={"pct": "95%", "speedup": "1.2x"},
                                notes=["a_very_long_unbroken_token_" * 20])

    @repro.register(name="broken-one", module="bis", title="An experiment that fails",
                    claims=[repro.Claim("exact", paper="required", metric="ok", rule=repro.Equals("ok", "yes"))])
    def broken(config, ctx):
        raise RuntimeError("deliberately broken " + "long_traceback_line_" * 30)

    index, _ = repro.reproduce("quick", out=tmp_path / "report", compare=False)
    return index, 3, 4


def test_report_renders_in_headless_chromium(browser, tmp_path, monkeypatch):
    index, n_figures, n_claims = _small_report(tmp_path, monkeypatch)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(index.as_uri(), wait_until="load")

    # the claims table is the first thing after the title and renders one row per claim
    claims = page.locator("#claims-table")
    assert claims.is_visible()
    assert page.locator("#claims-table tbody tr").count() == n_claims
    first_heading = page.evaluate("document.querySelector('h2').id")
    assert first_heading == "claims"
    verdicts = page.locator("#claims-table .v").all_inner_texts()
    assert verdicts == ["partly", "not reproduced", "not testable here", "experiment failed"]

    # every figure decoded and laid out (a broken image has naturalWidth 0)
    images = page.evaluate("""Array.from(document.images).map(i => ({
        ok: i.complete && i.naturalWidth > 0, w: i.getBoundingClientRect().width,
        h: i.getBoundingClientRect().height, alt: i.alt}))""")
    assert len(images) == n_figures
    assert all(img["ok"] and img["w"] > 50 and img["h"] > 50 for img in images), images

    # every in-page link lands on a rendered element
    targets = page.evaluate("""Array.from(document.querySelectorAll("a[href^='#']")).map(a => {
        const el = document.getElementById(a.getAttribute('href').slice(1));
        return {href: a.getAttribute('href'), found: !!el, h: el ? el.getBoundingClientRect().height : 0};
    })""")
    assert {t["href"] for t in targets} == {"#wide-one", "#broken-one"}
    assert all(t["found"] and t["h"] > 0 for t in targets), targets
    page.click("#claims-table a[href='#wide-one']")  # a click scrolls its section to the top of the window
    assert page.url.endswith("#wide-one")
    assert 0 <= page.evaluate("document.getElementById('wide-one').getBoundingClientRect().top") < 5
    page.evaluate("window.scrollTo(0, 0)")

    # nothing wider than the window: wide tables scroll inside their box, long lines wrap
    overflow = page.evaluate("""({doc: document.documentElement.scrollWidth, body: document.body.scrollWidth,
                                  win: document.documentElement.clientWidth})""")
    assert overflow["doc"] <= overflow["win"] and overflow["body"] <= overflow["win"], overflow

    # self-contained: the page asked for nothing but itself and its data: URIs
    assert all(url.startswith(("file:", "data:")) for url in requests), requests

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and int.from_bytes(data[16:20], "big") == 1280
    keep = os.environ.get("LEANLM_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report-browser-test.png")
    page.close()
