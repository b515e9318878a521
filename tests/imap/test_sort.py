"""RFC 5256 §2.1 base subject and §3 sort order (``imap.sort``), without a server."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mailstack.imap.sort import MAX_SUBJECT, SortItem, base_subject, sort_items


@pytest.mark.parametrize(("subject", "base"), [
    ("Hello", "HELLO"),
    ("Re: hello", "HELLO"),                       # §2.1 step 3: subj-refwd
    ("RE:  Fwd:   fw: hello", "HELLO"),           # repeated, any case, WSP collapsed (step 1)
    ("Re [list]: hello", "HELLO"),                # a blob inside subj-refwd
    ("[list] Re: hello", "HELLO"),                # *subj-blob before subj-refwd
    ("[list] hello", "HELLO"),                    # step 4: a blob prefix alone
    ("[list]", "[LIST]"),                         # step 4: not when nothing would remain
    ("[a] [b]", "[B]"),
    ("hello (fwd)", "HELLO"),                     # step 2: subj-trailer
    ("hello (FWD)  (fwd) ", "HELLO"),
    ("[Fwd: Re: hello]", "HELLO"),                # step 6: subj-fwd, then back to step 2
    ("re: [fwd: [fwd: re: [fwd: babylon]]]", "BABYLON"),
    ("Ad: Re: x", "AD: RE: X"),                   # "Ad:" is not a subj-refwd
    ("Review", "REVIEW"),                         # "re" without ":" stays
    ("\tRe:\r\n hello\t world", "HELLO WORLD"),
    ("", ""),
])
def test_base_subject(subject: str, base: str) -> None:
    assert base_subject(subject) == base


def test_base_subject_is_linear_on_hostile_input() -> None:
    # many blobs / nested [fwd: would be quadratic done naively; the input is capped
    assert base_subject("[a]" * 600 + "x") == "X"
    assert base_subject("[fwd:" * 300 + "x" + "]" * 300) == "X"
    assert base_subject("[a]" * 100_000 + "x").startswith("[A")  # cut at MAX_SUBJECT
    assert base_subject("[fwd:" * 50_000 + "x" + "]" * 50_000).startswith("[FWD:")
    assert len(base_subject("y" * (MAX_SUBJECT * 10))) == MAX_SUBJECT


def _item(seq: int, subject: str, when: int) -> SortItem:
    return SortItem(seq, seq, datetime.fromtimestamp(when, timezone.utc), seq * 10, (("subject", subject),))


def test_ties_stay_in_sequence_order_even_reversed() -> None:
    # RFC 5256 §3: ties are broken by sequence number; REVERSE reverses only its own key
    items = [_item(1, "b", 5), _item(2, "a", 5), _item(3, "b", 1), _item(4, "a", 9)]
    assert [m.seq for m in sort_items(items, [(False, "SUBJECT")])] == [2, 4, 1, 3]
    assert [m.seq for m in sort_items(items, [(True, "SUBJECT")])] == [1, 3, 2, 4]
    assert [m.seq for m in sort_items(items, [(False, "SUBJECT"), (True, "ARRIVAL")])] == [4, 2, 1, 3]
    assert [m.seq for m in sort_items(items, [(True, "ARRIVAL")])] == [4, 1, 2, 3]
