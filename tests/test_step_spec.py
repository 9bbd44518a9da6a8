"""``--steps SPEC``: parsing and selection, with property tests against a direct definition."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pythia_tl.batch.step_spec import StepRange, StepSpec, parse_step_spec
from pythia_tl.cli.errors import in_flags
from pythia_tl.errors import UsageError
from pythia_tl.source.names import training_steps

SCHEDULE = training_steps()
V0_SCHEDULE = training_steps(v0=True)

steps = st.integers(min_value=0, max_value=150_000)


@st.composite
def step_ranges(draw: st.DrawFn) -> StepRange:
    start = draw(steps)
    stop = draw(st.integers(min_value=start, max_value=start + 150_000))
    return StepRange(start, stop, draw(st.integers(min_value=1, max_value=20_000)))


parts = st.lists(st.one_of(steps, step_ranges()), min_size=1, max_size=6)


def expected_selection(spec_parts: list[int | StepRange], schedule: list[int]) -> list[int]:
    """The definition, written out: a step is chosen if named, or if a range reaches it."""
    chosen = set()
    for part in spec_parts:
        if isinstance(part, int):
            chosen.add(part)
        else:
            chosen.update(range(part.start, part.stop + 1, part.stride))
    return sorted(chosen & set(schedule))


def test_the_issue_example_on_the_pythia_schedule() -> None:
    spec = parse_step_spec("0,1,2,4,1000-143000:10000")
    expected = [0, 1, 2, 4, *range(1000, 143001, 10000)]
    assert spec.select(SCHEDULE, "pythia-70m") == expected
    assert str(spec) == "0,1,2,4,1000-143000:10000"


def test_the_old_colon_ranges_mean_the_same() -> None:
    assert parse_step_spec("0,1000:143000:10000") == parse_step_spec("0,1000-143000:10000")
    assert parse_step_spec("1000:5000") == parse_step_spec("1000-5000")
    assert parse_step_spec("1000-5000").select(SCHEDULE, "pythia-70m") == list(
        range(1000, 5001, 1000)
    )


def test_all_is_the_whole_schedule() -> None:
    assert parse_step_spec("all").select(SCHEDULE, "pythia-70m") == SCHEDULE
    assert parse_step_spec(" ALL ").is_all
    assert len(parse_step_spec("all").select(V0_SCHEDULE, "pythia-70m-v0")) == 143


@given(parts)
def test_formatting_then_parsing_gives_the_same_spec(spec_parts: list[int | StepRange]) -> None:
    spec = StepSpec(tuple(spec_parts))
    assert parse_step_spec(str(spec)) == spec


@given(parts, st.sampled_from([SCHEDULE, V0_SCHEDULE]))
@example([0, StepRange(1000, 143000, 10000)], SCHEDULE)
def test_selection_is_the_schedule_intersected_with_the_spec(
    spec_parts: list[int | StepRange], schedule: list[int]
) -> None:
    spec = StepSpec(tuple(spec_parts))
    unknown = [p for p in spec_parts if isinstance(p, int) and p not in schedule]
    empty = [
        p for p in spec_parts if isinstance(p, StepRange) and not expected_selection([p], schedule)
    ]
    if unknown or empty:
        with pytest.raises(UsageError, match=r"^steps: "):
            spec.select(schedule, "pythia-70m")
    else:
        assert spec.select(schedule, "pythia-70m") == expected_selection(spec_parts, schedule)


@given(st.text(max_size=30))
@example("1,,2")
@example("5:4")
@example("0:10:0")
@example("1:2:3:4")
@example("²")
@example("-1")
def test_any_text_parses_or_is_a_usage_error_naming_the_flag(text: str) -> None:
    try:
        spec = parse_step_spec(text)
    except UsageError as exc:
        assert str(exc).startswith(f"steps {text!r}: ")
        assert in_flags(exc).startswith(f"--steps {text!r}: ")
        assert "\n" not in str(exc)
    else:
        assert parse_step_spec(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty item"),
        ("1,,2", "empty item"),
        ("5:4", "range '5:4' ends before it starts"),
        ("5-4", "range '5-4' ends before it starts"),
        ("0:10:0", "range '0:10:0' has a stride of 0"),
        ("1:2:3:4", "more than three fields"),
        ("-1", "'-1' is not a step number"),
        ("step1000", "'step1000' is not a step number"),
    ],
)
def test_malformed_specs_are_named(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"steps {text!r}: ")) as raised:
        parse_step_spec(text)
    assert message in str(raised.value)


def test_a_step_outside_the_schedule_is_named_with_the_model() -> None:
    with pytest.raises(UsageError, match="pythia-70m-v0 has no checkpoint at step 512"):
        parse_step_spec("512,1000").select(V0_SCHEDULE, "pythia-70m-v0")
    with pytest.raises(UsageError, match=r"step 1500 \(nearest: 1000 and 2000; see"):
        parse_step_spec("1500").select(SCHEDULE, "pythia-70m")
    with pytest.raises(UsageError, match="range 3-3 covers no checkpoint of pythia-70m"):
        parse_step_spec("3:3").select(SCHEDULE, "pythia-70m")
