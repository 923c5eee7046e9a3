"""``finegrain serve``: the model behind HTTP on the running stack (Ray Serve)."""

from __future__ import annotations

from typing import Optional

import typer

from finegrain.platform.apps.defaults import defaults_of
from finegrain.platform.apps.serving_config import HTTP_HOST, HTTP_PORT, ServeSettings

SERVE = defaults_of(ServeSettings)


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    model: Optional[str] = typer.Option(None, help="Model URI: models:/NAME@champion (also models:/NAME/V, runs:/...) "
                                                   "or a model folder."),
    host: str = typer.Option(HTTP_HOST, help="HTTP host (0.0.0.0 exposes the server to the network)."),
    port: int = typer.Option(HTTP_PORT, help="HTTP port."),
    replicas: int = typer.Option(SERVE["replicas"], min=1, help="Serve replicas."),
    reload: bool = typer.Option(False, "--reload", help="Follow the registry alias: when it moves, switch to the "
                                                        "new version (in-flight requests finish on the old one)."),
    poll_s: float = typer.Option(SERVE["poll_s"], help="Seconds between alias checks with --reload."),
    max_frames: int = typer.Option(SERVE["max_frames"], help="Most output frames (samples x CG frames) per request."),
    max_bytes: int = typer.Option(SERVE["max_bytes"], help="Largest request body, bytes."),
    max_batch_size: int = typer.Option(SERVE["max_batch_size"], min=1, help="Concurrent requests batched on a replica (1: no batching)."),
    stop: bool = typer.Option(False, "--stop", help="Stop Serve on the stack and exit."),
) -> None:
    """Serve a backmapping model over HTTP (POST /backmap, POST /backmap/file, GET /model; docs at /docs)."""
    from finegrain.platform.apps.serving import resolve_model, serve_model, shutdown

    if stop:
        shutdown()
        typer.echo("Serve stopped")
        return
    if model is None:
        raise typer.BadParameter("give a model URI (or --stop)", param_hint="--model")
    base = serve_model(model, host=host, port=port, replicas=replicas, reload=reload, poll_s=poll_s,
                       max_frames=max_frames, max_bytes=max_bytes, max_batch_size=max_batch_size)
    ref = resolve_model(model)
    version = f" (version {ref.version})" if ref.version else ""
    typer.echo(f"serving {model}{version} at {base}  |  API docs {base}/docs")
    if reload:
        typer.echo(f"following {model}: replicas check the alias every {poll_s:g} s")
    typer.echo("stop with `finegrain serve --stop`")
