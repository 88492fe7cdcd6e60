"""How every table is laid out: markdown, or LaTeX that pastes into a paper (booktabs)."""

from __future__ import annotations

# The first line of every LaTeX table: what it needs in the preamble.
LATEX_PACKAGES = r"% needs \usepackage{booktabs} (\toprule, \midrule, \bottomrule)"


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

        def tex(text: str) -> str:
            return text.replace("%", r"\%").replace("_", r"\_").replace("`", "")

        out = latex_open("l" + "r" * (len(header) - 1))
        out += [" & ".join(tex(h) for h in header) + r" \\", r"\midrule"]
        out += [" & ".join(tex(c) for c in row) + r" \\" for row in rows]
        out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{tex(caption)}}}", r"\end{table}"]
        return out
    out = [f"### {caption}", "", "| " + " | ".join(header) + " |"]
    out.append("|---|" + "---:|" * (len(header) - 1))
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out
