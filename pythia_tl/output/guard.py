"""Where an output may be written: never over a file the source is read from, never into the
source folder under a name that changes how that folder reads.

Paths are compared as files (device and inode, after following symbolic links) and as resolved
paths, so a symbolic link, a hard link or ``..`` cannot make an output land on a source file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pythia_tl.errors import OutputError
from pythia_tl.source.layouts import is_layout_name


def check_not_source(target: Path, source_files: Iterable[Path], source_folder: Path) -> None:
    """OutputError when writing ``target`` would replace a source file or change how
    ``source_folder`` reads."""
    for file in source_files:
        if _same_file(target, file):
            raise OutputError(
                f"{target}: is the source file {file}; writing "
                "there would destroy the checkpoint (choose another output path)"
            )
    for folder, name in _places(target):
        if is_layout_name(name) and _same_file(folder, source_folder):
            raise OutputError(
                f"{target}: a {name} in the source folder {source_folder} would change how the "
                "checkpoint reads (choose another output path)"
            )


def _places(target: Path) -> set[tuple[Path, str]]:
    """The folder and name ``target`` is written at, as given and with links resolved."""
    resolved = target.resolve()
    return {(target.parent, target.name), (resolved.parent, resolved.name)}


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        first, second = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)
