"""Result tables, figures and the reproduce report (Markdown + self-contained HTML).

An experiment returns an :class:`ExperimentResult`: tables (lists of rows), matplotlib figures, named
metrics, notes. :func:`write_report` renders a list of :class:`ExperimentRecord` into ``index.md`` (figures
as sibling PNG files), ``index.html`` (PNG embedded as base64, no external assets) and ``results.json``.
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
    """A paper claim beside our measurement of it."""

    claim: str
    paper: str
    ours: str


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
    return f"<h4>{html.escape(table.title)}</h4><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{caption}"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.ok{color:#1a7f37}.failed{color:#c62828}
pre{background:#f6f8fa;padding:.8em;overflow:auto}.cap{color:#555;font-style:italic}img{max-width:100%}
"""


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def write_report(
    out_dir: Path, records: list[ExperimentRecord], environment: dict[str, Any], title: str = "leanlm reproduce"
) -> Path:
    """Write ``index.md``, ``index.html``, ``results.json`` and figure PNGs into ``out_dir``; return index.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md: list[str] = [f"# {title}", ""]
    body: list[str] = [f"<h1>{html.escape(title)}</h1>"]

    summary = Table(
        "Summary",
        ["experiment", "module", "status", "seconds"],
        [[r.name, r.module, r.status, round(r.seconds, 1)] for r in records],
    )
    md += [table_markdown(summary), ""]
    body.append(table_html(summary))

    env_rows = [[k, str(v)] for k, v in environment.items()]
    env_table = Table("Environment", ["what", "value"], env_rows)
    md += [table_markdown(env_table), ""]
    body.append(table_html(env_table))

    for record in records:
        anchor = _slug(record.name)
        md += [f"## {record.title} (`{record.name}`)", "", f"Status: **{record.status}**, {record.seconds:.1f} s.", ""]
        body.append(
            f"<h2 id='{anchor}'>{html.escape(record.title)} (<code>{html.escape(record.name)}</code>)</h2>"
            f"<p>Status: <b class='{record.status}'>{record.status}</b>, {record.seconds:.1f} s.</p>"
        )
        config_text = json.dumps(record.config, indent=None, default=str)
        md += [f"Config: `{config_text}`", ""]
        body.append(f"<p>Config: <code>{html.escape(config_text)}</code></p>")
        if record.claims:
            claims = Table("Paper vs ours", ["claim", "paper", "ours"], [[c.claim, c.paper, c.ours] for c in record.claims])
            md += [table_markdown(claims), ""]
            body.append(table_html(claims))
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

    def record_json(record: ExperimentRecord) -> dict[str, Any]:
        data = {k: v for k, v in asdict(record).items() if k != "result"}
        if record.result is not None:
            data["metrics"] = record.result.metrics
            data["tables"] = [asdict(t) for t in record.result.tables]
            data["notes"] = record.result.notes
        return data

    atomic_write_json(out_dir / "results.json", {"environment": environment, "experiments": [record_json(r) for r in records]})
    return index
