"""The console script's entry point: a stop is answered with one line from the first moment.

Importing the command line takes seconds (torch); a SIGINT or SIGTERM meanwhile would otherwise
end in a KeyboardInterrupt traceback or in no line at all. This module imports nothing heavy
before it is ready to catch one. Each signal is recorded as well as raised: one that the
import swallowed, or turned into another exception, still ends the start-up with 130 or 143.
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

    previous = {signum: signal.getsignal(signum) for signum in _STOPS}
    for signum, old in previous.items():
        if old is not signal.SIG_IGN:  # a signal ignored when we started stays so
            signal.signal(signum, record)
    try:
        from pythia_tl.cli import main as cli_main
    except BaseException:
        if not received:
            raise
    if received:
        message, code = _STOPS[received[0]]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(code)
    for signum, old in previous.items():
        signal.signal(signum, old if old is not None else signal.SIG_DFL)
    cli_main()
