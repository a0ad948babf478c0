"""One self-contained HTML page from the report's sections: inline CSS, pictures as base64 PNG
`data:` URIs, no script and no external resource, so it opens from a file with no server."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

from analysis.report.verdicts import Verdict

BADGE = {
    "held": "held",
    "not held": "not-held",
    "not enough data": "no-data",
    "not judged": "no-data",
}


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    title: str = ""
    wrap: bool = False  # long text: wrapped and left-aligned
    wide: bool = False  # drawn under the picture at full width, not beside it


@dataclass(frozen=True)
class Section:
    """One picture with its numbers; `missing` says what could not be shown and why."""

    id: str
    title: str
    caption: str = ""
    image: bytes | None = None
    image_alt: str = ""
    tables: Sequence[Table] = ()
    missing: Sequence[str] = ()
    notes: Sequence[str] = ()


@dataclass(frozen=True)
class Page:
    title: str
    subtitle: Sequence[str]
    verdicts: Sequence[Verdict]
    sections: Sequence[Section]
    footer: Sequence[str] = field(default_factory=list)


CSS = """
:root { --ink:#1d2430; --muted:#5b6676; --line:#e3e7ee; --bg:#f6f7fa; --card:#fff;
        --held:#1f8a4c; --not-held:#c0392b; --no-data:#7a8291; --accent:#2f6db5; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 28px 60px; }
header h1 { margin: 0 0 4px; font-size: 28px; letter-spacing: -0.01em; }
header .sub { color: var(--muted); font-size: 13px; margin: 0; }
h2 { font-size: 20px; margin: 0 0 4px; }
h3 { font-size: 13px; margin: 12px 0 6px; color: var(--muted); font-weight: 600; }
.verdicts { display: grid; grid-template-columns: repeat(auto-fill, minmax(225px, 1fr));
            gap: 12px; margin: 22px 0 10px; }
.verdict { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
           padding: 12px 14px; border-top: 5px solid var(--no-data); }
.verdict.held { border-top-color: var(--held); }
.verdict.not-held { border-top-color: var(--not-held); }
.verdict .claim { font-weight: 600; margin: 8px 0 6px; font-size: 14px; line-height: 1.35; }
.verdict .reason { color: var(--muted); font-size: 12.5px; margin: 0 0 6px; }
.verdict a { font-size: 12.5px; color: var(--accent); text-decoration: none; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; color: #fff;
         font-size: 12px; font-weight: 700; text-transform: uppercase; letter-spacing: .05em;
         background: var(--no-data); }
.badge.held { background: var(--held); } .badge.not-held { background: var(--not-held); }
.recon { display: inline-block; margin-top: 4px; font-size: 11px; color: #8a5a00;
         background: #fff4d6; border: 1px solid #f0d9a0; border-radius: 4px; padding: 0 6px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
          padding: 20px 22px; margin: 18px 0; }
.body { display: flex; flex-wrap: wrap; gap: 22px; align-items: flex-start; }
figure { margin: 0; flex: 3 1 600px; min-width: 0; }
figure img { max-width: 100%; height: auto; display: block; border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
.numbers { flex: 2 1 360px; min-width: 0; overflow-x: auto; }
.full { margin-top: 14px; overflow-x: auto; }
.full table { width: auto; min-width: 55%; }
table { border-collapse: collapse; font-size: 12px; width: 100%; margin-bottom: 10px;
        font-variant-numeric: tabular-nums; }
th, td { padding: 3px 6px; border-bottom: 1px solid var(--line); text-align: right;
         white-space: nowrap; }
table.wrap td, table.wrap th { white-space: normal; text-align: left; vertical-align: top; }
tbody tr:hover { background: #f7f9fc; }
th { color: var(--muted); font-weight: 600; background: #fafbfc; }
th:first-child, td:first-child { text-align: left; }
.missing { background: #fff6f4; border-left: 4px solid var(--not-held); padding: 8px 12px;
           margin: 10px 0; font-size: 13.5px; }
.note { background: #f3f7fd; border-left: 4px solid var(--accent); padding: 8px 12px;
        margin: 10px 0; font-size: 13px; }
.lede { color: var(--muted); margin: 0 0 12px; font-size: 14px; }
ul.rules { font-size: 13px; color: var(--muted); padding-left: 18px; }
footer { color: var(--muted); font-size: 12px; margin-top: 24px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
"""


def e(text: object) -> str:
    return html.escape(str(text))


def img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="figure" src="data:image/png;base64,{data}" alt="{e(alt)}">'


def render_table(t: Table) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    title = f"<h3>{e(t.title)}</h3>" if t.title else ""
    css = ' class="wrap"' if t.wrap else ""
    return f"{title}<table{css}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_verdict(v: Verdict, number: dict[str, int]) -> str:
    css = BADGE[v.status]
    fig = number.get(v.figure)
    link = f'<a href="#{e(v.figure)}">→ Figure {fig}</a>' if fig else ""
    recon = "".join(f'<div class="recon">[reconstructed] {e(r)}</div>' for r in v.reconstructed)
    scope = f'<p class="reason">Speaks for: {e(v.generalises)}</p>' if v.generalises else ""
    return (
        f'<div class="verdict {css}" id="verdict-{e(v.key)}" title="{e(v.rule)}">'
        f'<span class="badge {css}">'
        f'{e(v.status)}</span><p class="claim">{e(v.claim)}</p>'
        f'<p class="reason">{e(v.reason)}</p>{scope}{link}{recon}</div>'
    )


def render_section(s: Section, number: int | None) -> str:
    parts = [f'<section id="{e(s.id)}"><h2>{e(s.title)}</h2>']
    parts += [f'<div class="missing">{e(m)}</div>' for m in s.missing]
    body = []
    if s.image is not None:
        cap = f"<figcaption><b>Figure {number}.</b> {e(s.caption)}</figcaption>"
        body.append(f"<figure>{img_tag(s.image, s.image_alt or s.title)}{cap}</figure>")
    elif s.caption:
        parts.append(f'<p class="lede">{e(s.caption)}</p>')
    side = [t for t in s.tables if not t.wide or s.image is None]
    below = [t for t in s.tables if t.wide and s.image is not None]
    if side:
        body.append('<div class="numbers">' + "".join(render_table(t) for t in side) + "</div>")
    if body:
        parts.append('<div class="body">' + "".join(body) + "</div>")
    if below:
        parts.append('<div class="full">' + "".join(render_table(t) for t in below) + "</div>")
    parts += [f'<div class="note">{e(n)}</div>' for n in s.notes]
    parts.append("</section>")
    return "".join(parts)


def figure_numbers(sections: Sequence[Section]) -> dict[str, int]:
    """Section id -> figure number, for the sections that have a picture."""
    with_image = [s.id for s in sections if s.image is not None]
    return {sid: i + 1 for i, sid in enumerate(with_image)}


def render(page: Page) -> str:
    """The whole page as one string."""
    number = figure_numbers(page.sections)
    verdicts = "".join(render_verdict(v, number) for v in page.verdicts)
    sections = "".join(render_section(s, number.get(s.id)) for s in page.sections)
    sub = "".join(f'<p class="sub">{e(line)}</p>' for line in page.subtitle)
    foot = "".join(f"<p>{e(line)}</p>" for line in page.footer)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="cct-report-figures" content="{len(number)}">'
        f"<title>{e(page.title)}</title><style>{CSS}</style></head><body><main>"
        f"<header><h1>{e(page.title)}</h1>{sub}</header>"
        f'<div class="verdicts">{verdicts}</div>{sections}<footer>{foot}</footer>'
        "</main></body></html>\n"
    )
