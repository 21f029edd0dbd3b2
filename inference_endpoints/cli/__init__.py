"""The `endpoints` command line: one Typer app assembled from small command modules."""

from __future__ import annotations

import typer

from inference_endpoints.cli import (
    checkpoints,
    create,
    endpoints,
    events,
    keys,
    logs,
    metrics,
    scale,
    stack,
    start,
    update,
)

app = typer.Typer(no_args_is_help=True, help="Serve fine-tuned checkpoints as HTTP endpoints.")
app.add_typer(checkpoints.checkpoint_app, name="checkpoint")
app.add_typer(checkpoints.checkpoint_app, name="checkpoints", hidden=True)  # the plural works too
app.add_typer(keys.key_app, name="key")
app.add_typer(keys.org_app, name="org")
app.command("instances")(checkpoints.instances_cmd)
app.command("up")(stack.up_cmd)
app.command("down")(stack.down_cmd)
app.command("status")(stack.status_cmd)
app.command("demo")(stack.demo_cmd)
app.command("create")(create.create_cmd)
app.command("list")(endpoints.list_cmd)
app.command("show")(endpoints.show_cmd)
app.command("logs")(logs.logs_cmd)
app.command("scale")(scale.scale_cmd)
app.command("start")(start.start_cmd)
app.command("update")(update.update_cmd)
app.command("stop")(endpoints.stop_cmd)
app.command("rm")(endpoints.rm_cmd)
app.command("metrics")(metrics.metrics_cmd)
app.command("gc")(checkpoints.gc_cmd)
app.command("emit-finetune-completed")(events.emit_finetune_completed_cmd)

__all__ = ["app"]
