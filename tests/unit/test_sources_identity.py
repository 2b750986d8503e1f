"""Frame-id gap tracker: which camera ids never arrived, bounded per gap, wraps and resets."""

from __future__ import annotations

import pytest

from lineguard.sources.identity import FrameIdTracker, IdGap


def test_consecutive_ids_and_the_first_id_have_no_gap() -> None:
    t = FrameIdTracker()
    assert t.expected() is None
    assert [t.advance(i) for i in (7, 8, 9)] == [IdGap(), IdGap(), IdGap()]
    assert t.expected() == 10


def test_a_forward_jump_answers_every_missing_id_in_order() -> None:
    t = FrameIdTracker()
    t.advance(1)
    gap = t.advance(5)
    assert gap.answered == (2, 3, 4) and gap.excess == 0 and gap.missing == 3 and not gap.reset


def test_a_large_gap_answers_the_newest_ids_and_counts_the_excess() -> None:
    t = FrameIdTracker(max_gap_failsafes=3)
    t.advance(10)
    gap = t.advance(1010)
    assert gap.answered == (1007, 1008, 1009) and gap.excess == 996 and gap.missing == 999


def test_zero_bound_answers_nothing_but_counts_everything() -> None:
    t = FrameIdTracker(max_gap_failsafes=0)
    t.advance(1)
    assert t.advance(4) == IdGap(answered=(), excess=2)


@pytest.mark.parametrize(
    ("last", "new", "answered"), [(65535, 1, ()), (65534, 2, (65535, 1)), (65533, 1, (65534, 65535))]
)
def test_16_bit_block_id_wrap_is_a_gap_not_a_reset(last: int, new: int, answered: tuple[int, ...]) -> None:
    t = FrameIdTracker()
    t.advance(last)
    gap = t.advance(new)
    assert gap.answered == answered and not gap.reset


@pytest.mark.parametrize(("last", "new"), [(5000, 1), (3, 3), (70000, 2), (65535, 100)])
def test_backwards_or_repeated_ids_are_a_counter_reset(last: int, new: int) -> None:
    t = FrameIdTracker(max_gap_failsafes=64)
    t.advance(last)
    gap = t.advance(new)
    assert gap.reset and gap.missing == 0
    assert t.advance(new + 1) == IdGap()  # the new id is the baseline


def test_reset_forgets_and_start_at_makes_the_first_id_known() -> None:
    t = FrameIdTracker()
    t.advance(40)
    t.reset()
    assert t.advance(3) == IdGap()
    t.start_at(0)
    assert t.advance(2).answered == (0, 1)


def test_negative_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_gap_failsafes"):
        FrameIdTracker(max_gap_failsafes=-1)
