"""The ``npcompile`` command line.

``npcompile MODEL [options]`` compiles (the same as ``npcompile compile MODEL``); ``npcompile
inspect MODEL`` shows channel groups and per-layer figures; ``npcompile passes`` lists passes.
Exit codes: 0 done, 1 a gate failed, 2 user or model error (one line on stderr), 3 internal error.
This module holds the ``app`` and :func:`main`; each command lives in a module of its own
(``compile``, ``inspect``, ``listing``, ``batch``), imported at the end to register it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
import warnings
from typing import Annotated

import typer

from npcompile import __version__
from npcompile.cli.params import annotation, declared
from npcompile.errors import NpcompileError

__all__ = ["app", "main"]


def _cli_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(exit, abort, usage-error) exception types of the click flavour typer runs on: typer
    vendors click in recent releases and depends on it in older ones."""
    exits: list[type] = [typer.Exit]
    aborts: list[type] = [typer.Abort]
    usage: list[type] = []
    try:
        from typer import exceptions as tex

        usage.append(tex.TyperException)
    except ImportError:  # pragma: no cover - older typer
        pass
    try:
        import click

        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
        usage.append(click.exceptions.ClickException)
    except ImportError:
        pass
    return tuple(exits), tuple(aborts), tuple(usage)

app = typer.Typer(add_completion=True, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="npcompile: structured channel pruning for ONNX models, verified and deployed.")

SUBCOMMANDS = ("compile", "inspect", "passes", "targets", "batch")

#: flags that ``batch`` and ``inspect`` share with ``compile``, declared in npcompile.options.groups
InputShape = annotation(declared("input_shape"))
Workers = annotation(declared("workers"))
RayAddress = annotation(declared("ray"))
ProbeTimeout = annotation(declared("probe_timeout"))


def _console():
    from rich.console import Console

    return Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


def _setup_logging(quiet: bool, verbose: bool) -> None:
    if not verbose:  # library warnings (numpy, onnx) would break the one-line error contract
        warnings.filterwarnings("ignore")
    level = logging.ERROR if quiet else (logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", "-V", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"npcompile {__version__}")
        raise typer.Exit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, map errors to exit codes and one-line messages."""
    args = list(sys.argv[1:] if argv is None else argv)
    root_flags = ("--help", "-h", "--version", "-V", "--install-completion", "--show-completion")
    if args and args[0] not in SUBCOMMANDS and args[0] not in root_flags:
        args.insert(0, "compile")  # the bare form: npcompile MODEL [options]
    if not args:  # bare npcompile: the usage, and one line saying what is missing
        app(args=["--help"], prog_name="npcompile", standalone_mode=False)
        print("npcompile: error: give a model: npcompile MODEL [options] (npcompile --help lists them)",
              file=sys.stderr)
        return 2
    exits, aborts, usage = _cli_exceptions()
    try:
        rv = app(args=args, prog_name="npcompile", standalone_mode=False)
        if rv == 130:  # typer returns Ctrl-C as 130 (no command returns that code itself)
            print("npcompile: interrupted", file=sys.stderr)
        return rv if isinstance(rv, int) else 0
    except exits as e:
        return int(getattr(e, "exit_code", 0))
    except aborts:
        print("npcompile: aborted", file=sys.stderr)
        return 130
    except NpcompileError as e:
        msg = " ".join(e.render("cli").split()) or type(e).__name__  # options named by their flags
        if e.exit_code == 3:  # npcompile's own output failed: an internal error, with its traceback
            traceback.print_exc()
            print(f"npcompile: internal error: {msg} (please report it with the traceback above)", file=sys.stderr)
            return 3
        print(f"npcompile: error: {msg}", file=sys.stderr)
        return e.exit_code
    except usage as e:
        print(f"npcompile: error: {' '.join(e.format_message().split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npcompile: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("npcompile: internal error (please report it with the traceback above)", file=sys.stderr)
        return 3


# the commands register themselves on ``app``, in the order ``npcompile --help`` lists them
for _module in ("compile", "inspect", "listing", "batch"):
    importlib.import_module(f"npcompile.cli.{_module}")

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
