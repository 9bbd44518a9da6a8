"""SIGINT and SIGTERM raised as exceptions, so that cleanup code runs and the CLI says one line.

Python turns SIGINT into KeyboardInterrupt, but Typer converts that into a silent exit status
130; SIGTERM's default action kills the process on the spot, leaving the writer's temporary file
behind. Within ``stop_signals_raise`` both raise a ``StopSignal`` exception instead: every
``except``/``finally`` on the way up runs (the writer removes its temporary file, readers close
their files), and the CLI reports it. SIGKILL cannot be caught; the next run removes the
temporary file it leaves (``pythia_tl.output.atomic.remove_stale_temporaries``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class StopSignal(BaseException):
    """A signal asked the process to stop. A BaseException, like KeyboardInterrupt, so that
    ``except Exception`` does not swallow it."""

    exit_code = 1
    message = "stopped"


class Interrupted(StopSignal):
    exit_code = 130  # 128 + SIGINT, the shells' convention
    message = "interrupted"


class Terminated(StopSignal):
    exit_code = 143  # 128 + SIGTERM
    message = "terminated"


_RAISES: dict[int, type[StopSignal]] = {signal.SIGINT: Interrupted, signal.SIGTERM: Terminated}


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGINT raises Interrupted and SIGTERM raises Terminated (in the main
    thread, where Python runs signal handlers); the previous handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        raise _RAISES[signum]

    previous = {signum: signal.getsignal(signum) for signum in _RAISES}
    for signum, old in previous.items():
        # A signal that was ignored when we started (e.g. SIGINT of a background job) stays so.
        if old is not signal.SIG_IGN:
            signal.signal(signum, handle)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
