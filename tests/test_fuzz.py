"""Fuzzing the parsers of untrusted input with hypothesis, on a bounded budget.

Whatever the bytes, the safetensors header parser and ``open_checkpoint`` (headers, index files)
either return something consistent with the file or raise CheckpointError: never another
exception. Examples are small, so each test takes a few seconds.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TinyCheckpoints
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pythia_tl.dtypes import BY_SAFETENSORS as DTYPES
from pythia_tl.engine.convert import convert
from pythia_tl.errors import CheckpointError
from pythia_tl.formats.safetensors import (
    LENGTH_BYTES,
    SafetensorsHeader,
    parse_header,
)
from pythia_tl.output.metadata import OutputFile, read_output
from pythia_tl.source import resolve_source
from pythia_tl.source.checkpoint import Checkpoint, open_checkpoint
from pythia_tl.verify.metadata import check_metadata, expected_tensors

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,  # leave nothing behind in the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Through files on disk: fewer examples, the pure parser above takes the bulk.
FUZZ_FILES = settings(FUZZ, max_examples=100)

# --- strategies ---------------------------------------------------------------------------

# Sizes around the edges a parser gets wrong: zero, small, 2**31/2**32/2**63/2**64 and past.
sizes = st.one_of(
    st.integers(0, 16),
    st.integers(-3, 2**70),
    st.sampled_from(
        [2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**64 + 1, 10**400]
    ),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True), sizes, st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
dtype_names = st.one_of(st.sampled_from([*DTYPES, "F8_E4M3", "U16", "C64"]), st.text(max_size=4))
shapes = st.one_of(
    st.lists(sizes, max_size=5),
    # Thousands of huge dimensions: a size whose computation must stay bounded.
    st.lists(st.sampled_from([2**62, 2**64 + 1]), min_size=300, max_size=3000),
)
offsets = st.lists(sizes, min_size=2, max_size=2)
# Mostly well-typed entries, so that the checks behind the type checks get exercised too.
entries = st.one_of(
    st.fixed_dictionaries(
        {"dtype": st.sampled_from(list(DTYPES)), "shape": shapes, "data_offsets": offsets}
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "dtype": st.one_of(dtype_names, json_scalars),
            "shape": st.one_of(shapes, json_values),
            "data_offsets": st.one_of(offsets, json_values),
        },
    ),
)
headers = st.dictionaries(
    st.one_of(st.text(max_size=8), st.just("__metadata__")),
    st.one_of(
        entries, entries, json_values, st.dictionaries(st.text(max_size=4), st.text(max_size=4))
    ),
    max_size=5,
)


def _encode(header: object) -> bytes:
    raw = json.dumps(header).encode()
    return raw + b" " * (-len(raw) % 8)


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    """Whole files: random or structured headers, a right or wrong length, some data."""
    kind = draw(st.sampled_from(["random bytes", "structured", "valid then mutated"]))
    if kind == "random bytes":
        return draw(st.binary(max_size=256))
    raw = _encode(draw(headers if kind == "structured" else _valid_headers()))
    length = draw(st.one_of(st.just(len(raw)), sizes.filter(lambda n: 0 <= n < 2**64)))
    data = draw(st.binary(max_size=64))
    blob = bytearray(length.to_bytes(8, "little") + raw + data)
    for _ in range(draw(st.integers(0, 4))):
        if not blob:
            break
        at = draw(st.integers(0, len(blob) - 1))
        operation = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if operation == "flip":
            blob[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "delete":
            del blob[at]
        elif operation == "insert":
            blob[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del blob[at:]
    return bytes(blob)


@st.composite
def _valid_headers(draw: st.DrawFn) -> dict[str, object]:
    """A header that tiles its data exactly (its data is appended by the caller's length)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for index in range(draw(st.integers(0, 3))):
        dtype = draw(st.sampled_from(["F32", "F16", "BF16", "U8"]))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        header[f"t{index}"] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    return header


# --- properties ---------------------------------------------------------------------------


def assert_consistent(header: SafetensorsHeader, file_size: int) -> None:
    """What a caller relies on: every byte range lies in the file and matches its shape."""
    assert LENGTH_BYTES <= header.data_start <= file_size
    position = 0
    for tensor in sorted(header.tensors, key=lambda t: (t.begin, t.end)):
        assert tensor.begin == position
        assert all(isinstance(size, int) and size >= 0 for size in tensor.shape)
        assert tensor.end - tensor.begin == math.prod(tensor.shape) * tensor.dtype.itemsize
        position = tensor.end
    assert header.data_start + position == file_size
    assert len({t.name for t in header.tensors}) == len(header.tensors)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in header.metadata.items())


@FUZZ
@given(safetensors_files())
def test_the_header_parser_accepts_only_consistent_headers(blob: bytes) -> None:
    try:
        header = parse_header(blob, len(blob), "fuzzed.safetensors")
    except CheckpointError as exc:
        assert str(exc).startswith("fuzzed.safetensors: ")
        return
    assert_consistent(header, len(blob))


@FUZZ
@given(headers, st.binary(max_size=64))
def test_the_header_parser_checks_well_framed_headers(header: object, data: bytes) -> None:
    raw = _encode(header)
    blob = len(raw).to_bytes(8, "little") + raw + data
    try:
        parsed = parse_header(blob, len(blob), "fuzzed.safetensors")
    except CheckpointError:
        return
    assert_consistent(parsed, len(blob))


@FUZZ
@given(safetensors_files(), st.integers(-8, 64))
def test_the_header_parser_does_not_trust_the_file_size_it_is_told(
    blob: bytes, size_change: int
) -> None:
    size = max(0, len(blob) + size_change)
    try:
        header = parse_header(blob, size, "fuzzed.safetensors")
    except CheckpointError:
        return
    assert_consistent(header, size)


@pytest.fixture(scope="module")
def scratch(tiny_checkpoints: TinyCheckpoints) -> Iterator[Path]:
    """A folder for one checkpoint at a time (hypothesis reruns the test body in one test)."""
    with tempfile.TemporaryDirectory(prefix="pythia-tl-fuzz-") as folder:
        yield Path(folder)


def assert_checkpoint_consistent(checkpoint: Checkpoint, folder: Path) -> None:
    root = folder.resolve()
    for file in checkpoint.files:
        assert file.resolve().is_relative_to(root)
        assert file.resolve().is_file()
    for info in checkpoint.tensors.values():
        assert info.file in checkpoint.files
        assert all(isinstance(size, int) and size >= 0 for size in info.shape)


@FUZZ_FILES
@given(blob=safetensors_files())
def test_open_checkpoint_on_fuzzed_weights(
    blob: bytes, scratch: Path, tiny_checkpoints: TinyCheckpoints
) -> None:
    folder = scratch / "weights"
    folder.mkdir(exist_ok=True)
    shutil.copy(tiny_checkpoints["safetensors"] / "config.json", folder / "config.json")
    (folder / "model.safetensors").write_bytes(blob)
    try:
        checkpoint = open_checkpoint(folder)
    except CheckpointError:
        return
    assert_checkpoint_consistent(checkpoint, folder)


shard_names = st.one_of(
    st.sampled_from(
        ["../x.safetensors", "/etc/hostname", "..", ".", "", "a\0b", "config.json", "sub"]
    ),
    st.text(max_size=12),
)


@st.composite
def indexes(draw: st.DrawFn, real: dict[str, object]) -> object:
    """Random JSON, or the real index with entries re-pointed, added or removed."""
    if draw(st.booleans()):
        return draw(json_values)
    index = json.loads(json.dumps(real))
    weight_map = index["weight_map"]
    shards = sorted(set(weight_map.values()))
    for _ in range(draw(st.integers(0, 3))):
        operation = draw(st.sampled_from(["repoint", "add", "remove", "replace map"]))
        keys = sorted(weight_map)
        if operation == "repoint" and keys:
            weight_map[draw(st.sampled_from(keys))] = draw(
                st.one_of(st.sampled_from(shards), shard_names, json_scalars)
            )
        elif operation == "add":
            weight_map[draw(st.text(max_size=12))] = draw(
                st.one_of(st.sampled_from(shards), shard_names)
            )
        elif operation == "remove" and keys:
            del weight_map[draw(st.sampled_from(keys))]
        elif operation == "replace map":
            index["weight_map"] = weight_map = draw(json_values)
            if not isinstance(weight_map, dict):
                break
    return index


@FUZZ
@given(data=st.data())
def test_open_checkpoint_on_fuzzed_indexes(
    data: st.DataObject, scratch: Path, tiny_checkpoints: TinyCheckpoints
) -> None:
    folder = scratch / "index"
    if not folder.exists():
        shutil.copytree(tiny_checkpoints["safetensors-sharded"], folder)
        (folder / "sub").mkdir()
    real = json.loads(
        (tiny_checkpoints["safetensors-sharded"] / "model.safetensors.index.json").read_text()
    )
    index = data.draw(indexes(real))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    try:
        checkpoint = open_checkpoint(folder)
    except CheckpointError:
        return
    assert_checkpoint_consistent(checkpoint, folder)
    assert isinstance(index, dict)
    mapped = index["weight_map"]
    # Every tensor the index maps is where it says, and only the shards it names are read.
    assert all(checkpoint.tensors[name].file.name == shard for name, shard in mapped.items())
    assert {file.name for file in checkpoint.files} == set(mapped.values())


@FUZZ
@given(raw=st.binary(max_size=128))
def test_open_checkpoint_on_an_index_of_random_bytes(
    raw: bytes, scratch: Path, tiny_checkpoints: TinyCheckpoints
) -> None:
    folder = scratch / "raw-index"
    if not folder.exists():
        shutil.copytree(tiny_checkpoints["safetensors-sharded"], folder)
    (folder / "model.safetensors.index.json").write_bytes(raw)
    with pytest.raises(CheckpointError):
        open_checkpoint(folder)


# --- the metadata of a file handed to verify ----------------------------------------------


@pytest.fixture(scope="module")
def sound_output(tiny_checkpoints: TinyCheckpoints, scratch: Path) -> OutputFile:
    out = scratch / "sound.safetensors"
    convert(resolve_source(str(tiny_checkpoints["safetensors"])), out)
    return read_output(out)


@st.composite
def metadata_variants(draw: st.DrawFn, sound: dict[str, str]) -> dict[str, str]:
    """The sound metadata with keys dropped, values replaced, or tl_config fields changed."""
    metadata = dict(sound)
    cfg = json.loads(metadata["tl_config"])
    for _ in range(draw(st.integers(1, 3))):
        operation = draw(st.sampled_from(["tl_config field", "value", "drop"]))
        key = draw(st.sampled_from(sorted(metadata)))
        if operation == "tl_config field":
            cfg[draw(st.sampled_from([*sorted(cfg), "extra"]))] = draw(json_values)
        elif operation == "value":
            metadata[key] = draw(st.one_of(st.text(max_size=12), json_values.map(json.dumps)))
        else:
            del metadata[key]
    if "tl_config" in metadata and metadata["tl_config"] == sound["tl_config"]:
        metadata["tl_config"] = json.dumps(cfg)
    return metadata


@FUZZ
@given(data=st.data())
def test_the_metadata_check_reports_instead_of_raising(
    data: st.DataObject, sound_output: OutputFile
) -> None:
    metadata = data.draw(metadata_variants(sound_output.metadata))
    info = replace(sound_output, metadata=metadata)
    check, recorded = check_metadata(info)
    if check.status == "ok":
        assert recorded is not None
        assert {k: tuple(s) for k, (_, s) in info.tensors.items()} == expected_tensors(recorded)
    else:
        assert recorded is None and "\n" not in check.detail
