"""`endpoints logs NAME`: the engine's own log, read where its serve run wrote it.

Each serve run records its log file and host when it starts its engine, so the log of
the live run (or of an earlier generation, `--generation`) is found without Prefect. The
lines go to stdout unchanged (pipe them to grep); headers and reasons go to stderr.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, TextIO

import typer

from inference_endpoints.cli.common import Context, err, load_context, require_endpoint
from inference_endpoints.core.status import EndpointStatus
from inference_endpoints.persistence.models import ServeRun
from inference_endpoints.services.engine_log import last_lines, pick_run, unreadable_reason

FOLLOW_POLL_S = 0.5
RECHECK_EVERY_S = 2.0  # how often --follow looks for a restart or the run's end


def _where(run: ServeRun) -> str:
    return f"serve run {run.id} (generation {run.generation}, flow run {run.flow_run_id or '-'})"


def _print_ending(ctx: Context, endpoint_id: str, run: ServeRun) -> None:
    ep = ctx.registry.get_endpoint(endpoint_id)
    if run.ended_at is not None:
        err.print(f"[dim]{_where(run)} ended: {run.end_reason}: {run.end_message}[/]")
    if ep is not None and ep.status == EndpointStatus.FAILED:
        err.print(f"[bold red]Endpoint {ep.name} failed:[/] {ep.reason_code}: {ep.reason_message}")


def _follow(ctx: Context, endpoint_id: str, run: ServeRun, path: Path, offset: int,
            sink: TextIO) -> None:
    """Print what the engine writes until its run ends; switch to a restart's log when one starts."""
    next_check = 0.0
    while True:
        with path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
        if chunk:
            offset += len(chunk)
            sink.write(chunk.decode(errors="replace"))
            sink.flush()
        now = time.monotonic()
        if now >= next_check:
            next_check = now + RECHECK_EVERY_S
            ep = ctx.registry.get_endpoint(endpoint_id)
            current = ctx.registry.runs.get(run.id)
            if ep is None or current is None:
                return
            if ep.live_run and ep.live_run != run.id:
                newer = ctx.registry.runs.get(ep.live_run)
                if newer is not None and newer.log_path and Path(newer.log_path).is_file():
                    err.print(f"[dim]==> now {_where(newer)}: {newer.log_path}[/]")
                    run, path, offset = newer, Path(newer.log_path), 0
                    continue
            if current.ended_at is not None and EndpointStatus(ep.status).is_terminal:
                _print_ending(ctx, endpoint_id, current)
                return
        time.sleep(FOLLOW_POLL_S)


def logs_cmd(
    name: Annotated[str, typer.Argument(help="Endpoint name or id")],
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="How many of the last lines")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines")] = False,
    generation: Annotated[int | None, typer.Option(
        "--generation", "-g", min=0, help="An earlier serve run (generation), not the live one")] = None,
    replica: Annotated[int | None, typer.Option(
        "--replica", "-r", min=0, help="One replica's engine (0 is the first; see `endpoints show`)")] = None,
) -> None:
    """Print an endpoint's engine log (vLLM's own output); `--follow` streams it."""
    import sys

    ctx = load_context()
    ep = require_endpoint(ctx, name)
    runs = ctx.registry.runs.of(ep.id)
    run = pick_run(runs, ep.live_run, generation, replica)
    if run is None:
        if generation is not None:
            asked, known = f" of generation {generation}", {str(r.generation) for r in runs}
            listing = f"generations: {', '.join(sorted(known, key=int)) or 'none'}"
        else:
            asked, known = f" for replica {replica}", {str(r.replica) for r in runs}
            listing = f"replicas: {', '.join(sorted(known, key=int)) or 'none'}"
        err.print(f"[red]{ep.name} has no serve run{asked if runs else ''} ({listing}).[/]")
        raise typer.Exit(1)
    reason = unreadable_reason(run)
    if reason is not None or not run.log_path:
        err.print(reason)
        raise typer.Exit(1)
    path = Path(run.log_path)
    err.print(f"[dim]==> {_where(run)}: {path}[/]")
    shown, offset = last_lines(path, lines)
    for line in shown:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if follow:
        try:
            _follow(ctx, ep.id, run, path, offset, sys.stdout)
        except KeyboardInterrupt:  # Ctrl-C ends following, nothing else
            return
    else:
        _print_ending(ctx, ep.id, run)
