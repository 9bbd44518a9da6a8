"""The metadata schema of a pythia-tl file, in one place: built, read, parsed and validated.

safetensors metadata maps strings to strings; structured values (``tl_config``,
``source_files``, ``processing``, and the optional ``tokenizer`` and ``selection``) are JSON inside
those strings; files written before an optional key existed lack it and still parse.
``build_metadata`` writes the schema, ``read_output`` reads a file's header (no tensor data),
``OutputFile`` gives the raw fields, and ``parse_metadata`` checks every field and gives a
``ConversionRecord``.

Two other records live here too, so that the schema has one home: an exported folder's
provenance (``export_provenance``, under ``PROVENANCE_KEY`` in its ``config.json`` and in its
``model.safetensors`` metadata) and a ``trace`` file's (``build_trace_metadata``/``read_trace``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from pythia_tl import CONVERTER_NAME, __version__
from pythia_tl.dtypes import BY_NAME, OUTPUT_DTYPE_NAMES, DType, dtype_name
from pythia_tl.errors import OutputFileError, SourceError, UsageError
from pythia_tl.hub.refs import COMMIT
from pythia_tl.mapping.selection import EVERY_TENSOR, Selection, parse_selection
from pythia_tl.mapping.tl_config import tl_config
from pythia_tl.processing.passes import NO_PROCESSING, TL_ORDER, Processing
from pythia_tl.source.config import SIZE_LIMITS, NeoXConfig

if TYPE_CHECKING:
    from pythia_tl.source.resolve import Provenance

REQUIRED_KEYS = (
    "format",
    "tl_config",
    "source",
    "revision",
    "commit",
    "source_files",
    "converter",
    "converter_version",
    "dtype",
    "processing",
)
# Optional keys. ``nonfinite``: files written before it existed refused non-finite values, as
# "refused" says. ``tokenizer``: where the tokenizer files are (source.tokenizer_files).
# ``selection``: present in a partial file only, holding some tensors or layers.
# ``source_sha256``: whether the sha256 in ``source_files`` were "computed" from the bytes read or
# "announced" by the Hub (a partial conversion from the Hub reads only byte ranges); files
# written before it existed were "announced" when partial and from the Hub, else "computed".
NONFINITE_KEY = "nonfinite"
NONFINITE_VALUES = ("refused", "allowed")
SHA256_KEY = "source_sha256"
SHA256_ORIGINS = ("computed", "announced")
OPTIONAL_KEYS = (NONFINITE_KEY, "tokenizer", "selection", SHA256_KEY)
JSON_KEYS = ("tl_config", "source_files", "processing", "tokenizer", "selection")
_POSITIVE_INTS = ("d_model", "d_head", "n_heads", "d_mlp", "n_layers", "n_ctx", "d_vocab")
_REPO_ID = re.compile(r"[^/]+/[^/]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def build_metadata(
    config: NeoXConfig,
    dtype: DType,
    provenance: Provenance,
    source_sha256: Mapping[str, str],
    processing: Processing = NO_PROCESSING,
    selection: Selection = EVERY_TENSOR,
    allow_nonfinite: bool = False,
    sha256_computed: bool = True,
) -> dict[str, str]:
    """The ``__metadata__`` of an output file (always valid UTF-8, see ``utf8``;
    ``selection`` only in a partial file's). ``sha256_computed``: whether ``source_sha256`` was
    hashed from the source's bytes (else announced by the Hub)."""
    cfg = tl_config(
        config, utf8(provenance.model_name), provenance.repo_id, processing.normalization_type
    )
    commit = provenance.commit or ""
    if commit and not COMMIT.fullmatch(commit):
        # Never written: our own verify would refuse the file.
        raise SourceError(f"{provenance.source}: commit {commit[:60]!r} is not 40 hex digits")
    optional = {}
    if provenance.tokenizer is not None:
        optional["tokenizer"] = json.dumps(provenance.tokenizer)
    if not selection.is_all:
        optional["selection"] = json.dumps(selection.to_json())
    return {
        "format": "pt",
        "tl_config": json.dumps(cfg),
        "source": utf8(provenance.source),
        "revision": utf8(provenance.revision or ""),
        "commit": commit,
        "source_files": json.dumps(dict(sorted(source_sha256.items()))),
        "converter": CONVERTER_NAME,
        "converter_version": __version__,
        "dtype": dtype.name,
        "processing": json.dumps(list(processing.passes)),
        NONFINITE_KEY: "allowed" if allow_nonfinite else "refused",
        SHA256_KEY: SHA256_ORIGINS[0] if sha256_computed else SHA256_ORIGINS[1],
        **optional,
    }


def utf8(text: str) -> str:
    """``text`` as valid UTF-8: a folder name's bytes that are not UTF-8 (which Python keeps as
    lone surrogates) are written as ``\\xNN`` escapes, which no reader of the file refuses."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class OutputFile:
    """A safetensors file's header: its metadata as stored, and its tensors' dtypes and shapes."""

    path: Path
    size: int
    metadata: dict[str, str]
    tensors: dict[str, tuple[str, list[int]]]

    @property
    def tl_config(self) -> dict[str, Any]:
        value: dict[str, Any] = self._json_field("tl_config", dict)
        return value

    @property
    def source_files(self) -> dict[str, Any]:
        value: dict[str, Any] = self._json_field("source_files", dict)
        return value

    @property
    def processing(self) -> list[Any]:
        value: list[Any] = self._json_field("processing", list)
        return value

    @property
    def selection(self) -> Selection:
        """The tensors a partial file was limited to (every tensor when it records none)."""
        recorded = self._optional_json_field("selection")
        if recorded is None:
            return EVERY_TENSOR
        tensors, layers = recorded.get("tensors") or [], recorded.get("layers")
        if not (
            isinstance(tensors, list)
            and all(isinstance(glob, str) for glob in tensors)
            and (layers is None or isinstance(layers, str))
        ):
            raise OutputFileError(f"{self.path}: metadata 'selection' is malformed")
        try:
            return parse_selection(",".join(tensors) if tensors else None, layers)
        except UsageError:
            raise OutputFileError(f"{self.path}: metadata 'selection' is malformed") from None

    @property
    def tokenizer(self) -> dict[str, Any] | None:
        """Where the tokenizer files are recorded to be (None: no record)."""
        return self._optional_json_field("tokenizer")

    @property
    def is_pythia_tl(self) -> bool:
        """Whether the metadata says pythia-tl wrote the file."""
        return self.metadata.get("converter") == CONVERTER_NAME

    def _optional_json_field(self, key: str) -> dict[str, Any] | None:
        if self.metadata.get(key) in (None, "", "null"):
            return None
        value: dict[str, Any] = self._json_field(key, dict)
        return value

    def _json_field(self, key: str, kind: type) -> Any:
        raw = self.metadata.get(key)
        if raw is None:
            raise OutputFileError(
                f"{self.path}: metadata has no {key!r}; not written by pythia-tl?"
            )
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):  # ValueError: also numbers of thousands of digits
            raise OutputFileError(f"{self.path}: metadata {key!r} is not valid JSON") from None
        if not isinstance(value, kind):
            raise OutputFileError(f"{self.path}: metadata {key!r} is not a JSON {kind.__name__}")
        return value

    def to_json(self) -> dict[str, Any]:
        metadata: dict[str, Any] = dict(self.metadata)
        for key in JSON_KEYS:
            if key in metadata:
                metadata[key] = self._json_field(key, object)
        return {
            "file": str(self.path),
            "bytes": self.size,
            "metadata": metadata,
            "tensors": {
                name: {"dtype": dtype_name(d), "shape": s} for name, (d, s) in self.tensors.items()
            },
        }


def read_output(path: Path) -> OutputFile:
    """The header of a safetensors file (no tensor data is read)."""
    # safetensors' own reader checks the header; with the numpy framework it needs no torch.
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        from pythia_tl.batch.summary import why_not_written

        raise OutputFileError(f"{path}: no such file{why_not_written(path)}")
    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {}
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                piece = handle.get_slice(name)
                tensors[name] = (piece.get_dtype(), list(piece.get_shape()))
    except SafetensorError as exc:
        raise OutputFileError(f"{path}: not a valid safetensors file ({exc})") from None
    return OutputFile(path, path.stat().st_size, metadata, tensors)


@dataclass(frozen=True)
class ConversionRecord:
    """A file's metadata, parsed and checked: what it was converted from, and how."""

    tl_config: dict[str, Any]
    config: NeoXConfig
    dtype: DType
    source: str
    revision: str
    commit: str
    source_files: dict[str, str]
    processing: Processing
    selection: Selection = EVERY_TENSOR
    nonfinite_allowed: bool = False
    # Whether the conversion hashed the source's files (else it recorded the Hub's sha256).
    sha256_computed: bool = True

    @property
    def from_folder(self) -> bool:
        """Whether the source was a local folder (recorded as an absolute path)."""
        return Path(self.source).is_absolute()


def parse_metadata(info: OutputFile) -> ConversionRecord:
    """The metadata, checked key by key; OutputFileError names the first key at fault."""
    meta = info.metadata
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise OutputFileError(f"metadata lacks {', '.join(repr(k) for k in missing)}")
    _expect(meta["format"] == "pt", "format", meta["format"], "'pt'")
    _expect(meta["converter"] == CONVERTER_NAME, "converter", meta["converter"], CONVERTER_NAME)
    _expect(bool(meta["converter_version"]), "converter_version", "", "a version")
    dtype = meta["dtype"]
    _expect(dtype in OUTPUT_DTYPE_NAMES, "dtype", dtype, f"one of {', '.join(OUTPUT_DTYPE_NAMES)}")
    source, revision, commit = meta["source"], meta["revision"], meta["commit"]
    _expect(bool(source), "source", source, "a Hub repo id or a folder")
    if Path(source).is_absolute():
        _expect(commit == "" and revision == "", "commit", commit, "empty for a folder source")
    else:
        _expect(bool(_REPO_ID.fullmatch(source)), "source", source, "a repo id 'owner/name'")
        _expect(bool(COMMIT.fullmatch(commit)), "commit", commit, "40 hex digits")
        _expect(bool(revision), "revision", revision, "the revision converted")
    processing = _processing(info.processing)
    cfg = info.tl_config
    config = _config_from_tl(cfg)
    model_name, tokenizer = cfg.get("model_name"), cfg.get("tokenizer_name")
    if not isinstance(model_name, str):
        raise _unexpected("tl_config model_name", model_name, "text")
    if tokenizer is not None and not isinstance(tokenizer, str):
        raise _unexpected("tl_config tokenizer_name", tokenizer, "text or null")
    # The naming fields follow from the source: its repository (or folder) name, and the repo id
    # as the tokenizer (none for a folder).
    expected_name = source.rstrip("/").rsplit("/", 1)[-1]
    _expect(model_name == expected_name, "tl_config model_name", model_name, repr(expected_name))
    expected_tokenizer = None if Path(source).is_absolute() else source
    _expect(
        tokenizer == expected_tokenizer,
        "tl_config tokenizer_name",
        tokenizer,
        repr(expected_tokenizer),
    )
    nonfinite = meta.get(NONFINITE_KEY, "refused")
    _expect(nonfinite in NONFINITE_VALUES, NONFINITE_KEY, nonfinite, " or ".join(NONFINITE_VALUES))
    selection = info.selection
    default_origin = "announced" if commit and not selection.is_all else "computed"
    origin = meta.get(SHA256_KEY, default_origin)
    _expect(origin in SHA256_ORIGINS, SHA256_KEY, origin, " or ".join(SHA256_ORIGINS))
    rederived = tl_config(config, model_name, tokenizer, processing.normalization_type)
    for key in sorted(rederived.keys() | cfg.keys()):
        if key not in cfg:
            raise OutputFileError(f"metadata tl_config lacks {key!r}")
        if key not in rederived:
            raise OutputFileError(f"metadata tl_config has an unexpected field {key!r}")
        _expect(cfg[key] == rederived[key], f"tl_config {key}", cfg[key], repr(rederived[key]))
    return ConversionRecord(
        tl_config=cfg,
        config=config,
        dtype=BY_NAME[dtype],
        source=source,
        revision=revision,
        commit=commit,
        source_files=_source_files(info.source_files),
        processing=processing,
        selection=selection,
        nonfinite_allowed=nonfinite == "allowed",
        sha256_computed=origin == "computed",
    )


def _config_from_tl(cfg: dict[str, Any]) -> NeoXConfig:
    """The model's sizes as pythia-tl's config type, from a recorded ``tl_config``."""
    for key in _POSITIVE_INTS:
        # Bounded as in config.json, so that a file cannot make load or export plan without end
        # (d_head divides d_model).
        value, high = cfg.get(key), SIZE_LIMITS.get(key, SIZE_LIMITS["d_model"])
        in_range = _is_int(value) and 1 <= value <= high
        _expect(in_range, f"tl_config {key}", value, f"an integer in [1, {high}]")
    d_model, n_heads, d_head = cfg["d_model"], cfg["n_heads"], cfg["d_head"]
    _expect(d_head * n_heads == d_model, "tl_config d_head", d_head, "d_model / n_heads")
    rotary_dim = cfg.get("rotary_dim")
    if not (_is_int(rotary_dim) and 0 <= rotary_dim <= d_head and rotary_dim % 2 == 0):
        raise _unexpected("tl_config rotary_dim", rotary_dim, "an even integer in [0, d_head]")
    for key in ("eps", "rotary_base"):
        value = cfg.get(key)
        _expect(_positive_float(value), f"tl_config {key}", value, "a positive finite number")
    parallel = cfg.get("parallel_attn_mlp")
    _expect(isinstance(parallel, bool), "tl_config parallel_attn_mlp", parallel, "true or false")
    _expect(cfg.get("act_fn") == "gelu", "tl_config act_fn", cfg.get("act_fn"), "'gelu'")
    return NeoXConfig(
        n_layers=cfg["n_layers"],
        d_model=d_model,
        n_heads=n_heads,
        d_mlp=cfg["d_mlp"],
        d_vocab=cfg["d_vocab"],
        n_ctx=cfg["n_ctx"],
        eps=cfg["eps"],
        rotary_pct=rotary_dim / d_head,
        rotary_base=cfg["rotary_base"],
        parallel_residual=bool(parallel),
        act_fn="gelu",
        dtype=None,
    )


def _processing(passes: list[Any]) -> Processing:
    for name in passes:
        _expect(name in TL_ORDER, "processing", name, f"steps among {', '.join(TL_ORDER)}")
    processing = Processing(**dict.fromkeys(passes, True))
    _expect(
        list(processing.passes) == passes, "processing", passes, "each step once, in TL's order"
    )
    return processing


def _source_files(files: dict[str, Any]) -> dict[str, str]:
    _expect(bool(files), "source_files", files, "at least one weight file")
    for name, digest in files.items():
        plain = name not in ("", ".", "..") and Path(name).name == name
        _expect(plain, "source_files", name, "plain file names")
        _expect(
            isinstance(digest, str) and bool(_SHA256.fullmatch(digest)),
            f"source_files[{name!r}]",
            digest,
            "a sha256 (64 hex digits)",
        )
    return files


def check_tokenizer_record(record: dict[str, Any] | None) -> None:
    """OutputFileError unless the ``tokenizer`` record is absent or as pythia-tl writes it: an
    absolute ``folder``, or a ``repo_id`` 'owner/name' with a 40-hex ``revision``, and a list of
    plain file names as ``files``. Its names reach paths and huggingface_hub: checked first."""
    if record is None:
        return
    files = record.get("files", [])
    plain = isinstance(files, list) and all(
        isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..")
        for name in files
    )
    _expect(plain, "tokenizer files", files, "a list of plain file names")
    if "folder" in record:
        folder = record["folder"]
        ok = isinstance(folder, str) and Path(folder).is_absolute()
        _expect(ok, "tokenizer folder", folder, "an absolute path")
        return
    repo_id, revision = record.get("repo_id"), record.get("revision")
    ok = (
        isinstance(repo_id, str)
        and bool(_REPO_ID.fullmatch(repo_id))
        and not {".", ".."} & set(repo_id.split("/"))
    )
    _expect(ok, "tokenizer repo_id", repo_id, "'owner/name'")
    good_commit = isinstance(revision, str) and bool(COMMIT.fullmatch(revision))
    _expect(good_commit, "tokenizer revision", revision, "a commit (40 hex digits)")


def _expect(condition: bool, key: str, value: object, expected: str) -> None:
    if not condition:
        raise _unexpected(key, value, expected)


def _unexpected(key: str, value: object, expected: str) -> OutputFileError:
    return OutputFileError(f"metadata {key} is {_short(value)}, expected {expected}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_float(value: object) -> bool:
    """A JSON number that is positive and finite as a float (an integer with 400 digits is not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value)) and value > 0
    except OverflowError:
        return False


# --- an exported folder's provenance ------------------------------------------------------------

# The field of ours in an exported config.json, and the metadata key of its model.safetensors.
PROVENANCE_KEY = "pythia_tl"


@dataclass(frozen=True)
class ExportProvenance:
    """Where an exported folder's weights came from: the converted file's source, revision and
    commit (empty for a folder source), its step (None off a step branch) and versions."""

    source: str
    revision: str
    commit: str
    step: int | None
    converter_version: str
    exported_by: str


def export_provenance(info: OutputFile, record: ConversionRecord) -> dict[str, Any]:
    """What an export records of the file ``info`` it was made from (JSON)."""
    from pythia_tl.source.schedule import STEP_BRANCH

    match = STEP_BRANCH.fullmatch(record.revision)
    return {
        "converter": CONVERTER_NAME,
        "source": record.source,
        "revision": record.revision,
        "commit": record.commit,
        "step": int(match[1]) if match else None,
        "converter_version": info.metadata.get("converter_version", ""),
        "exported_by": __version__,
    }


def parse_provenance(value: object, where: str) -> ExportProvenance:
    """An export's recorded provenance, checked; OutputFileError names ``where`` it was read."""
    if not isinstance(value, dict) or value.get("converter") != CONVERTER_NAME:
        raise OutputFileError(f"{where}: {PROVENANCE_KEY!r} is not a pythia-tl export record")
    texts = {key: value.get(key) for key in ("source", "revision", "commit", "converter_version")}
    step = value.get("step")
    well_formed = all(isinstance(text, str) for text in texts.values()) and (
        step is None or (_is_int(step) and 0 <= step < 10**9)
    )
    if not well_formed or not texts["source"]:
        raise OutputFileError(f"{where}: {PROVENANCE_KEY!r} is malformed")
    commit = str(texts["commit"])
    if commit and not COMMIT.fullmatch(commit):
        raise _unexpected(f"{PROVENANCE_KEY} commit", commit, "40 hex digits")
    return ExportProvenance(
        source=str(texts["source"]),
        revision=str(texts["revision"]),
        commit=commit,
        step=step,
        converter_version=str(texts["converter_version"]),
        exported_by=str(value.get("exported_by") or ""),
    )


# --- a trace file: some keys stacked over training steps ----------------------------------------

# The metadata key that makes a file a trace; its value is JSON (see build_trace_metadata).
TRACE_KEY = "trace"
# What a trace keeps of its steps' files: the fields every step shares.
_SHARED_KEYS = ("source", "tl_config", "dtype", "processing", "selection", NONFINITE_KEY)


@dataclass(frozen=True)
class TraceRecord:
    """A trace file's steps, in the order its tensors stack them (axis 0), with the revision
    and commit each was read at and its source files' sha256."""

    source: str
    steps: tuple[int, ...]
    revisions: tuple[str, ...]
    commits: tuple[str, ...]
    source_files: tuple[dict[str, str], ...]


def build_trace_metadata(
    parts: list[OutputFile], steps: list[int], revisions: list[str], commits: list[str]
) -> dict[str, str]:
    """The metadata of a trace stacking ``parts`` (one pythia-tl file per step of ``steps``,
    in that order, read at ``revisions`` and ``commits``), which must agree on everything but
    their revision and commit."""
    first = parts[0].metadata
    for part in parts[1:]:
        for key in _SHARED_KEYS:
            if part.metadata.get(key) != first.get(key):
                raise OutputFileError(
                    f"{part.path}: metadata {key!r} differs from {parts[0].path}'s; the steps "
                    "of a trace must be converted alike"
                )
    trace = {
        "steps": steps,
        "revisions": revisions,
        "commits": commits,
        "source_files": [part.source_files for part in parts],
    }
    shared = {key: first[key] for key in _SHARED_KEYS if key in first}
    return {
        "format": "pt",
        "converter": CONVERTER_NAME,
        "converter_version": __version__,
        **shared,
        TRACE_KEY: json.dumps(trace),
    }


def read_trace(path: Path) -> TraceRecord:
    """A trace file's record; OutputFileError when ``path`` is not a trace pythia-tl wrote."""
    info = read_output(path)
    if not info.is_pythia_tl or TRACE_KEY not in info.metadata:
        raise OutputFileError(f"{path}: not a pythia-tl trace file (no {TRACE_KEY!r} metadata)")
    trace: dict[str, Any] = info._json_field(TRACE_KEY, dict)
    steps, revisions = trace.get("steps"), trace.get("revisions")
    commits, files = trace.get("commits"), trace.get("source_files")
    if not (
        isinstance(steps, list)
        and isinstance(revisions, list)
        and isinstance(commits, list)
        and isinstance(files, list)
        and len(steps) == len(revisions) == len(commits) == len(files)
    ):
        raise OutputFileError(f"{path}: metadata {TRACE_KEY!r} is malformed")
    if not all(_is_int(step) for step in steps) or not all(
        isinstance(text, str) for text in (*revisions, *commits)
    ):
        raise OutputFileError(f"{path}: metadata {TRACE_KEY!r} is malformed")
    return TraceRecord(
        source=info.metadata.get("source", ""),
        steps=tuple(steps),
        revisions=tuple(revisions),
        commits=tuple(commits),
        source_files=tuple(dict(f) if isinstance(f, dict) else {} for f in files),
    )
