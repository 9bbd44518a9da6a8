"""Lock files that let batch runs share an output folder: one run converts an output while the
others wait for it, then find it done.

The lock files live in ``DIR/.pythia-tl-locks/``, one per file guarded (an output, the summary);
the kernel releases a lock when its holder exits, however it exits, so a killed run never leaves
a lock held. The files themselves stay: removing one while another run waits on it would let a
third run take a second lock on a new file of the same name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from pythia_tl.errors import OutputError

# How often a waiting run looks whether it should stop waiting.
_POLL_SECONDS = 0.2


LOCKS_FOLDER = ".pythia-tl-locks"


def lock_path(output_dir: Path, relative: Path) -> Path:
    """The lock file of ``output_dir / relative``."""
    return output_dir / LOCKS_FOLDER / (relative.as_posix().replace("/", "--") + ".lock")


@contextmanager
def held(
    output_dir: Path,
    relative: Path,
    timeout: float | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> Iterator[None]:
    """Hold the lock of ``output_dir / relative`` for the block; waits up to ``timeout``
    seconds (None: as long as it takes) and raises ``Stopped`` as soon as ``stopped()`` says so
    while waiting."""
    path = output_dir / relative
    lock_file = lock_path(output_dir, relative)
    lock_file.parent.mkdir(exist_ok=True)
    lock = FileLock(lock_file)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            lock.acquire(timeout=_POLL_SECONDS)
            break
        except Timeout:
            if stopped():
                raise Stopped from None
            if deadline is not None and time.monotonic() > deadline:
                raise OutputError(
                    f"{path}: another run has held its lock file {lock_file} for {timeout:.0f} s"
                ) from None
    try:
        yield
    finally:
        lock.release()


class Stopped(Exception):
    """Waiting for a lock was abandoned because the run is stopping."""
