"""``npcompile passes`` and ``npcompile targets``: what is registered, and whether it runs here."""

from __future__ import annotations

from typing import Annotated

import typer

from npcompile.cli.main import app
from npcompile.errors import UserError

__all__ = ["passes_cmd", "targets_cmd"]


@app.command("passes")
def passes_cmd(
    plugin: Annotated[list[str] | None, typer.Option(help="Also load these plugins (repeatable).")] = None,
) -> None:
    """List the passes (built-in, entry-point plugins and --plugin ones)."""
    from npcompile.pipeline import available_passes
    from npcompile.pipeline.plugins import load_plugin

    for spec in plugin or []:
        load_plugin(spec)
    for name, cls in available_passes().items():
        typer.echo(f"{name:16s} {cls.kind:9s} {cls.description}  [{cls.__module__}]")


@app.command("targets")
def targets_cmd() -> None:
    """List the deployment targets and whether each can run here."""
    from npcompile.targets import available_targets, get_target

    for name in available_targets():
        try:
            cls = get_target(name)
            ok, why = cls.available()
        except UserError as e:
            ok, why = False, str(e)
        typer.echo(f"{name:12s} {'available' if ok else 'unavailable: ' + why}")
