"""The streaming safetensors writer: readable by safetensors, atomic, and honest about failures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pythia_tl.dtypes import by_torch
from pythia_tl.errors import OutputError
from pythia_tl.formats.safetensors import TensorEntry
from pythia_tl.output.writer import write_safetensors

TENSORS = {
    "a": torch.randn(3, 5),
    "b": torch.randn(7).to(torch.bfloat16),
    "c": torch.arange(12, dtype=torch.float16).reshape(2, 2, 3).transpose(0, 2),  # not contiguous
    "scalar": torch.tensor(2.5),
}
ENTRIES = [TensorEntry(name, by_torch()[t.dtype], tuple(t.shape)) for name, t in TENSORS.items()]


Named = tuple[str, torch.Tensor]


def write(target: Path, tensors: Iterator[Named] | None = None, **kwargs) -> int:
    meta = {"format": "pt", "note": "x" * 10}
    return write_safetensors(
        target,
        ENTRIES,
        tensors if tensors is not None else iter(TENSORS.items()),
        metadata=lambda: meta,
        reserve_metadata=meta,
        **kwargs,
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_output_reads_back_with_safe_open(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    size = write(target)
    assert size == target.stat().st_size
    with safe_open(target, framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "x" * 10}
        assert list(f.keys()) == sorted(TENSORS)
        for name, tensor in TENSORS.items():
            assert torch.equal(f.get_tensor(name), tensor)
    assert leftovers(tmp_path) == ["out.safetensors"]


def test_final_metadata_may_differ_from_the_reservation(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    write_safetensors(
        target,
        ENTRIES,
        iter(TENSORS.items()),
        metadata=lambda: {"sha": "f" * 64},
        reserve_metadata={"sha": "0" * 64},
    )
    with safe_open(target, framework="pt") as f:
        assert f.metadata() == {"sha": "f" * 64}


def test_progress_reports_every_tensor(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    write(tmp_path / "out.safetensors", on_bytes=lambda n, total: seen.append((n, total)))
    assert [n for n, _ in seen] == [e.nbytes for e in ENTRIES]
    assert {total for _, total in seen} == {sum(e.nbytes for e in ENTRIES)}


def test_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write(tmp_path / "out.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "out.safetensors").stat().st_mode & 0o777 == 0o640


def test_failure_mid_way_leaves_nothing_behind(tmp_path: Path) -> None:
    def failing() -> Iterator[Named]:
        yield "a", TENSORS["a"]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write(tmp_path / "out.safetensors", failing())
    assert leftovers(tmp_path) == []


def test_an_existing_output_is_kept_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match="already exists"):
        write(target)
    assert target.read_bytes() == b"precious"
    write(target, overwrite=True)
    with safe_open(target, framework="pt") as f:
        assert len(list(f.keys())) == len(TENSORS)
    assert leftovers(tmp_path) == ["out.safetensors"]


def test_an_output_appearing_during_the_write_is_not_clobbered(tmp_path: Path) -> None:
    target = tmp_path / "out.safetensors"

    def racing() -> Iterator[Named]:
        yield from list(TENSORS.items())[:2]
        target.write_bytes(b"written by someone else")
        yield from list(TENSORS.items())[2:]

    with pytest.raises(OutputError, match="already exists"):
        write(target, racing())
    assert target.read_bytes() == b"written by someone else"
    assert leftovers(tmp_path) == ["out.safetensors"]


def test_a_missing_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot create a file there"):
        write(tmp_path / "nope" / "out.safetensors")


def test_a_tensor_that_disagrees_with_the_plan_is_refused(tmp_path: Path) -> None:
    wrong = iter([("a", TENSORS["a"]), ("b", torch.randn(8)), ("c", TENSORS["c"])])
    with pytest.raises(ValueError, match="planned"):
        write(tmp_path / "out.safetensors", wrong)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "named",
    [
        [("a", TENSORS["a"]), ("b", TENSORS["b"]), ("c", TENSORS["c"])],
        [*TENSORS.items(), ("a", TENSORS["a"])],
        [("a", TENSORS["a"]), ("x", TENSORS["b"])],
    ],
    ids=["one missing", "one twice", "one unplanned"],
)
def test_every_planned_tensor_is_written_exactly_once(tmp_path: Path, named: list[Named]) -> None:
    with pytest.raises(ValueError, match=r"planned|twice"):
        write(tmp_path / "out.safetensors", iter(named))
    assert leftovers(tmp_path) == []


def test_tensors_in_any_order_land_in_their_planned_places(tmp_path: Path) -> None:
    write(tmp_path / "in-order.safetensors")
    write(tmp_path / "reversed.safetensors", iter(reversed(TENSORS.items())))
    assert (tmp_path / "in-order.safetensors").read_bytes() == (
        tmp_path / "reversed.safetensors"
    ).read_bytes()


def test_bytes_are_put_on_disk_behind_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pythia_tl.output.writer as writer

    synced: list[int] = []
    real = writer._fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(writer, "_FLUSH_BYTES", 1)  # a round after every tensor
    monkeypatch.setattr(writer, "_fdatasync", fdatasync)
    target = tmp_path / "out.safetensors"
    write(target)
    assert synced and all(size > 0 for size in synced)
    with safe_open(target, framework="pt") as f:
        for name, tensor in TENSORS.items():
            assert torch.equal(f.get_tensor(name), tensor)


def test_a_failure_behind_the_writer_is_reported_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import threading

    import pythia_tl.output.writer as writer

    failed = threading.Event()

    def failing(fd: int) -> None:
        failed.set()
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer, "_FLUSH_BYTES", 1)
    monkeypatch.setattr(writer, "_fdatasync", failing)

    def after_the_failure() -> Iterator[Named]:
        items = list(TENSORS.items())
        yield items[0]
        assert failed.wait(60)
        yield from items[1:]

    with pytest.raises(OutputError, match=r"write failed \(Input/output error\)"):
        write(tmp_path / "out.safetensors", after_the_failure())
    assert leftovers(tmp_path) == []
