"""RFC 5256 §4 THREAD algorithms and §5 rendering (``imap.thread``), without a server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mailstack.imap.sort import SortItem, base_subject_info
from mailstack.imap.thread import msg_ids, render_threads, thread_orderedsubject, thread_references

T0 = datetime(2000, 3, 5, tzinfo=timezone.utc)


def item(seq: int, minute: int | None = None, **fields: str) -> SortItem:
    """Message ``seq``, received at T0 + ``minute`` (default: ``seq``) minutes, no Date:."""
    when = T0 + timedelta(minutes=seq if minute is None else minute)
    headers = tuple((k.replace("_", "-"), v) for k, v in fields.items())
    return SortItem(seq, seq * 10, when, 100, headers)


def refs(items: list[SortItem]) -> str:
    return render_threads(thread_references(items), lambda i: i.seq)


@pytest.mark.parametrize(("value", "ids"), [
    ("<a@b>", ["a@b"]),
    ("  <a@b>  (comment) <c@d>", ["a@b", "c@d"]),
    ("<a\r\n @b>", ["a@b"]),                   # folded inside an id
    ("<no-at-sign> <x@y>", ["x@y"]),          # an id needs an "@" (Dovecot)
    ("<<x@y>", ["<x@y"]),                     # "<" to the next ">"
    ("<x@y", []),                              # unterminated
    ("", []),
])
def test_msg_ids(value: str, ids: list[str]) -> None:
    assert msg_ids(value) == ids


def test_msg_ids_keeps_the_last() -> None:
    value = " ".join(f"<{i}@x>" for i in range(10))
    assert msg_ids(value, 3) == ["7@x", "8@x", "9@x"]


@pytest.mark.parametrize(("subject", "base", "reply"), [
    ("hello", "HELLO", False),
    ("Re: hello", "HELLO", True),
    ("hello (fwd)", "HELLO", True),
    ("[Fwd: hello]", "HELLO", True),
    ("[list] hello", "HELLO", False),          # a blob alone is not a reply
    ("Ad: Re: x", "AD: RE: X", False),
])
def test_base_subject_reply_flag(subject: str, base: str, reply: bool) -> None:
    assert base_subject_info(subject) == (base, reply)


def test_rfc5256_section5_example_tree() -> None:
    # RFC 5256 §5: "(2)(3 6 (4 23)(44 7 96))"; the other messages are not in the search result
    m = {
        2: item(2, message_id="<2@x>", subject="two"),
        3: item(3, message_id="<3@x>", subject="three"),
        6: item(6, message_id="<6@x>", references="<3@x>", subject="Re: three"),
        4: item(4, 7, message_id="<4@x>", references="<3@x> <6@x>", subject="Re: three"),
        23: item(23, message_id="<23@x>", references="<3@x> <6@x> <4@x>", subject="Re: three"),
        44: item(44, message_id="<44@x>", references="<3@x> <6@x>", subject="Re: three"),
        7: item(7, 45, message_id="<7@x>", references="<3@x> <6@x> <44@x>", subject="Re: three"),
        96: item(96, message_id="<96@x>", in_reply_to="<7@x>", subject="Re: three"),
    }
    assert refs([m[k] for k in sorted(m)]) == "(2)(3 6 (4 23)(44 7 96))"


def test_rfc5256_section5_dummy_parent() -> None:
    # RFC 5256 §5: "((3)(5))": 3 and 5 are children of a message that is not there
    items = [item(3, message_id="<3@x>", references="<gone@x>"), item(5, message_id="<5@x>",
                                                                       references="<gone@x>")]
    assert refs(items) == "((3)(5))"


def test_no_messages() -> None:
    assert refs([]) == ""


def test_duplicate_message_id_gets_its_own_node() -> None:
    # RFC 5256 §4 step 1.A (imaptest thread7): the duplicate is a sibling, not lost
    items = [item(1, message_id="<a@b>"), item(2, message_id="<b@b>", references="<a@b>"),
             item(3, message_id="<c@b>", references="<b@b>"), item(4, message_id="<b@b>", references="<a@b>")]
    assert refs(items) == "(1 (2 3)(4))"


def test_reference_loop_breaks_the_older_link() -> None:
    # imaptest "thread": b refs a, c; c refs b: the message's own parent link wins, the loop is not made
    items = [item(1, 120, message_id="<a@b>"), item(2, 0, message_id="<b@b>", references="<a@b> <c@b>"),
             item(3, 60, message_id="<c@b>", references="<b@b>")]
    assert refs(items) == "(3 2)(1)"


def test_self_and_circular_references_terminate() -> None:
    items = [item(1, message_id="<a@x>", references="<a@x> <a@x>"),
             item(2, message_id="<b@x>", references="<c@x> <b@x> <c@x>"),
             item(3, message_id="<c@x>", references="<b@x> <c@x> <b@x>")]
    out = refs(items)
    assert sorted(int(n) for n in out.replace("(", " ").replace(")", " ").split()) == [1, 2, 3]


def test_subject_merge_reply_goes_under_original() -> None:
    # §4 step 6: same base subject at the top level: the reply becomes a child of the original
    items = [item(1, message_id="<1@x>", subject="foo"), item(2, message_id="<2@x>", subject="Re: foo"),
             item(3, message_id="<3@x>", subject="bar")]
    assert refs(items) == "(1 2)(3)"


def test_subject_merge_two_originals_get_a_dummy() -> None:
    items = [item(1, message_id="<1@x>", subject="foo"), item(2, message_id="<2@x>", subject="foo")]
    assert refs(items) == "((1)(2))"


def test_empty_subjects_are_not_merged() -> None:
    assert refs([item(1), item(2)]) == "(1)(2)"


def test_sent_date_orders_siblings_then_sequence() -> None:
    # §2.2: Date: header when valid, else INTERNALDATE; ties by sequence number
    items = [item(1, message_id="<r@x>"),
             item(2, 5, message_id="<b@x>", in_reply_to="<r@x>", date="Sun, 5 Mar 2000 00:09:00 +0000"),
             item(3, 9, message_id="<c@x>", in_reply_to="<r@x>", date="Sun, 5 Mar 2000 00:03:00 +0000"),
             item(4, 2, message_id="<d@x>", in_reply_to="<r@x>"),
             item(5, 2, message_id="<e@x>", in_reply_to="<r@x>", date="not a date")]
    assert refs(items) == "(1 (4)(5)(3)(2))"


def test_orderedsubject() -> None:
    # RFC 5256 §4 ORDEREDSUBJECT: by base subject, then date; the first of each is the parent
    items = [item(1, 3, subject="b"), item(2, 1, subject="Re: a"), item(3, 2, subject="a"),
             item(4, 4, subject="Re: b"), item(5, 0, subject="c"), item(6, 9, subject="Fwd: a")]
    out = render_threads(thread_orderedsubject(items), lambda i: i.uid)
    assert out == "(50)(20 (30)(60))(10 40)"


def test_deep_chain_without_recursion() -> None:
    # 5,000 deep, children seen before their parents: no RecursionError, one thread
    items = [item(k + 1, message_id=f"<{n}@x>", in_reply_to=f"<{n - 1}@x>")
             for k, n in enumerate(range(5000, 0, -1))]
    out = refs(items)
    assert out.startswith("(5000 4999 ") and out.endswith(" 2 1)")
