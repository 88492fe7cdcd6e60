"""The report's HTML: its style, the markdown tables this package writes turned into
sortable HTML tables, embedded figures and sections (`imerbench/report.py` assembles them).
Everything is inline, so the page is one file that works offline."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em;
color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{font-size:1.02em;font-weight:600;margin:1.2em 0 .4em}
nav{background:#f6f6f6;padding:.6em 1em;border-radius:6px}nav a{margin-right:1.2em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
th{background:#f0f0f0;cursor:pointer;user-select:none}th:hover{background:#e4e4e4}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
tbody tr:nth-child(even){background:#fafafa}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.row>div{flex:1 1 480px;min-width:0;overflow-x:auto}
img{max-width:100%}figure{margin:0}figcaption{font-size:.85em;color:#555}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}
.facts td{text-align:left}.note{color:#555;font-size:.9em}
"""

# Click a header to sort its table by that column (numbers by value: the first number in
# a cell, so "61.00 ± 0.20 †" sorts as 61.00), again to reverse.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, col) => {
  th.addEventListener("click", () => {
    const table = th.closest("table"), body = table.tBodies[0];
    const asc = !th.classList.contains("asc");
    table.querySelectorAll("th").forEach(h => h.classList.remove("asc", "desc"));
    th.classList.add(asc ? "asc" : "desc");
    const key = tr => {
      const text = tr.cells[th.cellIndex].textContent.trim();
      const m = text.match(/^[-+]?\\d+(\\.\\d+)?/);
      return m ? parseFloat(m[0]) : text.toLowerCase();
    };
    const rows = Array.from(body.rows).sort((a, b) => {
      const x = key(a), y = key(b);
      const order = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0)
        : (typeof x === "number" ? -1 : 1);
      return asc ? order : -order;
    });
    rows.forEach(r => body.appendChild(r));
  });
});
"""


def inline(text: str) -> str:
    """Markdown marks this package writes inside a cell or heading, as HTML (text already
    escaped): **bold**, *italic*, `code`."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<i>\1</i>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def tables_html(markdown: str) -> str:
    """The markdown tables this package writes (### heading, pipes) as sortable HTML."""
    out: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if rows:
            head, body = rows[0], rows[2:]
            out.append(
                "<table class='sortable'><thead><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
                + "</tbody></table>"
            )
            rows.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            rows.append([inline(html.escape(c.strip())) for c in line.strip("|").split("|")])
            continue
        flush()
        if line.startswith("### "):
            out.append(f"<h3>{inline(html.escape(line[4:]))}</h3>")
        elif line.strip():
            out.append(f"<p class='note'>{inline(html.escape(line))}</p>")
    flush()
    return "\n".join(out)


def figure_html(path: Path | None, caption: str = "") -> str:
    """A PNG embedded in the page (nothing when the figure was not drawn)."""
    if path is None or not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    alt = html.escape(caption or path.stem)
    note = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure><img alt='{alt}' src='data:image/png;base64,{data}'>{note}</figure>"


def beside(*parts: str) -> str:
    """Tables and figures side by side (stacked on a narrow screen)."""
    kept = [p for p in parts if p]
    return "<div class='row'>" + "".join(f"<div>{p}</div>" for p in kept) + "</div>"


def facts_html(facts: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    return f"<table class='facts'>{rows}</table>"


def page(title: str, header: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole page: title, `header` (HTML), a table of contents, then each section
    (anchor id, heading, body HTML)."""
    toc = "".join(f"<a href='#{sid}'>{html.escape(name)}</a>" for sid, name, _ in sections)
    body = "".join(
        f"<section id='{sid}'><h2>{html.escape(name)}</h2>{content}</section>"
        for sid, name, content in sections
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{header}<nav>{toc}</nav>{body}"
        f"<script>{SORT_SCRIPT}</script></body></html>"
    )
