"""Output for people and for scripts: tables that never cut a cell, and `--json` everywhere.

Rich shrinks a table to the terminal and ends cut cells with `…`; piped (not a TTY) it
assumes 80 columns. A URL cut that way cannot be copied, so every column folds instead
of truncating, and piped output is as wide as its content (set COLUMNS to choose).
`--json` prints one JSON document on stdout with the fields listed in the README's
"Machine-readable output"; times are ISO 8601 in UTC.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import rich.table
import typer
from rich.console import Console

PIPED_WIDTH = 4096  # wide enough for any row: piped tables are never cut nor folded


class Table(rich.table.Table):
    """A Rich table whose cells fold (wrap anywhere) instead of being cut with an ellipsis."""

    def add_column(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("overflow", "fold")
        super().add_column(*args, **kwargs)


def console_width() -> int | None:
    """None (Rich measures the terminal, or reads COLUMNS) on a TTY; the piped width otherwise."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None
    return PIPED_WIDTH


def make_console() -> Console:
    return Console(width=console_width())


JsonFlag = Annotated[bool, typer.Option(
    "--json", help="Print JSON for scripts (fields: README, Machine-readable output)")]


def iso(ts: datetime | None) -> str | None:
    """A stored time (naive means UTC) as ISO 8601 with its offset."""
    if ts is None:
        return None
    return (ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def minute(iso_time: str | None) -> str:
    """An ISO time from a document as a table shows it: `2026-12-03 14:52` (UTC), or `-`."""
    return iso_time[:16].replace("T", " ") if iso_time else "-"


ScaleTargetOption = Annotated[float | None, typer.Option(
    help="Requests in flight per replica the autoscaler aims at (default 4)")]
ScaleDownAfterOption = Annotated[int | None, typer.Option(
    "--scale-down-after-s", help="Cooldown before scaling down, in seconds (default 300)")]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def print_json(document: Any) -> None:
    """One JSON document on stdout: no markup, no wrapping, nothing else on the stream."""
    sys.stdout.write(json.dumps(document, indent=2, default=_plain, sort_keys=False) + "\n")
    sys.stdout.flush()
