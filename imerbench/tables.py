"""How every table is laid out: markdown, or LaTeX that pastes into a paper (booktabs)."""

from __future__ import annotations

import re

# The first line of every LaTeX table: what it needs in the preamble.
LATEX_PACKAGES = r"% needs \usepackage{booktabs} (\toprule, \midrule, \bottomrule)"


# Plain-text marks as LaTeX, applied after escaping LaTeX's special characters.
_MARKS = {
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "§": r"\S{}",
    "α": r"$\alpha$",
    "Δ": r"$\Delta$",
    "◦": r"$\circ$",
}


def tex(text: str) -> str:
    """A cell or caption written for markdown, as LaTeX: `%`, `_`, `&`, `#` escaped, the
    marks (±, daggers, §, α, Δ, ◦) as math, `code` as \texttt."""
    text = re.sub(r"([%_&#])", r"\\\1", text)
    for mark, latex in _MARKS.items():
        text = text.replace(mark, latex)
    return re.sub(r"`([^`]*)`", r"\\texttt{\1}", text)


def score_cells(texts: list[str], best: list[bool], worse: list[bool], fmt: str) -> list[str]:
    """A row's scores as cells: the best bold, the significantly worse marked †."""
    if fmt == "latex":
        return [
            (rf"\textbf{{{tex(t)}}}" if b else tex(t)) + (r"$^\dagger$" if w else "")
            for t, b, w in zip(texts, best, worse, strict=True)
        ]
    return [
        (f"**{t}**" if b else t) + (" †" if w else "")
        for t, b, w in zip(texts, best, worse, strict=True)
    ]


def latex_open(columns: str) -> list[str]:
    """The lines that open a LaTeX table (`columns`: the tabular's spec, e.g. `lrr`)."""
    return [
        LATEX_PACKAGES,
        r"\begin{table}[t]",
        r"\centering",
        rf"\begin{{tabular}}{{{columns}}}",
        r"\toprule",
    ]


def render_rows(caption: str, header: list[str], rows: list[list[str]], fmt: str) -> list[str]:
    """A small table as markdown or LaTeX, its first column left-aligned, the rest right."""
    if fmt == "latex":
        out = latex_open("l" + "r" * (len(header) - 1))
        out += [" & ".join(tex(h) for h in header) + r" \\", r"\midrule"]
        out += [" & ".join(tex(c) for c in row) + r" \\" for row in rows]
        out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{tex(caption)}}}", r"\end{table}"]
        return out
    out = [f"### {caption}", "", "| " + " | ".join(header) + " |"]
    out.append("|---|" + "---:|" * (len(header) - 1))
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out
