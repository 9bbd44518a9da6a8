"""How long this process has been running, start-up (interpreter, imports) included."""

from __future__ import annotations

import os
import time

# Fallback when /proc is not there: as early as the command line's own import.
_IMPORTED = time.monotonic()


def seconds_since_start() -> float:
    """Seconds since the process started (Linux: from /proc), else since the CLI was imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            # Field 22 (after the parenthesised command name) is the start time in clock ticks
            # since boot; /proc/uptime's first field is the seconds since boot.
            fields = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as uptime:
            now = float(uptime.read().split()[0])
        return max(0.0, now - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED
