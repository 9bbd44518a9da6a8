"""The safetensors header parser: it agrees with safetensors on good files and refuses bad ones,
each with one line naming the file (and the tensor), before sizing anything from the header."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pythia_tl.errors import CheckpointError
from pythia_tl.formats.safetensors import MAX_HEADER_BYTES, header_length, parse_header

WHERE = "model.safetensors"


def file_bytes(header: dict | bytes, data_size: int) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(data_size)


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# Two F16 tensors of 2x3 and 4 elements: bytes [0, 12) and [12, 20).
GOOD = {
    "__metadata__": {"format": "pt"},
    "a": entry("F16", [2, 3], 0, 12),
    "b": entry("F32", [2], 12, 20),
}


def parse(head: bytes, file_size: int | None = None):
    return parse_header(head, len(head) if file_size is None else file_size, WHERE)


def refused(head: bytes, *fragments: str, file_size: int | None = None) -> str:
    with pytest.raises(CheckpointError) as caught:
        parse(head, file_size)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{WHERE}: not a valid safetensors file ("), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_file_written_by_safetensors_parses_as_safetensors_reads_it(tmp_path: Path) -> None:
    tensors = {
        "w": torch.randn(5, 7).half(),
        "b": torch.randn(3).to(torch.bfloat16),
        "s": torch.tensor(1.5),
        "e": torch.empty(0, 4),
        "m": torch.ones(2, 2, dtype=torch.uint8),
    }
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    data = path.read_bytes()
    header = parse(data)
    assert header.metadata == {"format": "pt"}
    by_name = {t.name: t for t in header.tensors}
    assert set(by_name) == set(tensors)
    for name, tensor in tensors.items():
        got = by_name[name]
        assert got.shape == tuple(tensor.shape) and got.dtype.torch == tensor.dtype
        raw = data[header.data_start + got.begin : header.data_start + got.end]
        assert raw == tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def test_good_header_parses() -> None:
    header = parse(file_bytes(GOOD, 20))
    assert [(t.name, t.shape, t.begin, t.end) for t in header.tensors] == [
        ("a", (2, 3), 0, 12),
        ("b", (2,), 12, 20),
    ]
    assert header.data_start == len(file_bytes(GOOD, 0))


def test_file_shorter_than_the_length_field() -> None:
    refused(b"\x01\x00", "too short")


def test_header_length_larger_than_the_file() -> None:
    head = (10**6).to_bytes(8, "little") + b"{}"
    refused(head, "header length 1000000 exceeds the file's 10 bytes")


def test_header_length_larger_than_the_cap_is_refused_before_reading_it() -> None:
    length = MAX_HEADER_BYTES + 1
    # The length alone decides, from the first 8 bytes, before any header byte is read.
    with pytest.raises(CheckpointError, match=r"exceeds the \d+ bytes allowed"):
        header_length(length.to_bytes(8, "little"), 10 * length, WHERE)


def test_header_cut_short() -> None:
    data = file_bytes(GOOD, 20)
    refused(data[:20], "cut short", file_size=len(data))


def test_header_that_is_not_utf8() -> None:
    refused(file_bytes(b'{"\xff": 1}', 0), "not valid UTF-8")


@pytest.mark.parametrize("raw", [b"", b"{", b"{'a': 1}", b"nan", b"{} x"])
def test_header_that_is_not_json(raw: bytes) -> None:
    refused(file_bytes(raw, 0), "not valid JSON")


def test_header_nested_too_deeply() -> None:
    refused(file_bytes(b"[" * 100_000 + b"]" * 100_000, 0), "not valid JSON")


def test_header_that_is_not_an_object() -> None:
    refused(file_bytes(b"[1, 2]", 0), "JSON list, expected an object")


def test_repeated_tensor_name() -> None:
    raw = b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {}}'
    refused(file_bytes(raw, 1), "names 'a' more than once")


@pytest.mark.parametrize("metadata", [[], {"k": 1}, "format"])
def test_metadata_that_is_not_a_string_map(metadata: object) -> None:
    refused(file_bytes({"__metadata__": metadata}, 0), "__metadata__ must map strings")


@pytest.mark.parametrize("value", [[], "F16", 3, None])
def test_entry_that_is_not_an_object(value: object) -> None:
    refused(file_bytes({"w": value}, 0), "tensor 'w'", "expected an object")


@pytest.mark.parametrize("key", ["dtype", "shape", "data_offsets"])
def test_entry_missing_a_field(key: str) -> None:
    bad = entry("U8", [1], 0, 1)
    del bad[key]
    refused(file_bytes({"w": bad}, 1), "tensor 'w'", f"missing {key}")


@pytest.mark.parametrize("dtype", ["F17", "f16", "", 16, None, "C64"])
def test_unknown_dtype(dtype: object) -> None:
    refused(file_bytes({"w": entry(dtype, [1], 0, 1)}, 1), "tensor 'w'", "unsupported dtype")


@pytest.mark.parametrize("shape", [[-1], [1.0], [True], ["2"], 2, None, [[1]]])
def test_bad_shape(shape: object) -> None:
    refused(file_bytes({"w": entry("U8", shape, 0, 1)}, 1), "tensor 'w'", "shape")


@pytest.mark.parametrize(
    "offsets", [[0], [0, 1, 2], [-1, 0], [0.0, 1.0], [0, True], "0,1", None, [0, "1"]]
)
def test_bad_data_offsets(offsets: object) -> None:
    bad = {"dtype": "U8", "shape": [1], "data_offsets": offsets}
    refused(file_bytes({"w": bad}, 1), "tensor 'w'", "data_offsets", "not a pair")


def test_data_offsets_that_end_before_they_begin() -> None:
    refused(file_bytes({"w": entry("U8", [0], 4, 2)}, 4), "tensor 'w'", "end before they begin")


@pytest.mark.parametrize(
    ("shape", "begin", "end"),
    [([2, 3], 0, 11), ([2, 3], 0, 13), ([], 0, 0), ([0], 0, 2), ([10**30], 0, 2)],
)
def test_shape_that_disagrees_with_the_byte_range(shape: list, begin: int, end: int) -> None:
    size = max(end, 13)
    refused(file_bytes({"w": entry("F16", shape, begin, end)}, size), "tensor 'w'", "takes")


def test_offsets_past_the_end_of_the_file() -> None:
    header = dict(GOOD, b=entry("F32", [2], 12, 20))
    refused(file_bytes(header, 16), "tensor 'b'", "past the 16 bytes of data")


def test_overlapping_tensors() -> None:
    header = {"a": entry("U8", [8], 0, 8), "b": entry("U8", [4], 6, 10)}
    refused(file_bytes(header, 10), "tensor 'b'", "overlap tensor 'a'")


def test_gap_between_tensors() -> None:
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 6, 10)}
    refused(file_bytes(header, 10), "tensor 'b'", "gap after byte 4")


def test_gap_before_the_first_tensor() -> None:
    refused(file_bytes({"a": entry("U8", [4], 2, 6)}, 6), "tensor 'a'", "gap after byte 0")


def test_bytes_after_the_last_tensor() -> None:
    refused(file_bytes(GOOD, 24), "the tensors end at byte 20", "24 bytes of data")


def test_messages_name_the_tensor_at_fault_among_many() -> None:
    header = {f"t{i}": entry("U8", [1], i, i + 1) for i in range(50)}
    header["t31"] = entry("U8", [2], 31, 32)
    message = refused(file_bytes(header, 50), "tensor 't31'")
    assert "t30" not in message and "t32" not in message
