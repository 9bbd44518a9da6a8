"""Files that appear whole or not at all: written under a temporary name beside the target,
fsynced, then renamed (or linked) into place, with the folder fsynced after.

Temporary names mark the file as ours and unfinished, and name the host and process writing it:
on a shared file system, machines of one cluster job write into the same folder, and only the
writer's own host can tell whether that process is still alive (``remove_stale_temporaries``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pythia_tl.errors import OutputError, Param

TEMP_PREFIX = "."
TEMP_MARKER = ".pythia-tl-"
TEMP_SUFFIX = ".tmp"

_TEMP_NAME = re.compile(
    re.escape(TEMP_PREFIX)
    + r".+"
    + re.escape(TEMP_MARKER)
    + r"(?P<host>[^/]+)-(?P<pid>[1-9][0-9]{0,9})-[0-9a-f]{8}"
    + re.escape(TEMP_SUFFIX)
)
# Errors of link() on file systems or targets that cannot hard-link.
CANNOT_LINK = (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK)


def temp_path_for(target: Path) -> Path:
    """A fresh temporary name beside ``target``, within the file system's name limit: the
    target's name is shortened when need be, never the marker that identifies the file."""
    token = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    fixed = f"{TEMP_PREFIX}{TEMP_MARKER}{token}{TEMP_SUFFIX}"
    room = _name_max(target.parent) - len(os.fsencode(fixed))
    # Cut in bytes, as the limit counts them (a cut through a character leaves bytes that
    # fsdecode keeps as they are).
    stem = os.fsdecode(os.fsencode(target.name)[: max(room, 1)])
    return target.with_name(f"{TEMP_PREFIX}{stem}{TEMP_MARKER}{token}{TEMP_SUFFIX}")


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_replaceable(target: Path) -> None:
    """OutputError unless ``target`` is absent, a regular file, or a symbolic link (which is
    replaced itself; the file it points to is never written). A directory, device, FIFO or
    socket is never replaced."""
    try:
        info = target.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"{target}: cannot examine it ({exc.strerror or exc})") from None
    if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
        return
    # Named without a flag: batch replaces outputs itself, and has no --force.
    raise OutputError(
        f"{target}: is {_kind(info.st_mode)}, which is never replaced (only a regular file or a "
        "symbolic link is)"
    )


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


@contextmanager
def atomic_path(target: Path, *, overwrite: bool) -> Iterator[Path]:
    """A temporary path for the block to write (and fsync) a file at; published at ``target``
    when the block ends normally, removed when it raises. Without ``overwrite``, an existing
    ``target`` is an OutputError and is left as it is."""
    temp = temp_path_for(target)
    try:
        yield temp
        publish(temp, target, overwrite=overwrite)
    except BaseException:
        remove_quietly(temp)
        raise


def publish(temp: Path, target: Path, *, overwrite: bool) -> None:
    """Give the finished file ``temp`` its final name ``target`` (atomically), durably."""
    if overwrite:
        check_replaceable(target)
        os.replace(temp, target)
    else:
        try:
            # link() refuses an existing target atomically, unlike rename().
            os.link(temp, target)
        except FileExistsError:
            raise exists_error(target) from None
        except OSError as exc:
            if exc.errno not in CANNOT_LINK:
                raise
            if target.exists():
                raise exists_error(target) from None
            os.replace(temp, target)
        else:
            os.unlink(temp)
    fsync_folder(target.parent)


def check_target(target: Path, overwrite: bool) -> None:
    """OutputError unless a file may be written at ``target``: its folder exists, and the target
    is absent or (``overwrite``) replaceable. Checked before any work, and again by the writer."""
    if target.exists() and not overwrite:
        raise exists_error(target)
    if overwrite:
        check_replaceable(target)
    if not target.parent.is_dir():
        raise OutputError(f"{target}: cannot create a file there (no such folder {target.parent})")


def check_creatable(folder: Path) -> None:
    """OutputError unless ``folder`` is a folder or can be made one: its nearest existing
    ancestor is a folder."""
    for ancestor in (folder, *folder.parents):
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise OutputError(f"{folder}: cannot create a folder there ({ancestor} is a file)")
            return


def make_folder(folder: Path) -> None:
    """Create ``folder`` and its missing parents; OutputError naming it if that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from None


def exists_error(target: Path) -> OutputError:
    return OutputError(
        f"{target}: already exists (use ", Param("overwrite", True), " to overwrite)"
    )


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system fsyncs folders)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_quietly(path: Path) -> None:
    """Remove ``path`` if it is there (cleanup on a failure path must not raise one of its own)."""
    with contextlib.suppress(OSError):
        path.unlink()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that runs killed outright (SIGKILL, power loss) left in
    ``folder``; return them.

    Only files named by ``temp_path_for`` on this host, owned by this user, whose writer process
    is no longer alive are removed: a conversion still running, here, on another machine sharing
    the folder, or by another user, keeps its file.
    Best effort: a file that cannot be examined or removed is left alone.
    """
    removed = []
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            match = _TEMP_NAME.fullmatch(path.name)
            if (
                match is None
                or match["host"] != socket.gethostname()
                or _process_alive(int(match["pid"]))
            ):
                continue
            with contextlib.suppress(OSError):
                info = path.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid():
                    path.unlink()
                    removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or not a pid we could have written: keep it
    return True
