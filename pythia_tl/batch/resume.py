"""Whether an output already on disk is the one a batch would write, from its metadata alone.

An output is reused when it was written by pythia-tl from the same repository and commit with the
same options. "Same options" means the recorded ``processing`` steps and the recorded ``dtype``:
equal to an explicit ``dtype``; any, with ``dtype="auto"``. Auto keeps the source's dtype, which
the commit fixes, but an output made with an explicit dtype cannot be told apart from an auto one
without the source's dtype, i.e. without a download; so to go back from ``dtype="float32"`` to
the Hub's float16, ask for ``dtype="float16"``. The converter version is not compared: a new
release does not make finished outputs wrong, and redoing a suite for every release would make
reruns expensive. Files at other paths (the
writer's ``.<name>.pythia-tl-<pid>-<hex>.tmp`` left by a killed run) are never looked at.

The output path only ever holds complete files (the writer publishes by rename), so reading the
header is enough: safetensors refuses a file whose data does not match its header.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pythia_tl import CONVERTER_NAME
from pythia_tl.batch.dedupe import weights_key
from pythia_tl.engine.options import ConvertOptions
from pythia_tl.errors import OutputFileError
from pythia_tl.mapping.selection import EVERY_TENSOR, Selection
from pythia_tl.output.metadata import NONFINITE_KEY, read_output

if TYPE_CHECKING:
    from pythia_tl.hub.listing import RevisionListing

State = Literal["missing", "current", "other_commit", "unverified", "stale", "foreign"]


@dataclass(frozen=True)
class Requirements:
    """What an existing output must record to count as made with the same options."""

    source: str
    dtype: str
    processing: tuple[str, ...]
    selection: Selection = EVERY_TENSOR
    nonfinite: str = "refused"

    @classmethod
    def of(cls, repo_id: str, options: ConvertOptions) -> Requirements:
        nonfinite = "allowed" if options.allow_nonfinite else "refused"
        passes = tuple(options.processing.passes)
        return cls(repo_id, options.dtype, passes, options.selection, nonfinite)


@dataclass(frozen=True)
class ExistingOutput:
    """What is at an output path, judged against the requirements and the branch's commit.

    ``current``: same commit and options, keep it. ``unverified``: same options, but the
    branch's commit is unknown (the Hub cannot be reached and the cache does not know it).
    ``other_commit``: same options, another commit; it is still current if that commit's
    weights have the same sha256 as the branch's (a duplicate branch). ``stale``: other options
    or another repository: convert again over it. ``foreign``: not a pythia-tl output; left
    alone.
    """

    state: State
    reason: str = ""
    commit: str | None = None
    source_sha256: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    converter_version: str | None = None

    def has_the_weights_of(self, listing: RevisionListing) -> bool:
        """Whether this output, made from another commit, holds the weights of ``listing``'s
        (same sha256): then it is up to date."""
        key = weights_key(listing.repo_id, listing.weight_sha256)
        mine = weights_key(listing.repo_id, self.source_sha256)
        return self.state == "other_commit" and key is not None and key == mine


def judge_existing(path: Path, requirements: Requirements, commit: str | None) -> ExistingOutput:
    if not path.exists():
        return ExistingOutput("missing")
    try:
        info = read_output(path)
        source_sha256 = info.source_files
        processing = tuple(info.processing)
        selection = info.selection
    except OutputFileError as exc:
        return ExistingOutput("foreign", f"{exc}; move it away to convert this revision")
    metadata = info.metadata
    if metadata.get("converter") != CONVERTER_NAME:
        return ExistingOutput(
            "foreign", f"{path}: not written by pythia-tl; move it away to convert this revision"
        )
    recorded = ExistingOutput(
        "current",
        commit=metadata.get("commit") or None,
        source_sha256=source_sha256,
        bytes=info.size,
        converter_version=metadata.get("converter_version"),
    )
    if metadata.get("source") != requirements.source:
        return replace(recorded, state="stale", reason=f"made from {metadata.get('source')!r}")
    dtype = metadata.get("dtype")
    if requirements.dtype != "auto" and dtype != requirements.dtype:
        return replace(
            recorded, state="stale", reason=f"dtype {dtype}, asked for {requirements.dtype}"
        )
    if processing != requirements.processing:
        return replace(
            recorded,
            state="stale",
            reason=f"processing {list(processing)}, asked for {list(requirements.processing)}",
        )
    if selection.to_json() != requirements.selection.to_json():
        return replace(
            recorded,
            state="stale",
            reason=f"selection {selection.to_json()}, asked for {requirements.selection.to_json()}",
        )
    nonfinite = metadata.get(NONFINITE_KEY, "refused")
    if nonfinite != requirements.nonfinite:
        return replace(
            recorded,
            state="stale",
            reason=f"non-finite values {nonfinite}, asked for {requirements.nonfinite}",
        )
    if commit is None:
        return replace(recorded, state="unverified", reason="the branch's commit is unknown")
    if recorded.commit != commit:
        return replace(recorded, state="other_commit", reason=f"made from commit {recorded.commit}")
    return recorded
