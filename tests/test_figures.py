"""What the figures show, read from the drawn artists: legends off the data, references
apart from the methods, critical-difference labels inside the frame and apart."""

from __future__ import annotations

import matplotlib.colors as mcolors
import pandas as pd
import pytest
from test_analysis import row

from imerbench import plot_ranks, plot_style, plots

LONG = "late-fusion[hidden=64,dropout=0.3]+g-blending[super_epoch=3]"


@pytest.fixture
def drawn(monkeypatch):  # type: ignore[no-untyped-def]
    """The figures a plotting function made, kept open instead of saved."""
    figures = []

    def keep(fig, out, name):  # type: ignore[no-untyped-def]
        figures.append(fig)
        return []

    monkeypatch.setattr(plot_style, "save", keep)
    return figures


def frame(methods: dict[str, str]) -> pd.DataFrame:
    """Rows of `methods` ({label: role}) at MRs 0.0, 0.3 and 0.5, two seeds; each method a
    fixed score, better for those listed first."""
    rows = []
    for rank, (method, role) in enumerate(methods.items()):
        for mask in ("0.0", "0.3", "0.5"):
            for seed in (0, 1):
                value = 0.9 - 0.1 * rank - 0.2 * float(mask) + 0.01 * seed
                rows.append(row(method, mask, seed, "mask", value, role=role))
    return pd.DataFrame(rows)


def test_score_vs_mr_keeps_its_legend_off_the_data_and_references_grey_dashed(drawn) -> None:  # type: ignore[no-untyped-def]
    df = frame({"comp": "method", "gcnet": "method", "late-fusion": "reference",
                "unimodal-t": "ceiling"})  # fmt: skip
    plots.score_vs_mr(df, "synthetic", None)  # type: ignore[arg-type]
    (fig,) = drawn
    ax = fig.axes[0]
    fig.canvas.draw()
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    lines = {line.get_label(): line for line in ax.get_lines()}
    for name in ("late-fusion", "unimodal-t"):
        r, g, b, _ = mcolors.to_rgba(lines[name].get_color())
        assert r == g == b and lines[name].get_linestyle() == "--", name
    for name in ("comp", "gcnet"):
        r, g, b, _ = mcolors.to_rgba(lines[name].get_color())
        assert not r == g == b and lines[name].get_linestyle() == "-", name
    assert lines["late-fusion"].get_marker() != lines["unimodal-t"].get_marker()


@pytest.mark.parametrize("count", [3, 12])
def test_critical_difference_labels_stay_inside_and_apart(drawn, count: int) -> None:  # type: ignore[no-untyped-def]
    names = [f"{LONG}-{i}" if i in (0, count - 1) else f"m{i}" for i in range(count)]
    plot_ranks.critical_difference(frame(dict.fromkeys(names, "method")), None)  # type: ignore[arg-type]
    (fig,) = drawn
    ax = fig.axes[0]
    fig.canvas.draw()
    frame_box = ax.get_window_extent()
    labels = [t for t in ax.texts if "(" in t.get_text()]
    boxes = [t.get_window_extent() for t in labels]
    assert len(boxes) == count
    for text, box in zip(labels, boxes, strict=True):
        assert frame_box.x0 <= box.x0 and box.x1 <= frame_box.x1, text.get_text()
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1 :])
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
    for dot in dots:
        x, y = ax.transData.transform(dot.get_xydata()[0])
        assert not any(b.x0 <= x <= b.x1 and b.y0 <= y <= b.y1 for b in boxes)
        size = dot.get_markersize() * fig.dpi / 72 / 2  # the dot's radius in pixels
        assert all(x + size < b.x0 or x - size > b.x1 for b in boxes if b.y0 <= y <= b.y1)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("not significantly different" in t for t in legend)
    assert any(t.startswith("critical difference") for t in legend)
