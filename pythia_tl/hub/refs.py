"""Names checked before they reach huggingface_hub or a path: repository ids, revisions and
commits, whether the user or the Hub gave them.

huggingface_hub writes ``refs/<revision>`` under its cache and folders named after the repository
and the commit, so a name is data only once it cannot climb out of its folder: ``Org/name`` with
the Hub's own characters, a branch or tag name git would accept (``git check-ref-format``), a
commit of 40 hexadecimal digits.
"""

from __future__ import annotations

import re

from pythia_tl.errors import MessagePart, Param, SourceError, UsageError

COMMIT = re.compile(r"[0-9a-f]{40}")
# The Hub's repository names: letters, digits, '-', '_', '.', neither end a '-' or '.'.
_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_MAX_REVISION = 255
# What git refuses anywhere in a ref name: controls, space, DEL and ~ ^ : ? * [ \.
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def repo_id_problem(repo_id: str) -> str | None:
    """Why ``repo_id`` is not a Hub repository id ``Org/name`` (None when it is one)."""
    parts = repo_id.split("/")
    if len(parts) != 2:
        return "expected Org/name, one slash"
    for part in parts:
        if not _REPO_PART.fullmatch(part) or ".." in part or "--" in part:
            return (
                f"{part!r} is not a Hub name (letters, digits, '-', '_', '.'; neither end a "
                "'-' or '.'; no '..' or '--')"
            )
    return None


def revision_problem(revision: str) -> str | None:
    """Why ``revision`` is not a commit or a branch or tag name git accepts (None when it is)."""
    if COMMIT.fullmatch(revision):
        return None
    if not revision or len(revision) > _MAX_REVISION:
        return f"expected a branch, tag or commit name of 1 to {_MAX_REVISION} characters"
    if _REF_FORBIDDEN.search(revision) or not revision.isascii():
        return "expected a name without spaces, control or non-ASCII characters or ~^:?*[\\"
    components = revision.split("/")
    if (
        revision == "@"
        or "@{" in revision
        or ".." in revision
        or revision.endswith(".")
        or any(not c or c.startswith(".") or c.endswith(".lock") for c in components)
        or revision.startswith("-")
    ):
        return (
            "not a name git accepts (no '..', '@{', empty or dot-led component, leading '-', "
            "or ending '.' or '.lock')"
        )
    return None


def checked_repo_id(repo_id: str, param: Param | None = None) -> str:
    """``repo_id``, or a UsageError naming ``param`` (the model argument when None)."""
    problem = repo_id_problem(repo_id)
    if problem is None:
        return repo_id
    about: list[MessagePart] = [param] if param is not None else ["model"]
    raise UsageError(*about, f" {repo_id!r}: {problem}")


def checked_revision(revision: str, param: Param | None = None) -> str:
    """``revision`` from the user, or a UsageError naming ``param`` (``revision`` when None)."""
    problem = revision_problem(revision)
    if problem is None:
        return revision
    raise UsageError(param or Param("revision"), f" {revision!r}: {problem}")


def checked_commit(commit: object, where: str) -> str:
    """A commit id the Hub answered, or a SourceError naming ``where`` it came from."""
    if isinstance(commit, str) and COMMIT.fullmatch(commit):
        return commit
    shown = repr(commit)[:60]
    raise SourceError(f"{where}: the Hub answered commit {shown}, expected 40 hexadecimal digits")
