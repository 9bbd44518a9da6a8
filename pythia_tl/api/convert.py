"""``pythia_tl.convert``: one checkpoint into a TransformerLens safetensors file.

The command line's ``convert`` calls it; its parameters are the flags' names, and its errors
name them (``Param``), which the command line spells as flags.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pythia_tl.mapping.selection import parse_selection
from pythia_tl.output.atomic import check_creatable, check_target, make_folder
from pythia_tl.processing import Processing

if TYPE_CHECKING:
    from pythia_tl.engine.convert import ConversionResult
    from pythia_tl.engine.options import ConvertOptions


def convert(
    source: str | Path,
    output: str | Path | None = None,
    *,
    step: int | None = None,
    revision: str | None = None,
    checkpoint_index: int | None = None,
    dtype: str = "auto",
    process: bool = False,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
    tensors: str | None = None,
    layers: str | None = None,
    overwrite: bool = False,
    allow_nonfinite: bool = False,
    cache_dir: str | Path | None = None,
    keep_downloads: bool = False,
    hash_output: bool = False,
    on_bytes: Callable[[int, int], None] | None = None,
) -> ConversionResult:
    """Convert ``source`` (a folder, a Hub repo id or a short name such as ``"pythia-70m"``)
    into a TransformerLens safetensors file, and return what was written.

    ``output``: the file, or a folder (an existing one, or a path ending in ``/``) to write the
    default name ``<model-name>[-<revision>].safetensors`` in; default: that name in the current
    folder. A missing folder is created, once the source is found. An existing file is replaced
    only with ``overwrite=True``, and is refused before anything is fetched. ``step``,
    ``revision`` or ``checkpoint_index`` (one of them) choose a Hub revision. ``dtype``: "auto"
    (the source's), "float32", "float16" or "bfloat16".
    ``process`` (or the four passes one by one): TransformerLens' weight processing.
    ``tensors``/``layers``: write only these keys (comma-separated globs) or layers (``"0-3,10"``);
    only the bytes they need are read. ``keep_downloads``: download the weights into the cache
    instead of streaming them. ``hash_output``: put the written file's sha256 in the result.
    ``on_bytes(n, total)`` is called for each ``n`` bytes written of ``total``.

    Raises the library's errors (``pythia_tl.errors``); each names the parameter at fault.
    """
    from pythia_tl.engine.options import ConvertOptions
    from pythia_tl.mapping.plan import check_dtype

    check_dtype(dtype)
    options = ConvertOptions(
        dtype=dtype,
        overwrite=overwrite,
        hash_output=hash_output,
        processing=Processing.choose(
            process=process,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
        ),
        selection=parse_selection(tensors, layers),
        allow_nonfinite=allow_nonfinite,
    )
    return convert_with(
        source,
        output,
        options,
        step=step,
        revision=revision,
        checkpoint_index=checkpoint_index,
        cache_dir=cache_dir,
        keep_downloads=keep_downloads,
        on_bytes=on_bytes,
    )


def convert_with(
    source: str | Path,
    output: str | Path | None,
    options: ConvertOptions,
    *,
    step: int | None = None,
    revision: str | None = None,
    checkpoint_index: int | None = None,
    cache_dir: str | Path | None = None,
    keep_downloads: bool = False,
    on_bytes: Callable[[int, int], None] | None = None,
) -> ConversionResult:
    """``convert`` with its output options already parsed (the command line's way in).

    A missing folder of ``output`` is created (once the source is found), whether ``output``
    names the folder (ending in ``/``) or a file in it."""
    text = None if output is None else os.fspath(output)
    into_folder = text is not None and (text.endswith(os.sep) or Path(text).is_dir())
    given = None if text is None else Path(text)
    # Before anything is downloaded, converted or imported (torch): a refusal is instant.
    if given is not None and not into_folder:
        if given.parent.is_dir():
            check_target(given, options.overwrite)
        else:
            check_creatable(given.parent)
    elif given is not None:
        check_creatable(given)

    from pythia_tl.engine.convert import convert as run_conversion
    from pythia_tl.engine.convert import default_output_name
    from pythia_tl.source import resolve_source

    resolved = resolve_source(
        os.fspath(source),
        revision=revision,
        step=step,
        cache_dir=None if cache_dir is None else Path(cache_dir),
        checkpoint_index=checkpoint_index,
        download=keep_downloads,
    )
    if given is None or into_folder:
        asked = any(x is not None for x in (revision, step, checkpoint_index))
        folder = given or Path()
        make_folder(folder)
        given = folder / default_output_name(resolved.provenance, asked)
        check_target(given, options.overwrite)
    elif not given.parent.is_dir():
        make_folder(given.parent)
        check_target(given, options.overwrite)
    return run_conversion(resolved, given, options, on_bytes=on_bytes)
