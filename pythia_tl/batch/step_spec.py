"""Step specs (``steps``): which training steps a batch converts.

SPEC is ``all``, or a comma list of step numbers and inclusive ranges ``A-B`` (every step of the
schedule from A to B) or ``A-B:S`` (A, A+S, A+2S, ... up to B), spelled as ``--layers`` spells
its ranges; the older ``A:B`` and ``A:B:S`` mean the same. A range selects the steps of a
model's schedule that it covers; a step named on its own must be in the schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pythia_tl.errors import Param, UsageError
from pythia_tl.source.names import nearest_steps

_MAX_DIGITS = 18


@dataclass(frozen=True)
class StepRange:
    """``start-stop[:stride]``, both ends included."""

    start: int
    stop: int
    stride: int = 1

    def covers(self, step: int) -> bool:
        return self.start <= step <= self.stop and (step - self.start) % self.stride == 0

    def __str__(self) -> str:
        stride = f":{self.stride}" if self.stride != 1 else ""
        return f"{self.start}-{self.stop}{stride}"


@dataclass(frozen=True)
class StepSpec:
    """A parsed SPEC; no parts means ``all``."""

    parts: tuple[int | StepRange, ...] = ()

    @property
    def is_all(self) -> bool:
        return not self.parts

    def __str__(self) -> str:
        return ",".join(str(part) for part in self.parts) if self.parts else "all"

    def select(self, schedule: Sequence[int], model_name: str) -> list[int]:
        """The steps of ``schedule`` this SPEC asks for, in order.

        A step named on its own that the schedule lacks, or a range that covers none of it, is
        an error naming the model.
        """
        if self.is_all:
            return sorted(set(schedule))
        available = set(schedule)
        chosen: set[int] = set()
        for part in self.parts:
            if isinstance(part, int):
                if part not in available:
                    raise UsageError(
                        Param("steps"),
                        f": {model_name} has no checkpoint at step {part} (nearest: "
                        f"{' and '.join(map(str, nearest_steps(part, sorted(available))))}; see "
                        f"'pythia-tl checkpoints {model_name}')",
                    )
                chosen.add(part)
                continue
            covered = {step for step in available if part.covers(step)}
            if not covered:
                raise UsageError(
                    Param("steps"), f": range {part} covers no checkpoint of {model_name}"
                )
            chosen |= covered
        return sorted(chosen)


def parse_step_spec(text: str) -> StepSpec:
    """Parse ``all`` or a comma list of ``N``, ``A-B`` and ``A-B:S`` (or ``A:B``, ``A:B:S``)."""
    if text.strip().lower() == "all":
        return StepSpec()
    parts: list[int | StepRange] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise UsageError(
                Param("steps"), f" {text!r}: empty item; expected 'all' or e.g. 0,1,1000-5000"
            )
        first, dash, after = item.partition("-")
        fields = [first, *after.split(":")] if dash else item.split(":")
        if len(fields) > 3:
            raise UsageError(
                Param("steps"), f" {text!r}: {item!r} has more than three fields (A-B:S)"
            )
        numbers = [_step_number(field, item, text) for field in fields]
        if len(numbers) == 1:
            parts.append(numbers[0])
            continue
        start, stop, *rest = numbers
        stride = rest[0] if rest else 1
        if stop < start:
            raise UsageError(Param("steps"), f" {text!r}: range {item!r} ends before it starts")
        if stride == 0:
            raise UsageError(Param("steps"), f" {text!r}: range {item!r} has a stride of 0")
        parts.append(StepRange(start, stop, stride))
    return StepSpec(tuple(parts))


def _step_number(field: str, item: str, text: str) -> int:
    digits = field.strip()
    # More digits than any step has; also keeps int() from refusing thousands of them.
    if not (digits.isascii() and digits.isdigit()) or len(digits) > _MAX_DIGITS:
        raise UsageError(
            Param("steps"), f" {text!r}: {item!r} is not a step number or a range A-B[:S] of them"
        )
    return int(digits)
