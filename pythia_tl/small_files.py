"""Reading a file whole, capped before a byte is read: for JSON files (config.json, index files,
batch summaries), which a FIFO, a device such as /dev/zero or a huge file must not turn into a
hang or an exhausted memory."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotASmallFile(ValueError):
    """The file is not a regular file of at most the allowed size (the message says which)."""


def read_small_file(path: Path, cap: int) -> bytes:
    """The bytes of ``path``, a regular file of at most ``cap`` bytes; NotASmallFile otherwise,
    OSError when it cannot be opened or read."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotASmallFile("not a regular file")
        if info.st_size > cap:
            raise NotASmallFile(f"{info.st_size} bytes, larger than the {cap} allowed")
        data = handle.read(cap + 1)
    if len(data) > cap:  # it grew since fstat
        raise NotASmallFile(f"larger than the {cap} bytes allowed")
    return data
