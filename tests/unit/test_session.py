"""The connection decisions that need no I/O: recovery outcome and the catch-up merge (05 §8, §8.5)."""

from hypothesis import given
from hypothesis import strategies as st

from uniws.engine.base import Publication
from uniws.protocol import SubHint
from uniws.session import catch_up, recovery_outcome


def pubs(*offsets):
    return [Publication(b"1", offset) for offset in offsets]


def test_recovered_when_history_covers_everything_after_the_hint():
    assert recovery_outcome(SubHint(True, 3, "ep"), 6, "ep", pubs(4, 5, 6)) == (True, 6)


def test_not_recovered_when_history_starts_after_the_first_missed():
    assert recovery_outcome(SubHint(True, 3, "ep"), 6, "ep", pubs(5, 6)) == (False, 6)


def test_not_recovered_when_the_limit_cut_the_end():
    # client_recovery_max_publication_limit: the client is told where the publications stop
    assert recovery_outcome(SubHint(True, 3, "ep"), 9, "ep", pubs(4, 5)) == (False, 9)


def test_nothing_missed_is_recovered():
    assert recovery_outcome(SubHint(True, 6, "ep"), 6, "ep", []) == (True, 6)


def test_another_epoch_is_never_recovered():
    assert recovery_outcome(SubHint(True, 3, "old"), 6, "new", []) == (False, 6)


def test_an_empty_hint_epoch_accepts_the_stream_epoch():
    assert recovery_outcome(SubHint(True, 2, ""), 3, "ep", pubs(3)) == (True, 3)


def test_catch_up_skips_what_the_client_has_and_delivers_the_rest_in_order():
    buffered = [(p, "ep") for p in pubs(4, 5, 6, 7)]
    delivered, offset = catch_up("ep", 5, buffered)
    assert [p.offset for p in delivered] == [6, 7] and offset == 7


def test_catch_up_passes_unpositioned_publications():
    delivered, offset = catch_up("ep", 5, [(Publication(b"x", 0), "")])
    assert [p.data for p in delivered] == [b"x"] and offset == 5


def test_catch_up_refuses_a_gap_or_another_epoch():
    assert catch_up("ep", 5, [(p, "ep") for p in pubs(7)]) is None
    assert catch_up("ep", 5, [(p, "other") for p in pubs(6)]) is None


@given(start=st.integers(0, 50), arrived=st.lists(st.integers(1, 80), max_size=30))
def test_catch_up_either_delivers_a_contiguous_run_or_refuses(start, arrived):
    buffered = [(Publication(b"1", offset), "ep") for offset in arrived]
    merged = catch_up("ep", start, buffered)
    if merged is None:
        return
    delivered, offset = merged
    offsets = [p.offset for p in delivered]
    assert offsets == list(range(start + 1, offset + 1))
    assert all(o <= offset for o in arrived)          # nothing beyond the new position was dropped
