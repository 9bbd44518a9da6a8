"""The console script's entry point: Ctrl-C is answered with one line from the first moment.

Importing the command line takes seconds (torch); a SIGINT meanwhile would otherwise end in a
KeyboardInterrupt traceback. This module imports nothing heavy before it is ready to catch one.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from pythia_tl.cli import main as cli_main
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    cli_main()
