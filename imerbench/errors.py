"""User-facing errors: one line that names the thing, echoes the value and says the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from rich.console import Console
from rich.markup import escape

_stderr = Console(stderr=True)


class ImerbenchError(Exception):
    """An error the user can fix (bad path, bad value, bad data).

    The CLI prints its message as one line, without a traceback, and exits with status 2.
    """


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix when a close match exists, else ''."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(kind: str, value: str, choices: Iterable[str]) -> ImerbenchError:
    """The standard error for a name that is not registered."""
    names = sorted(choices)
    return ImerbenchError(
        f"unknown {kind} '{value}'{did_you_mean(value, names)}; valid: {', '.join(names)}"
    )


def print_error_line(message: str) -> None:
    """One line on stderr, never wrapped, markup and emoji codes in `message` shown as typed."""
    text = " ".join(message.split())
    _stderr.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True, emoji=False)
