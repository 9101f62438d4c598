"""Self-contained HTML pages: inline CSS, images as data URIs, no script and no external request,
so a report opens offline and can be mailed or attached to a ticket as one file."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from loadgen.safetext import for_terminal

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       margin: 0 auto; padding: 16px 24px 48px; max-width: 1100px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.sub { color: #666; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums;
        display: block; max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
th { font-weight: 600; }
table.compact { font-size: 12.5px; }
table.compact th, table.compact td { padding: 2px 5px; }
td.text { text-align: left; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0 12px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 6px 12px; min-width: 100px; }
.row { display: flex; flex-wrap: wrap; gap: 0 24px; align-items: flex-start; }
.card .v { font-size: 20px; font-weight: 600; }
.card .k { color: #666; font-size: 12px; }
.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 6px 10px; margin: 6px 0; }
.good { background: #eef8ee; border-left: 4px solid #3a3; padding: 6px 10px; margin: 6px 0; }
.sig-worse { background: #fde8e8; }
.sig-better { background: #e8f6e8; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 12px; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
details { margin: 6px 0; }
footer { margin-top: 32px; color: #888; font-size: 12px; }
"""


def esc(value: Any) -> str:
    """Text into markup. Every string of a page goes through here: servers supply many of them
    (model ids, error messages, metric labels), so markup is escaped and control characters
    (invalid in HTML; escape sequences when the file is printed) are spelled out."""
    return html.escape(for_terminal(str(value)), quote=True)


@dataclass(frozen=True, slots=True)
class Raw:
    """Markup that goes into a page as is (already escaped or built here)."""

    markup: str


Cell = str | Raw


def _cell(value: Cell, tag: str, css: str = "") -> str:
    body = value.markup if isinstance(value, Raw) else esc(value)
    cls = f' class="{css}"' if css else ""
    return f"<{tag}{cls}>{body}</{tag}>"


def table(
    headers: Sequence[Cell],
    rows: Iterable[Sequence[Cell]],
    *,
    row_classes: Sequence[str] | None = None,
    text_columns: Sequence[int] = (),
    css: str = "",
) -> str:
    opening = f'<table class="{css}">' if css else "<table>"
    out = [f"{opening}<thead><tr>", *(_cell(h, "th") for h in headers), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and i < len(row_classes) else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        out.extend(_cell(v, "td", "text" if j in text_columns else "") for j, v in enumerate(row))
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def cards(items: Sequence[tuple[str, str]]) -> str:
    """Headline figures: (label, value) pairs shown large."""
    body = "".join(
        f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
        for k, v in items
    )
    return f'<div class="cards">{body}</div>'


def image(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def note(text: str, kind: str = "warn") -> str:
    return f'<div class="{kind}">{esc(text)}</div>'


def details(summary: str, inner: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{inner}</details>"


def pre_json(doc: Any) -> str:
    return f"<pre>{esc(json.dumps(doc, indent=2, sort_keys=True, default=str))}</pre>"


def page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        # No network at all: the page may only use its own inline styles and data: images.
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


# ---- number formatting shared by the reports (HTML and text) ----------------------------------


def num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def pct(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{100.0 * float(value):.{digits}f}%"
