"""The console script's entry point: a stop is answered with one line from the first moment.

Importing the command line takes seconds (torch); a SIGINT or SIGTERM meanwhile would otherwise
end in a KeyboardInterrupt traceback or in no line at all. This module imports nothing heavy
before it is ready to catch one. Each signal is recorded as well as raised: one that the
import swallowed, or turned into another exception, still ends the start-up with 130 or 143.
Once the import is done, a stop is noted and handed to the CLI, which ends with it.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

_STOPS: dict[int, tuple[str, int]] = {
    signal.SIGINT: ("interrupted", 130),
    signal.SIGTERM: ("terminated", 143),
}


class _Stopped(BaseException):
    pass


def main() -> None:
    received: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise _Stopped

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    stops = [signum for signum in _STOPS if signal.getsignal(signum) is not signal.SIG_IGN]
    for signum in stops:  # a signal ignored when we started stays so
        signal.signal(signum, record)
    try:
        from pythia_tl.cli import main as cli_main

        # From here until the CLI's own handlers, a stop is only noted: the CLI ends with it.
        for signum in stops:
            signal.signal(signum, note)
    except BaseException:
        if not received:
            raise
    if received:
        message, code = _STOPS[received[0]]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(code)
    cli_main(stops=received)
