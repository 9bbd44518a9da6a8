"""Which files hold a checkpoint's weights: the layouts pythia-tl reads, and index files.

Kept apart from ``checkpoint`` (which opens weights and needs torch) so that listing a Hub
revision needs no torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pythia_tl.errors import CheckpointError
from pythia_tl.small_files import NotASmallFile, read_small_file

Format = Literal["safetensors", "bin"]

# Far above any real checkpoint (pythia-12b's index is about 40 kB and names 3 shards).
MAX_INDEX_BYTES = 16 << 20
MAX_SHARDS = 1024

# (format, single file, index file) in order of preference.
LAYOUTS: tuple[tuple[Format, str, str], ...] = (
    ("safetensors", "model.safetensors", "model.safetensors.index.json"),
    ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json"),
)


def is_layout_name(name: str) -> bool:
    """Whether a checkpoint folder is read by a file of this name: config.json, a layout's single
    or index file, or one of its shards (``model-00001-of-00003.safetensors``)."""
    if name == "config.json" or any(name in (single, index) for _, single, index in LAYOUTS):
        return True
    for _, single, _ in LAYOUTS:
        stem, _, suffix = single.rpartition(".")
        shard = re.fullmatch(rf"{re.escape(stem)}-\d+-of-\d+\.{re.escape(suffix)}", name)
        if shard is not None:
            return True
    return False


def expected_weight_files() -> str:
    """The weight file names a checkpoint may have, for messages when it has none."""
    return ", ".join(name for _, single, index in LAYOUTS for name in (single, index))


def weight_files_for(filenames: set[str]) -> tuple[Format, list[str]] | None:
    """Which files of a listing hold the weights (without their shards): the preferred layout's
    single file or index file, or None when no layout is present."""
    for fmt, single, index in LAYOUTS:
        if index in filenames:
            return fmt, [index]
        if single in filenames:
            return fmt, [single]
    return None


def load_weight_map(path: Path) -> dict[str, str]:
    try:
        index = json.loads(read_small_file(path, MAX_INDEX_BYTES).decode("utf-8"))
    except NotASmallFile as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON index ({exc})") from None
    except ValueError:  # an integer of thousands of digits: Python refuses to convert it
        raise CheckpointError(f"{path}: not a readable JSON index (a number is too long)") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: expected a non-empty 'weight_map' object")
    for name, shard in weight_map.items():
        # '.' and '..' pass the name test but name the folder itself or its parent.
        if (
            not isinstance(shard, str)
            or shard in ("", ".", "..")
            or Path(shard).name != shard
            or "\x00" in shard
        ):
            raise CheckpointError(
                f"{path}: weight_map[{name!r}] is {shard!r}, expected a file name in the "
                "checkpoint folder"
            )
    return weight_map
