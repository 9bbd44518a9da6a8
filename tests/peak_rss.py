"""The peak resident memory of a command, measured the way the benchmark measures it.

Linux carries the high-water mark of the memory a child is exec'd from into its ``ru_maxrss``:
for a child of the test process, that would be the peak of pytest itself (which may have written
a checkpoint and run other tests), and a difference of two such peaks could be zero whatever the
command did. So the measured command is started by a small, fresh Python.
"""

from __future__ import annotations

import os
import subprocess
import sys

# Imported by every conversion: what a conversion's memory is compared against.
BASELINE_ARGV = [sys.executable, "-c", "import torch, pythia_tl.cli, pythia_tl.engine"]

_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
stderr = child.stderr.read()
_, status, usage = os.wait4(child.pid, 0)
sys.stderr.buffer.write(stderr)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss(argv: list[str], online: bool = False) -> int:
    """Run ``argv`` to completion (it must succeed); its peak resident set, in bytes (Linux
    reports kilobytes, counting mapped file pages as well as allocations). Offline unless
    ``online`` (for a Hub that the test serves)."""
    env = dict(os.environ)
    if not online:
        env["HF_HUB_OFFLINE"] = "1"
    launched = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *argv], capture_output=True, text=True, env=env
    )
    assert launched.returncode == 0, launched.stderr
    return int(launched.stdout) * 1024
