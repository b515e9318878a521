"""``uidranges``: the UID-set arithmetic behind VANISHED (RFC 7162 §3.2.10), as tables of
cases, plus a property check against plain Python sets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap import uidranges as ur


@pytest.mark.parametrize(("uids", "text"), [
    ([], ""),
    ([5], "5"),
    ([1, 2, 3, 5], "1:3,5"),
    ([1, 1, 2, 4, 4, 5], "1:2,4:5"),  # duplicates are harmless
    ([405, 407, 410, 425], "405,407,410,425"),  # RFC 7162 §3.2.7's example
])
def test_from_sorted_and_render(uids: list[int], text: str) -> None:
    ranges = ur.from_sorted(uids)
    assert ur.render(ranges) == text
    assert ur.parse(text) == ranges


@pytest.mark.parametrize("bad", ["x", "1:", "0", "5:3", "1,,2", "4294967296", "*"])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        ur.parse(bad)


def test_gaps_intersect_clip() -> None:
    # RFC 7162 §3.2.6's example: UIDs 300:500 asked, these still exist
    present = [*range(311, 405), 406, *range(408, 411), *range(412, 501)]
    missing = ur.gaps([(300, 500)], present)
    assert ur.render(missing) == "300:310,405,407,411"
    assert ur.intersect(missing, [(305, 406)]) == [(305, 310), (405, 405)]
    assert ur.clip([(1, 4294967295)], 1, 10) == [(1, 10)]
    assert ur.clip([(1, 5)], 6, 5) == []
    # a client may name every UID there is: cost is in ranges, not UIDs
    assert ur.gaps([(1, ur.MAX_UID)], [1, 3]) == [(2, 2), (4, ur.MAX_UID)]


def test_vanished_lines_are_split_and_each_valid() -> None:
    ranges = [(n, n) for n in range(1, 40_000, 2)]  # 20,000 single UIDs: no range compresses them
    lines = ur.vanished_responses(ranges, earlier=True)
    assert len(lines) > 1
    got: list[tuple[int, int]] = []
    for line in lines:
        assert len(line) <= ur.MAX_LINE and line.startswith(b"* VANISHED (EARLIER) ") and line.endswith(b"\r\n")
        got.extend(ur.parse(line[len(b"* VANISHED (EARLIER) "):-2].decode()))
    assert got == ranges
    assert ur.vanished_responses([]) == []
    assert ur.vanished_responses([(2, 4)]) == [b"* VANISHED 2:4\r\n"]


uid_sets = st.sets(st.integers(1, 200), max_size=60)


@given(uid_sets, uid_sets, uid_sets)
def test_matches_python_sets(a: set[int], b: set[int], present: set[int]) -> None:
    ra, rb = ur.from_sorted(sorted(a)), ur.from_sorted(sorted(b))

    def expand(r: ur.Ranges) -> set[int]:
        return {u for lo, hi in r for u in range(lo, hi + 1)}

    assert expand(ur.intersect(ra, rb)) == a & b
    assert expand(ur.gaps(ra, sorted(present))) == a - present
    assert ur.normalize(ra + rb) == ur.from_sorted(sorted(a | b))
    assert ur.parse(ur.render(ra)) == ra
