"""QRESYNC's resync answers (RFC 7162 §3.2.5, §3.2.6): which UIDs a client that last knew
the folder at some modseq is told are gone, as ``VANISHED (EARLIER)``.

``vanished_earlier`` is the one place this is decided, for SELECT/EXAMINE (QRESYNC ...)
and UID FETCH (CHANGEDSINCE m VANISHED). No I/O beyond the index lookup.

Invariants (never a wrong answer, RFC 7162 §3.2.5.2 allows a generous one):
- Only UIDs in the client's set (known-uids, the UID FETCH set), below the UIDNEXT the
  view announced, and not listed by the session's view: a UID the view still lists is
  still there for the client (its expunge goes out as a plain VANISHED when the view
  syncs), and VANISHED (EARLIER) does not change the client's message count.
- Exact when the index has complete expunge records since the modseq
  (``FolderIndex.expunged_since``); otherwise every such UID that no longer exists,
  narrowed by the message sequence match data where the client gave it (§3.2.5.2).
"""

from __future__ import annotations

from collections.abc import Iterator

from . import uidranges
from .index import FolderIndex
from .mailbox import MailboxView
from .types import SequenceSet

__all__ = ["vanished_earlier", "matched_floor"]


def _numbers(seqs: SequenceSet) -> Iterator[int]:
    for lo, hi in seqs.spans(0):  # no "*" here (grammar), so the bound is unused
        yield from range(lo, hi + 1)


def matched_floor(view: MailboxView, seq_match: tuple[SequenceSet, SequenceSet]) -> int:
    """RFC 7162 §3.2.5.2: the highest UID up to which the client's sequence numbers still
    match (0 if none does). Where message n has the UID the client says it had, no UID
    at or below it can have been expunged since (numbers only shrink and new UIDs are
    higher), so only UIDs above it need be reported. The pairs are walked in ascending
    order and the walk stops at the first mismatch, as Dovecot does; a sequence number
    beyond EXISTS is a mismatch, so the walk is at most EXISTS steps, whatever the sets."""
    floor = 0
    for seq, uid in zip(_numbers(seq_match[0]), _numbers(seq_match[1])):
        if seq > view.exists or view.uids[seq - 1] != uid:
            break
        floor = uid
    return floor


def vanished_earlier(idx: FolderIndex, view: MailboxView, modseq: int, known: uidranges.Ranges,
                     seq_match: tuple[SequenceSet, SequenceSet] | None = None) -> uidranges.Ranges:
    """UIDs of ``known`` expunged after the state ``modseq`` names, to send as
    ``VANISHED (EARLIER)`` (see the module docstring)."""
    known = uidranges.clip(known, 1, view.uidnext - 1)
    exact = idx.expunged_since(view.uidvalidity, modseq)
    if exact is not None:
        candidates = uidranges.intersect(exact, known)
    else:  # RFC 7162 §3.2.5.2: every known UID that no longer exists
        floor = matched_floor(view, seq_match) if seq_match is not None else 0
        candidates = uidranges.clip(known, floor + 1, uidranges.MAX_UID)
    return uidranges.gaps(candidates, view.uids)
