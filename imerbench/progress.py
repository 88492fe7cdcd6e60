"""Progress lines of `imerbench run` when its output is not a terminal (a log file, a pipe):
the terminal's bar would be invisible there, so every `EVERY` seconds one plain line says
how far the grid is and when it should end."""

from __future__ import annotations

EVERY = 30.0  # seconds between progress lines
MIN_FOR_ETA = 5  # trained cells before an ETA (the first ones carry the start-up time)


def line(counts: dict[str, int], total: int, elapsed: float) -> str:
    """`progress: 40/225 cells (38 ran, 2 already done), 1m12s elapsed, ETA 5m30s`: the ETA
    from the cells this run trained so far, once there are a few."""
    done = sum(counts.values())
    ran = counts["ok"] + counts["failed"]
    text = f"progress: {done}/{total} cells ({ran} ran, {counts['skipped']} already done)"
    text += f", {clock(elapsed)} elapsed"
    if ran >= MIN_FOR_ETA and done < total:
        text += f", ETA {clock(elapsed / ran * (total - done))}"
    return text


def clock(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"
