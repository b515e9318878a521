"""THREAD's reading of Message-ID / References / In-Reply-To (``imap.thread.msg_ids``) and
the REFERENCES algorithm over what strangers put in those fields: loops, self-references,
10,000-id fields, chains thousands deep, many messages."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap.sort import SortItem
from mailstack.imap.thread import MAX_REFERENCES, msg_ids, render_threads, thread_references
from tests.hostile.bounds import SETTINGS, assert_size, bounded

T0 = datetime(2020, 1, 1, tzinfo=timezone.utc)

# near-valid: ids from a small pool (so they collide and loop), with specials and truncations
_ids = st.sampled_from(["<a@x>", "<b@x>", "<c@x>", "<a@x", "a@x>", "<>", "<@>", "<<a@x>", "<a\r\n @x>",
                        " ", "(c)", "<b@x>>", "<\u00e9@x>", "\x00"])
fields = st.lists(_ids, max_size=30).map("".join)


def _items(fields_per_message: list[tuple[str, str, str]]) -> list[SortItem]:
    return [SortItem(i + 1, i + 1, T0, 10, (("message-id", mid), ("references", refs), ("in-reply-to", irt)))
            for i, (mid, refs, irt) in enumerate(fields_per_message)]


def _numbers(text: str) -> list[int]:
    return sorted(int(n) for n in text.replace("(", " ").replace(")", " ").split())


@SETTINGS
@given(st.one_of(st.text(), fields))
def test_msg_ids_any_text(value: str) -> None:
    out = bounded(msg_ids, value)
    assert_size(sum(len(i) + 2 for i in out), len(value), 1)


@SETTINGS
@given(st.lists(st.tuples(fields, fields, fields), max_size=12))
def test_threading_any_headers(messages: list[tuple[str, str, str]]) -> None:
    items = _items(messages)
    out = bounded(lambda: render_threads(thread_references(items), lambda i: i.seq))
    assert _numbers(out) == list(range(1, len(items) + 1))  # every message once, nothing else


def test_ten_thousand_ids() -> None:
    value = " ".join(f"<id{i}@example.org>" for i in range(10_000))
    assert len(bounded(msg_ids, value)) == 10_000
    assert len(msg_ids(value, MAX_REFERENCES)) == MAX_REFERENCES
    assert bounded(msg_ids, "<" * 200_000) == []  # no ">": one pass, not one per "<"
    assert bounded(msg_ids, "<@" * 100_000 + ">") == ["@" + "<@" * 99_999]  # one id, "<" to ">"


def test_loops_and_self_references() -> None:
    ring = " ".join(f"<r{i}@x>" for i in range(2000))
    items = _items([("<r0@x>", ring + " <r0@x> " + ring, ""), ("<r1999@x>", "<r0@x> " + ring, ""),
                    ("<r500@x>", "<r500@x> <r500@x>", "<r500@x>")])
    out = bounded(lambda: render_threads(thread_references(items), lambda i: i.seq))
    assert _numbers(out) == [1, 2, 3]


def test_deep_chain_out_of_order() -> None:
    # 20,000 messages each replying to the one before, delivered newest first: no recursion
    n = 20_000
    items = [SortItem(k + 1, k + 1, T0, 10, (("message-id", f"<{m}@x>"), ("in-reply-to", f"<{m - 1}@x>")))
             for k, m in enumerate(range(n, 0, -1))]
    out = bounded(lambda: render_threads(thread_references(items), lambda i: i.seq), seconds=30)
    assert out.startswith(f"({n} {n - 1} ") and out.count("(") == 1


def test_loop_checks_are_bounded() -> None:
    # a thread 20,000 deep, then messages whose References alternate its deepest message
    # and its root: each link asks "is the root an ancestor of the deep one?", a walk of
    # 20,000 steps; unbounded that is 500 walks per message, 10^9 steps in all (minutes)
    depth = 20_000
    chain = [(f"<c{j}@x>", "", f"<c{j - 1}@x>" if j else "") for j in range(depth)]
    alternating = f"<c{depth - 1}@x> <c0@x> " * (MAX_REFERENCES // 2)
    items = _items(chain + [(f"<a{i}@x>", alternating, "") for i in range(100)])
    out = bounded(lambda: render_threads(thread_references(items), lambda i: i.seq), seconds=30)
    assert _numbers(out) == list(range(1, depth + 101))


def test_many_messages() -> None:
    items = [SortItem(i, i, T0, 10, (("message-id", f"<m{i}@x>"), ("references", f"<m{i // 2}@x> <m{i - 1}@x>"),
                                     ("subject", f"Re: topic {i % 100}")))
             for i in range(1, 100_001)]
    out = bounded(lambda: render_threads(thread_references(items), lambda i: i.seq), seconds=60)
    assert len(_numbers(out)) == 100_000
