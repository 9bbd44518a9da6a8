"""A streaming, atomic safetensors writer.

safetensors' own ``save_file`` needs every tensor in memory at once (its maintainers declined an
incremental writer), which would bound peak memory by the model instead of its largest tensor.
The format is simple enough to write by hand: 8 bytes of header length, the JSON header, then the
tensors' bytes back to back. The header's size is reserved up front from the planned shapes, the
data streamed after it tensor by tensor, and the header itself written last, once the metadata
(which records hashes computed while converting) is final.

The file is written under a temporary name beside the target, fsynced, and only then given its
final name, so the final path never holds a partial file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import socket
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pythia_tl.errors import OutputError

SAFETENSORS_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
TEMP_PREFIX = "."
TEMP_MARKER = ".pythia-tl-"
TEMP_SUFFIX = ".tmp"
_HEADER_SLACK = 512
_WRITE_BYTES = 1 << 20
# Bytes written between two calls of _flush_behind.
_FLUSH_BYTES = 64 << 20


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for size in self.shape:
            n *= size
        return n


def temp_path_for(target: Path) -> Path:
    """A fresh temporary name beside ``target`` that marks the file as ours and unfinished.

    It names the host and the process that writes it: on a shared file system, machines of one
    cluster job write into the same folder, and only the writer's own host can tell whether that
    process is still alive.
    """
    token = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    return target.with_name(f"{TEMP_PREFIX}{target.name}{TEMP_MARKER}{token}{TEMP_SUFFIX}")


_TEMP_NAME = re.compile(
    re.escape(TEMP_PREFIX)
    + r".+"
    + re.escape(TEMP_MARKER)
    + r"(?P<host>[^/]+)-(?P<pid>[1-9][0-9]{0,9})-[0-9a-f]{8}"
    + re.escape(TEMP_SUFFIX)
)


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


def encode_header(
    entries: Sequence[TensorEntry], metadata: Mapping[str, str], size: int = 0
) -> bytes:
    """The JSON header, padded with spaces to ``size`` (at least to a multiple of 8)."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for entry in entries:
        header[entry.name] = {
            "dtype": SAFETENSORS_DTYPE_NAMES[entry.dtype],
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    padded = max(size, -(-len(raw) // 8) * 8)
    if len(raw) > padded:
        raise ValueError(f"header of {len(raw)} bytes does not fit the {size} reserved")
    return raw + b" " * (padded - len(raw))


def write_safetensors(
    target: Path,
    entries: Sequence[TensorEntry],
    tensors: Iterable[torch.Tensor],
    metadata: Callable[[], Mapping[str, str]],
    reserve_metadata: Mapping[str, str],
    *,
    overwrite: bool = False,
    on_bytes: Callable[[int, int], None] | None = None,
) -> int:
    """Stream ``tensors`` (in ``entries`` order) into ``target``; returns the file's size.

    ``reserve_metadata`` must be at least as long, once encoded, as what ``metadata()`` returns
    after the last tensor: its size fixes where the data starts. ``on_bytes(n, total)`` is called
    after each tensor with its size and the total size of all tensors.
    """
    if target.exists() and not overwrite:
        raise OutputError(f"{target}: already exists (use --force to overwrite)")
    header_size = len(encode_header(entries, reserve_metadata)) + _HEADER_SLACK
    remove_stale_temporaries(target.parent)
    temp = temp_path_for(target)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode follows the umask
    except OSError as exc:
        raise OutputError(f"{target}: cannot create a file there ({_reason(exc)})") from None
    try:
        with open(fd, "wb", buffering=0, closefd=True) as out:
            out.seek(8 + header_size)
            written = 8 + header_size
            total = sum(entry.nbytes for entry in entries)
            flushed = 0
            for entry, tensor in zip(entries, tensors, strict=True):
                if tuple(tensor.shape) != entry.shape or tensor.dtype != entry.dtype:
                    raise ValueError(
                        f"{entry.name}: got {tensor.dtype} {list(tensor.shape)}, planned "
                        f"{entry.dtype} {list(entry.shape)}"
                    )
                _write_all(out, tensor)
                written += entry.nbytes
                if written - flushed >= _FLUSH_BYTES:
                    _flush_behind(fd, flushed, written)
                    flushed = written
                if on_bytes is not None:
                    on_bytes(entry.nbytes, total)
                del tensor
            header = encode_header(entries, metadata(), header_size)
            out.seek(0)
            _write_all_bytes(out, len(header).to_bytes(8, "little") + header)
            os.fsync(out.fileno())
        _publish(temp, target, overwrite)
    except OSError as exc:
        _remove(temp)
        if exc.errno == errno.ENOSPC:
            needed = 8 + header_size + sum(entry.nbytes for entry in entries)
            raise OutputError(
                f"{target}: no space left on device for the {needed:,}-byte output "
                "(the partial file was removed)"
            ) from None
        raise OutputError(f"{target}: write failed ({_reason(exc)})") from None
    except BaseException:
        _remove(temp)
        raise
    return written


def _flush_behind(fd: int, start: int, end: int) -> None:
    """Start writing bytes [start, end) to disk now, and let the page cache drop the bytes
    before ``start`` (written out since the previous call).

    Without this the kernel begins writing only once many dirty pages have piled up, and the
    final fsync waits for most of the file; started early, the disk works while the next
    tensors are converted. Dropping written pages also keeps a long batch from filling the
    page cache with outputs nobody reads. (Linux starts write-back for dirty pages and drops
    clean ones on POSIX_FADV_DONTNEED; elsewhere this is a hint at most.)
    """
    if hasattr(os, "posix_fadvise"):
        back = max(0, start - _FLUSH_BYTES)
        os.posix_fadvise(fd, back, end - back, os.POSIX_FADV_DONTNEED)


def _write_all(out: object, tensor: torch.Tensor) -> None:
    # A uint8 view of the contiguous tensor goes to the kernel as one buffer, with no Python copy.
    data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
    _write_all_bytes(out, memoryview(data))


def _write_all_bytes(out: object, data: bytes | memoryview) -> None:
    # Slices of the buffer, not one call per tensor: on the 2-core benchmark machine, writing a
    # pythia-2.8b conversion in 1 MiB calls took about half the kernel time of one call per
    # tensor (up to 257 MB), while a worker thread converts alongside (benchmarks/run.py).
    view = memoryview(data).cast("B")
    while view:
        n = out.write(view[:_WRITE_BYTES])  # type: ignore[attr-defined]
        view = view[n:]


def _publish(temp: Path, target: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temp, target)
    else:
        try:
            # link() refuses an existing target atomically, unlike rename().
            os.link(temp, target)
        except FileExistsError:
            _remove(temp)
            raise OutputError(f"{target}: already exists (use --force to overwrite)") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
                raise
            if target.exists():
                _remove(temp)
                raise OutputError(f"{target}: already exists (use --force to overwrite)") from None
            os.replace(temp, target)
        else:
            os.unlink(temp)
    fsync_folder(target.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system fsyncs folders)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return exc.strerror or str(exc)
