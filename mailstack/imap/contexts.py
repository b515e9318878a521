"""Search contexts (RFC 5267 §4): SEARCH RETURN (UPDATE) results the server keeps up to
date, and PARTIAL (§4.4) windows of a result; no I/O.

A context lives on the selected mailbox's view (``MailboxView.contexts``, by the tag of
the SEARCH that made it) until CANCELUPDATE or until the mailbox is closed. After each
command the session compares each context with the mailbox and tells the client what
entered and what left the result, as Dovecot 2.3 does (imap-sync.c):
``* ESEARCH (TAG "t") [UID] REMOVEFROM (0 set) ADDTO (0 set)``, position 0 since SEARCH
results have no order of their own (§4.3.2); messages expunged from the result are
announced before the EXPUNGE responses (their sequence numbers still valid), the rest
after EXISTS.

Invariants:
- ``results`` holds UIDs; only messages whose flags changed since the context last looked
  (``seen``), new arrivals and expunged messages are evaluated again, so an update costs a
  comparison of flags per message, and reads a message file only for those that changed.
- A program whose answer depends on sequence numbers or ``$`` (they move on every
  expunge) gets no context: ``NOUPDATE`` (§4.3.1), as do contexts past ``MAX_CONTEXTS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .types import SearchKey, SequenceSet

__all__ = ["MAX_CONTEXTS", "UpdateContext", "partial_window", "updatable"]

MAX_CONTEXTS = 8  # per selected mailbox; each costs a flag comparison per message per command


@dataclass
class UpdateContext:
    """One SEARCH RETURN (UPDATE) (RFC 5267 §4.3): its program and what it found."""

    tag: str
    key: SearchKey
    uid: bool
    results: set[int] = field(default_factory=set)
    seen: dict[int, frozenset[str]] = field(default_factory=dict)  # flags when last evaluated


def updatable(key: SearchKey) -> bool:
    """Whether a program's answer for a message depends only on that message (not on
    sequence numbers, ``*`` or ``$``, which move as others come and go)."""
    stack = [key]
    while stack:
        k = stack.pop()
        if k.kind == "SEQ":
            return False
        if k.kind == "UID":
            assert isinstance(k.value, SequenceSet)
            if k.value.saved or any(a is None or b is None for a, b in k.value.ranges):
                return False
        stack.extend(k.children)
    return True


def partial_window(ids: list[int], low: int, high: int) -> list[int]:
    """RFC 5267 §4.4: the results at positions ``low``..``high`` (1-based, inclusive)."""
    return ids[low - 1 : high]
