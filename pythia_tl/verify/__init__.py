"""``verify``: prove that a converted file is sound and is what the conversion makes of its source.

Four checks, in order, each needing the ones before it to pass:

* ``integrity``: the safetensors header is valid and every tensor is readable, float and finite;
* ``metadata``: every key is present and well formed, and the tensors' keys, shapes and dtype are
  those the Pythia table and the recorded processing give for ``tl_config``;
* ``source``: re-running the recorded conversion on the source gives the same tensors (see
  ``compare``) and the source's files have the recorded sha256 (hashed again when the source is
  read whole; a partial file from the Hub is compared with the sha256 the Hub announces, and the
  check says so);
* ``logits`` (on request): transformers' model of the source and a TransformerLens forward pass
  over the file agree on log-probabilities. transformers reads files: a Hub source's weights are
  downloaded into the huggingface_hub cache for it (as ``keep_downloads`` does).

A source that cannot be had here and now (offline, unreachable, not cached) skips the checks
that need it, with the reason and what makes them possible; it is no evidence against the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pythia_tl.errors import (
    MessagePart,
    OutputFileError,
    Param,
    PythiaTLError,
    SourceUnavailable,
    UsageError,
)
from pythia_tl.source import ResolvedSource
from pythia_tl.verify.against_source import SourceRequest, check_against_source, locate_source
from pythia_tl.verify.integrity import check_integrity
from pythia_tl.verify.logits import check_logits, require_transformers
from pythia_tl.verify.metadata import check_metadata
from pythia_tl.verify.report import CHECK_NAMES, Check, VerificationFailed, VerifyReport


@dataclass(frozen=True)
class VerifyOptions:
    """``source``: SOURCE as on the command line (None: the one the metadata records), with the
    revision or step to take it at; ``check_source`` False skips the comparison with the source;
    ``logits`` adds the log-probability comparison (needs transformers)."""

    source: str | None = None
    revision: str | None = None
    step: int | None = None
    cache_dir: Path | None = None
    check_source: bool = True
    # TransformerLens' checkpoint_index: an index into the model's checkpoints (-1 the last).
    checkpoint_index: int | None = None
    logits: bool = False


def verify_file(
    path: Path,
    options: VerifyOptions = VerifyOptions(),
    on_bytes: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Run every check on ``path``; a check that cannot run is reported as skipped, with why.

    Raises UsageError for contradictory options and OutputFileError when ``path`` is not a file;
    anything wrong with the file itself is a failed check in the report.
    """
    _check_options(options)
    if not path.is_file():
        raise OutputFileError(f"{path}: no such file")
    passes = 2 if options.check_source else 1
    total = path.stat().st_size * passes

    def advance(n: int) -> None:
        if on_bytes is not None:
            on_bytes(n, total)

    integrity, info = check_integrity(path, advance)
    checks = [integrity]
    if integrity.status != "ok" or info is None:
        return _finish(path, checks, "needs a file that passes the integrity check")
    metadata, recorded = check_metadata(info)
    checks.append(metadata)
    if recorded is None:
        return _finish(path, checks, "needs complete, consistent metadata")
    if not options.check_source:
        checks.append(Check.skipped("source", "not asked for (", Param("check_source", False), ")"))
        return _finish(path, checks, "not asked for (", Param("logits", True), ")")
    source: ResolvedSource | None = None
    try:
        source = locate_source(recorded, _request(options), download=options.logits)
    except UsageError:
        raise
    except SourceUnavailable as exc:
        why = ("cannot read the source here: ", *exc.parts, "; ", *_making_it_possible(path))
        checks.append(Check.skipped("source", *why))
        if options.logits:
            checks.append(Check.skipped("logits", *why))
        return _finish(path, checks, "not asked for (", Param("logits", True), ")")
    except PythiaTLError as exc:
        checks.append(Check.failed("source", "cannot open the source: ", *exc.parts))
    else:
        checks.append(check_against_source(path, info, recorded, source, advance))
    if not options.logits:
        checks.append(Check.skipped("logits", "not asked for (", Param("logits", True), ")"))
    elif source is None:
        checks.append(Check.skipped("logits", "needs the source"))
    else:
        checks.append(check_logits(path, recorded, info.tensors, source.checkpoint.folder))
    return VerifyReport(path, tuple(checks))


def _check_options(options: VerifyOptions) -> None:
    chosen = (options.revision, options.step, options.checkpoint_index)
    if options.source is None and any(value is not None for value in chosen):
        raise UsageError(
            Param("revision"),
            ", ",
            Param("step"),
            " and ",
            Param("checkpoint_index"),
            " select a revision of ",
            Param("source"),
            "; without it the commit recorded in the file is used",
        )
    if not options.check_source and options.source is not None:
        raise UsageError(
            Param("check_source", False),
            " contradicts ",
            Param("source"),
            ": give one or the other",
        )
    if not options.check_source and options.logits:
        raise UsageError(
            Param("logits", True),
            " runs the source model: it cannot be combined with ",
            Param("check_source", False),
        )
    if options.logits:
        require_transformers()


def _making_it_possible(path: Path) -> tuple[MessagePart, ...]:
    return (
        "verify again with the Hub reachable and offline mode off, or give the source's folder as ",
        Param("source"),
        f" (pythia-tl verify {path} FOLDER)",
    )


def _request(options: VerifyOptions) -> SourceRequest:
    return SourceRequest(
        options.source, options.revision, options.step, options.cache_dir, options.checkpoint_index
    )


def _finish(path: Path, checks: list[Check], *why: MessagePart) -> VerifyReport:
    done = {check.name for check in checks}
    for name in CHECK_NAMES:
        if name not in done:
            checks.append(Check.skipped(name, *why))
    return VerifyReport(path, tuple(checks))


__all__ = ["Check", "VerificationFailed", "VerifyOptions", "VerifyReport", "verify_file"]
