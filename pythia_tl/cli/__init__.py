"""The ``pythia-tl`` command line.

Every failure is reported as one line on stderr (``error: ...``) with exit code 2 for usage errors
and 1 for anything else (with ``--json``, also as a JSON object on stdout); ``--debug`` shows the
Python traceback instead. Command modules import torch and the heavy parts of the package inside
their functions, so ``--help``, ``--version`` and the commands that convert nothing start fast.
"""

from __future__ import annotations

import gc
import os
import sys
import warnings

import typer
import typer.main

import pythia_tl
from pythia_tl.cli import (
    audit_cmd,
    batch_cmd,
    checkpoints_cmd,
    convert_cmd,
    export_cmd,
    inspect_cmd,
    json_output,
    plan_cmd,
    trace_cmd,
    verify_cmd,
)
from pythia_tl.cli.errors import in_flags
from pythia_tl.cli.help_text import tidy_help
from pythia_tl.cli.memory import return_large_frees
from pythia_tl.cli.notices import show_notices
from pythia_tl.cli.signals import StopSignal, others_finish, stop_signals_raise
from pythia_tl.errors import PythiaTLError
from pythia_tl.text import printable

app = typer.Typer(
    name="pythia-tl",
    help="Convert Pythia (GPT-NeoX) checkpoints into TransformerLens state dicts (safetensors).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"pythia-tl {pythia_tl.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors."),
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    """Convert Pythia (GPT-NeoX) checkpoints into TransformerLens state dicts (safetensors)."""


app.command("convert")(convert_cmd.convert)
app.command("plan")(plan_cmd.plan)
app.command("inspect")(inspect_cmd.inspect)
app.command("verify")(verify_cmd.verify)
app.command("checkpoints")(checkpoints_cmd.checkpoints)
app.command("batch")(batch_cmd.batch)
app.command("export")(export_cmd.export)
app.command("trace")(trace_cmd.trace)
app.command("audit")(audit_cmd.audit)


def main(argv: list[str] | None = None, stops: list[int] | None = None) -> None:
    """Entry point of the console script; exits with the command's status. ``stops``: the
    signals the launcher noted (and goes on noting) until the CLI's handlers are set."""
    args = sys.argv[1:] if argv is None else argv
    if not args:  # bare `pythia-tl`: the help, which is not an error
        args = ["--help"]
    debug = "--debug" in args
    if debug:  # accepted anywhere on the line, not only before the command
        args = ["--debug", *(arg for arg in args if arg != "--debug")]
    json_errors = "--json" in args
    try:
        command = typer.main.get_command(app)
        tidy_help(command)
        # torch's hundreds of thousands of objects live until exit: frozen, they are left out of
        # every garbage collection a conversion triggers (a few percent of its CPU time, profiled).
        gc.freeze()
        return_large_frees()
        with stop_signals_raise(stops), warnings.catch_warnings():
            if not debug:
                # Libraries' warnings (huggingface_hub's free-space estimate before a full disk,
                # deprecations) would break the one-line report; --debug shows them. So does
                # huggingface_hub's log of its retries (read when it is first imported).
                warnings.simplefilter("ignore")
                os.environ.setdefault("HF_HUB_VERBOSITY", "error")
            show_notices()
            status = command.main(args=args, prog_name="pythia-tl", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130, json_errors, at_once=not others_finish())
    except StopSignal as exc:
        _fail(exc.message, exc.exit_code, json_errors, at_once=not others_finish())
    except PythiaTLError as exc:
        if debug:
            raise
        reported = isinstance(exc, json_output.ReportedFailure)
        _fail(in_flags(exc), exc.exit_code, json_errors and not reported)
    except Exception as exc:
        if _is_command_line_error(exc):
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            code = exc.exit_code  # type: ignore[attr-defined]
            _fail(f"{exc.format_message()}{hint}", code, json_errors)  # type: ignore[attr-defined]
        if debug:
            raise
        message = f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)"
        _fail(message, 1, json_errors)
    sys.exit(status if isinstance(status, int) else 0)


def _is_command_line_error(exc: Exception) -> bool:
    """Click's usage errors (exit code 2) and other command-line errors, which Typer raises from
    its own copy of click in recent versions and from click itself in older ones."""
    return isinstance(exc, typer.TyperException) or (
        hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int)
    )


def _fail(message: str, code: int, json_errors: bool, at_once: bool = False) -> None:
    """Report and exit; with ``--json`` (``json_errors``), also as a JSON object on stdout.
    ``at_once``: without waiting for the threads still running (after a stop)."""
    # Messages quote names from files and the network: their control characters are escaped,
    # so that no name can move the cursor, recolour the terminal or start a line of its own.
    one_line = " ".join(printable(message).split())
    if json_errors:
        json_output.print_json({"error": one_line, "exit_code": code})
    print(f"error: {one_line}", file=sys.stderr)
    if at_once:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
