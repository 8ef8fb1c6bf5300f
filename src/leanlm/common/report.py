"""Result tables, figures and the reproduce report (Markdown + self-contained HTML).

An experiment returns an :class:`ExperimentResult`: tables (lists of rows), matplotlib figures, named
metrics, notes. :func:`write_report` renders a list of :class:`ExperimentRecord` into ``index.md`` (figures
as sibling PNG files), ``index.html`` (PNG embedded as base64, no external assets) and ``results.json``.

Both pages open with the claims table: every registered claim, the paper's number beside ours, the setting
difference and the verdict its rule computed (:mod:`leanlm.common.verdicts`), each row linking to its
experiment's section; then, when a previous run is given, what changed since it (:mod:`leanlm.common.compare`).
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from leanlm.common.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from leanlm.common.compare import Comparison, compare_runs
from leanlm.common.verdicts import FAILED, NOT_JUDGED, STATES


@dataclass
class Table:
    """A small result table: ``columns`` names and ``rows`` of values (numbers are formatted on render)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.title!r}: row {i} has {len(row)} cells, expected {len(self.columns)}")


@dataclass
class Figure:
    """A rendered plot: PNG bytes plus a title. Build one from matplotlib with :meth:`from_matplotlib`."""

    title: str
    png: bytes
    caption: str = ""

    @classmethod
    def from_matplotlib(cls, fig: Any, title: str, caption: str = "", dpi: int = 110) -> Figure:
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return cls(title=title, png=buffer.getvalue(), caption=caption)


@dataclass
class ExperimentResult:
    """What an experiment's run function returns."""

    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class ClaimRow:
    """A paper claim beside our measurement of it and the verdict its rule computed.

    ``paper`` is the paper's number, ``source`` the paper's name, ``rule`` the rule in words, ``reason`` the
    rule's one-line explanation for this run's numbers."""

    claim: str
    paper: str
    ours: str
    verdict: str = NOT_JUDGED
    reason: str = ""
    rule: str = ""
    setting: str = ""
    metric: str | None = None
    source: str = ""


@dataclass
class ExperimentRecord:
    """One experiment's outcome in a report run."""

    name: str
    title: str
    module: str
    status: str  # "ok" | "failed"
    seconds: float
    config: dict[str, Any]
    claims: list[ClaimRow]
    result: ExperimentResult | None = None
    error: str | None = None


def format_cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


def table_markdown(table: Table) -> str:
    head = "| " + " | ".join(table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(format_cell(c).replace("|", "\\|") for c in row) + " |" for row in table.rows]
    parts = [f"**{table.title}**", "", head, rule, *body]
    if table.caption:
        parts += ["", f"_{table.caption}_"]
    return "\n".join(parts)


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_cell(c))}</td>" for c in row) + "</tr>" for row in table.rows
    )
    caption = f"<p class='cap'>{html.escape(table.caption)}</p>" if table.caption else ""
    return (f"<h4>{html.escape(table.title)}</h4><div class='tbl'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>{caption}")


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;overflow-wrap:break-word}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.ok{color:#1a7f37}.failed{color:#c62828}
pre{background:#f6f8fa;padding:.8em;overflow:auto;white-space:pre-wrap;overflow-wrap:anywhere}
.cap{color:#555;font-style:italic}img{max-width:100%;height:auto}
.tbl{max-width:100%;overflow-x:auto}code{overflow-wrap:anywhere}
table.claims td,table.claims th{text-align:left;vertical-align:top}table.claims td.num{text-align:right}
table#claims-table{table-layout:fixed;width:100%}
.v{display:inline-block;padding:.05em .5em;border-radius:.8em;font-weight:600;white-space:nowrap;font-size:.9em}
.v-reproduced{background:#dafbe1;color:#116329}.v-partly{background:#fff3bf;color:#7a5500}
.v-not-reproduced{background:#ffebe9;color:#a40e26}.v-not-testable-here{background:#eef1f4;color:#444}
.v-not-measured{background:#eef1f4;color:#666}.v-not-judged{border:1px solid #bbb;color:#666}
.v-experiment-failed{background:#a40e26;color:#fff}.why{display:block;color:#666;font-size:.8em;margin-top:.2em}
.counts .v{margin-right:.4em}
"""


def _verdict_class(verdict: str) -> str:
    return "v v-" + _slug(verdict)


def claims_rows(records: list[ExperimentRecord]) -> list[tuple[ExperimentRecord, ClaimRow]]:
    """Every claim of every record, in report order; a failed record without claims (an import failure) gets
    one row saying so."""
    rows: list[tuple[ExperimentRecord, ClaimRow]] = []
    for record in records:
        for claim in record.claims:
            rows.append((record, claim))
        if not record.claims and record.status != "ok":
            rows.append((record, ClaimRow(f"(claims unknown: {record.title})", "", "n/a", verdict=FAILED,
                                          reason="the experiment failed before its claims could be read",
                                          source=record.module)))
    return rows


def verdict_counts(rows: list[tuple[ExperimentRecord, ClaimRow]]) -> dict[str, int]:
    counts = {state: 0 for state in STATES}
    for _, claim in rows:
        counts[claim.verdict] = counts.get(claim.verdict, 0) + 1
    return {k: v for k, v in counts.items() if v}


def _why(claim: ClaimRow) -> str:
    if claim.rule and claim.reason and not claim.rule.startswith("not testable"):
        return f"{claim.reason} (rule: {claim.rule})"
    return claim.reason or claim.rule


def claims_markdown(records: list[ExperimentRecord]) -> str:
    rows = claims_rows(records)
    counts = ", ".join(f"{n} {state}" for state, n in verdict_counts(rows).items())
    parts = ["## Claims: the papers' numbers and ours", "",
             f"{len(rows)} claims: {counts}." if rows else "No claims registered.", ""]
    if rows:
        parts += ["| paper | claim | paper's number | ours | setting here | verdict | why |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]

        def cell(text: str) -> str:
            return str(text).replace("|", "\\|").replace("\n", " ").strip()

        for record, claim in rows:
            parts.append(
                f"| {cell(claim.source or record.module)} | "
                f"[{cell(claim.claim).replace('[', '(').replace(']', ')')}](#{_slug(record.name)}) | "
                f"{cell(claim.paper)} | {cell(claim.ours)} | {cell(claim.setting)} | **{claim.verdict}** | "
                f"{cell(_why(claim))} |"
            )
    return "\n".join(parts)


def claims_html(records: list[ExperimentRecord]) -> str:
    rows = claims_rows(records)
    counts = "".join(f"<span class='{_verdict_class(state)}'>{n} {html.escape(state)}</span>"
                     for state, n in verdict_counts(rows).items())
    head = "".join(f"<th>{c}</th>" for c in
                   ["paper", "claim", "paper's number", "ours", "setting here", "verdict"])
    body = []
    for record, claim in rows:
        why = _why(claim)
        body.append(
            f"<tr><td>{html.escape(claim.source or record.module)}</td>"
            f"<td><a href='#{_slug(record.name)}'>{html.escape(claim.claim)}</a></td>"
            f"<td class='num'>{html.escape(claim.paper)}</td><td class='num'>{html.escape(claim.ours)}</td>"
            f"<td>{html.escape(claim.setting)}</td>"
            f"<td><span class='{_verdict_class(claim.verdict)}'>{html.escape(claim.verdict)}</span>"
            f"{f'<span class=why>{html.escape(why)}</span>' if why else ''}</td></tr>"
        )
    cols = "".join(f"<col style='width:{w}%'>" for w in (12, 32, 14, 10, 12, 20))
    table = (f"<div class='tbl'><table class='claims' id='claims-table'><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead>"
             f"<tbody>{''.join(body)}</tbody></table></div>") if rows else "<p>No claims registered.</p>"
    return (f"<h2 id='claims'>Claims: the papers' numbers and ours</h2><p class='counts'>{len(rows)} claims: "
            f"{counts}</p>{table}<p class='cap'>Verdicts are computed from each experiment's metrics by the rule "
            "it declares with the claim (shown under the verdict); \"not judged\" means no rule was declared, "
            "\"not measured\" that this run's configuration did not produce the number.</p>")


def _changes_table(comparison: Comparison) -> Table:
    return Table(
        f"Changes since the previous run ({comparison.date}, commit {comparison.commit})",
        ["experiment", "claim", "what changed", "before", "now"],
        [[c.experiment, c.claim or "-", c.kind, c.before or "-", c.now or "-"] for c in comparison.changes],
        caption=f"previous run: {comparison.source}; {comparison.claims_compared} claims compared",
    )


def changes_markdown(comparison: Comparison | None) -> str:
    if comparison is None:
        return ""
    if not comparison.changes:
        return (f"**No verdict or headline number changed** since the previous run ({comparison.date}, commit "
                f"{comparison.commit}; {comparison.claims_compared} claims compared; {comparison.source}).")
    return table_markdown(_changes_table(comparison))


def changes_html(comparison: Comparison | None) -> str:
    if comparison is None:
        return ""
    if not comparison.changes:
        return (f"<p id='changes'><b>No verdict or headline number changed</b> since the previous run "
                f"({html.escape(comparison.date)}, commit {html.escape(comparison.commit)}; "
                f"{comparison.claims_compared} claims compared; {html.escape(comparison.source)}).</p>")
    table = table_html(_changes_table(comparison)).replace("<table>", "<table class='claims'>", 1)
    return f"<div id='changes'>{table}</div>"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def _record_json(record: ExperimentRecord) -> dict[str, Any]:
    data = {k: v for k, v in asdict(record).items() if k != "result"}
    if record.result is not None:
        data["metrics"] = record.result.metrics
        data["tables"] = [asdict(t) for t in record.result.tables]
        data["notes"] = record.result.notes
    return data


def write_report(
    out_dir: Path, records: list[ExperimentRecord], environment: dict[str, Any], title: str = "leanlm reproduce",
    previous: dict[str, Any] | None = None,
) -> Path:
    """Write ``index.md``, ``index.html``, ``results.json`` and figure PNGs into ``out_dir``; return index.html.

    ``previous``: an earlier run's ``results.json`` content; the report then lists what changed since it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment, "experiments": [_record_json(r) for r in records]}
    comparison = compare_runs(previous, results) if previous is not None else None
    if comparison is not None:
        results["compared_with"] = {"source": comparison.source, "date": comparison.date, "commit": comparison.commit,
                                    "changes": [asdict(c) for c in comparison.changes]}
    intro = (f"Mode {environment.get('mode', '?')}, commit {environment.get('git commit', '?')}, "
             f"{environment.get('date (UTC)', '?')} UTC.")
    md: list[str] = [f"# {title}", "", intro, "", claims_markdown(records), ""]
    body: list[str] = [f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>", claims_html(records)]
    if comparison is not None:
        md += [changes_markdown(comparison), ""]
        body.append(changes_html(comparison))

    summary = Table(
        "Summary",
        ["experiment", "module", "status", "seconds"],
        [[r.name, r.module, r.status, round(r.seconds, 1)] for r in records],
    )
    md += ["## Experiments", "", table_markdown(summary), ""]
    body.append("<h2 id='experiments'>Experiments</h2>" + table_html(summary))

    env_rows = [[k, str(v)] for k, v in environment.items()]
    env_table = Table("Environment", ["what", "value"], env_rows)
    md += [table_markdown(env_table), ""]
    body.append(table_html(env_table))

    for record in records:
        anchor = _slug(record.name)
        md += [f"<a id=\"{anchor}\"></a>", "", f"## {record.title} (`{record.name}`)", "",
               f"Status: **{record.status}**, {record.seconds:.1f} s.", ""]
        body.append(
            f"<h2 id='{anchor}'>{html.escape(record.title)} (<code>{html.escape(record.name)}</code>)</h2>"
            f"<p>Status: <b class='{record.status}'>{record.status}</b>, {record.seconds:.1f} s.</p>"
        )
        config_text = json.dumps(record.config, indent=None, default=str)
        md += [f"Config: `{config_text}`", ""]
        body.append(f"<p>Config: <code>{html.escape(config_text)}</code></p>")
        if record.claims:
            claims = Table("Paper vs ours", ["claim", "paper", "ours", "verdict", "why"],
                           [[c.claim, c.paper, c.ours, c.verdict, _why(c)] for c in record.claims])
            md += [table_markdown(claims), ""]
            body.append(table_html(claims).replace("<table>", "<table class='claims'>", 1))
        if record.error:
            md += ["```", record.error.rstrip(), "```", ""]
            body.append(f"<pre>{html.escape(record.error)}</pre>")
        if record.result is None:
            continue
        for table in record.result.tables:
            md += [table_markdown(table), ""]
            body.append(table_html(table))
        for i, figure in enumerate(record.result.figures):
            name = f"{anchor}-{i + 1}-{_slug(figure.title)[:40]}.png"
            atomic_write_bytes(out_dir / name, figure.png)
            md += [f"![{figure.title}]({name})", ""]
            encoded = base64.b64encode(figure.png).decode("ascii")
            body.append(
                f"<figure><img alt='{html.escape(figure.title)}' src='data:image/png;base64,{encoded}'/>"
                f"<figcaption>{html.escape(figure.title)}{': ' + html.escape(figure.caption) if figure.caption else ''}"
                "</figcaption></figure>"
            )
        for note in record.result.notes:
            md += [f"- {note}"]
            body.append(f"<p>{html.escape(note)}</p>")
        md.append("")

    atomic_write_text(out_dir / "index.md", "\n".join(md) + "\n")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
    index = atomic_write_text(out_dir / "index.html", page)
    atomic_write_json(out_dir / "results.json", results)
    return index
