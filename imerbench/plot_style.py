"""How every figure looks: fixed colours per modality and per method, references apart from
the methods, legends off the data, and how a figure is written (PNG and PDF)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

MODALITY_COLORS = {"a": "#e66101", "t": "#2166ac", "v": "#1b7837"}
MODALITY_NAMES = {"a": "audio", "t": "text", "v": "video"}


def method_colors(methods: list[str]) -> dict[str, tuple[float, ...]]:
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(sorted(methods))}


REFERENCE_MARKERS = "sD^v<>p*hX"


def line_styles(df: pd.DataFrame) -> dict[str, dict[str, object]]:
    """Per method label, how its line is drawn: the methods in colour, solid; references
    and ceilings (role in the rows) in grey, dashed, each with its own marker and shade."""
    roles = df.drop_duplicates("method").set_index("method")["role"].to_dict()
    methods = sorted(m for m, r in roles.items() if r not in ("reference", "ceiling"))
    others = sorted(m for m in roles if m not in methods)
    colors = method_colors(methods) if methods else {}
    styles: dict[str, dict[str, object]] = {
        m: {"color": colors[m], "linestyle": "-", "marker": "o"} for m in methods
    }
    for i, m in enumerate(others):
        shade = 0.25 + 0.45 * i / max(len(others) - 1, 1)
        marker = REFERENCE_MARKERS[i % len(REFERENCE_MARKERS)]
        styles[m] = {"color": (shade, shade, shade, 1.0), "linestyle": "--", "marker": marker}
    return styles


def legend_outside(ax: plt.Axes) -> None:
    """The legend to the right of the axes, where it covers no data."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths
