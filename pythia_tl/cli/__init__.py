"""The ``pythia-tl`` command line.

Every failure is reported as one line on stderr (``error: ...``) with exit code 2 for usage errors
and 1 for anything else; ``--debug`` shows the Python traceback instead.
"""

from __future__ import annotations

import gc
import sys
import warnings

import typer
import typer.main

from pythia_tl.cli import (
    batch_cmd,
    checkpoints_cmd,
    convert_cmd,
    export_cmd,
    inspect_cmd,
    plan_cmd,
    verify_cmd,
)
from pythia_tl.cli.errors import in_flags
from pythia_tl.cli.signals import StopSignal, stop_signals_raise
from pythia_tl.errors import PythiaTLError

app = typer.Typer(
    name="pythia-tl",
    help="Convert Pythia (GPT-NeoX) checkpoints into TransformerLens state dicts (safetensors).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors."),
) -> None:
    """Convert Pythia (GPT-NeoX) checkpoints into TransformerLens state dicts (safetensors)."""


app.command("convert")(convert_cmd.convert)
app.command("plan")(plan_cmd.plan)
app.command("inspect")(inspect_cmd.inspect)
app.command("verify")(verify_cmd.verify)
app.command("checkpoints")(checkpoints_cmd.checkpoints)
app.command("batch")(batch_cmd.batch)
app.command("export")(export_cmd.export)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script; exits with the command's status."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if debug:  # accepted anywhere on the line, not only before the command
        args = ["--debug", *(arg for arg in args if arg != "--debug")]
    command = typer.main.get_command(app)
    # torch's hundreds of thousands of objects live until exit: frozen, they are left out of
    # every garbage collection a conversion triggers (a few percent of its CPU time, profiled).
    gc.freeze()
    try:
        with stop_signals_raise(), warnings.catch_warnings():
            if not debug:
                # Libraries' warnings (huggingface_hub's free-space estimate before a full disk,
                # deprecations) would break the one-line report; --debug shows them.
                warnings.simplefilter("ignore")
            status = command.main(args=args, prog_name="pythia-tl", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except StopSignal as exc:
        _fail(exc.message, exc.exit_code)
    except PythiaTLError as exc:
        if debug:
            raise
        _fail(in_flags(exc), exc.exit_code)
    except Exception as exc:
        if _is_command_line_error(exc):
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(f"{exc.format_message()}{hint}", exc.exit_code)  # type: ignore[attr-defined]
        if debug:
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)", 1)
    sys.exit(status if isinstance(status, int) else 0)


def _is_command_line_error(exc: Exception) -> bool:
    """Click's usage errors (exit code 2) and other command-line errors, which Typer raises from
    its own copy of click in recent versions and from click itself in older ones."""
    return isinstance(exc, typer.TyperException) or (
        hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)
    )


def _fail(message: str, code: int) -> None:
    one_line = " ".join(message.split())
    print(f"error: {one_line}", file=sys.stderr)
    sys.exit(code)
