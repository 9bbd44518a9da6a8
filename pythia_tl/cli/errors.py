"""Library errors in the command line's terms: each parameter named, spelled as its flag."""

from __future__ import annotations

from pythia_tl.errors import Param, PythiaTLError

# Parameters whose flag is not ``--`` + the name with dashes.
_FLAGS: dict[tuple[str, object], str] = {
    ("overwrite", True): "--force",
    ("check_source", False): "--no-source",
    ("logits", True): "--logits",
    ("source", None): "SOURCE",
    ("models", None): "MODEL",
    ("steps", "all"): "--steps all",
}


def flag(param: Param) -> str:
    return _FLAGS.get((param.name, param.value), "--" + param.name.replace("_", "-"))


def in_flags(error: PythiaTLError) -> str:
    return error.describe(flag)
