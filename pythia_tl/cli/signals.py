"""SIGINT and SIGTERM raised as exceptions, so that cleanup code runs and the CLI says one line.

Python turns SIGINT into KeyboardInterrupt, but Typer converts that into a silent exit status
130; SIGTERM's default action kills the process on the spot, leaving the writer's temporary file
behind. Within ``stop_signals_raise`` both raise a ``StopSignal`` exception instead: every
``except``/``finally`` on the way up runs (the writer removes its temporary file, readers close
their files), and the CLI reports it. SIGKILL cannot be caught; the next run removes the
temporary file it leaves (``pythia_tl.output.atomic.remove_stale_temporaries``).

A stop is never lost: each signal is recorded as well as raised. Raised inside a C extension's
import, the exception may come out as another (an ImportError: "cannot load module more than
once per process"), and library code that catches broadly may swallow it; either way the block
ends by raising the stop, so the command ends with 130 or 143 and its one line.
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
def stop_signals_raise(received: list[int] | None = None) -> Iterator[None]:
    """Within the block, SIGINT raises Interrupted and SIGTERM raises Terminated (in the main
    thread, where Python runs signal handlers); the previous handlers are restored after.
    ``received``: the signals noted before the block (by the launcher), which it raises at once;
    the block records its own in the same list."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread
        return

    if received is None:
        received = []

    def handle(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise _RAISES[signum]

    previous = {signum: signal.getsignal(signum) for signum in _RAISES}
    for signum, old in previous.items():
        # A signal that was ignored when we started (e.g. SIGINT of a background job) stays so.
        if old is not signal.SIG_IGN:
            signal.signal(signum, handle)
    try:
        if received:  # noted before the block began
            raise _RAISES[received[0]]
        yield
        if received:  # the stop was swallowed on the way up: it still ends the command
            raise _RAISES[received[0]]
    except StopSignal:
        raise
    except BaseException as exc:
        if received:  # the stop, turned into another exception on the way up
            raise _RAISES[received[0]] from exc
        raise
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def others_finish(grace: float = 0.8) -> bool:
    """After a stop: give the other (non-daemon) threads ``grace`` seconds to finish (a
    conversion stops at its next tensor); whether they all did. One that did not (asleep in a
    rate-limit wait) would hold the process's exit: the caller then ends it at once, and the
    next run removes the temporary file such a thread leaves."""
    import time

    deadline = time.monotonic() + grace
    others = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.current_thread() and not thread.daemon
    ]
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in others)
