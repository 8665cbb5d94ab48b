"""The demo's read-back: exact counts, with room only for the gateway's at-least-once re-sends among duplicates."""

from driftwatch.demo import counts_match


def test_counts_must_match_exactly_except_duplicates_within_the_resends():
    expected = {"inference accepted": 10, "duplicates": 3}
    assert counts_match(expected, {"inference accepted": 10, "duplicates": 3})
    assert not counts_match(expected, {"inference accepted": 11, "duplicates": 3}, resent=5)
    assert not counts_match(expected, {"inference accepted": 10, "duplicates": 6})
    assert counts_match(expected, {"inference accepted": 10, "duplicates": 6}, resent=3)
    assert not counts_match(expected, {"inference accepted": 10, "duplicates": 7}, resent=3)
    assert not counts_match(expected, {"inference accepted": 10, "duplicates": 2}, resent=3)
