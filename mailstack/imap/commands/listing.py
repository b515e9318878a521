"""IMAP LIST, LSUB and STATUS: what mailboxes there are and what is in them.

LIST (RFC 3501 §6.3.8) with LIST-EXTENDED selection and return options (RFC 5258),
CHILDREN attributes (RFC 3348), SPECIAL-USE attributes (RFC 6154) and LIST-STATUS
(RFC 5819); LSUB (§6.3.9); STATUS (§6.3.10, SIZE from RFC 8438, HIGHESTMODSEQ from
RFC 7162 §3.1.6). Patterns are matched by ``listmatch`` (no backtracking).

Invariants:
- ``LIST "" ""`` answers with the hierarchy delimiter only (§6.3.8).
- Parents that have no directory of their own are listed as ``\\Noselect`` (or
  ``\\NonExistent`` under LIST-EXTENDED, RFC 5258 §3); LIST-STATUS gives STATUS only for
  mailboxes that exist (RFC 5819 §2).
- Subscriptions outlive their mailboxes (§6.3.6): LIST (SUBSCRIBED) shows such names
  ``\\NonExistent``; CHILDINFO (RECURSIVEMATCH) and LSUB's ``\\Noselect`` parents appear
  only for a subscribed descendant that the patterns do not list themselves.
- STATUS RECENT counts what no SELECT has claimed yet, and claims nothing (§2.3.2).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from mailstack.storage.errors import FolderNotFound

from ..effects import Output
from ..listmatch import compile_pattern
from ..objectid import mailbox_id
from ..responses import ImapError, render_mailbox
from ..types import Command, ListArgs, StatusArgs

if TYPE_CHECKING:
    from . import Handler
    from ..session import Session

__all__ = ["HANDLERS", "SPECIAL_USE", "status_line"]

# Folders made at first login, with their RFC 6154 attribute.
SPECIAL_USE: dict[str, str] = {
    "Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive",
}


def list_(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, ListArgs)
    md = s.md
    if args.patterns == ("",) and not args.extended:  # RFC 3501 §6.3.8: the delimiter
        yield b'* LIST (\\Noselect) "." ""\r\n'
        yield from s.done(cmd, "LIST completed")
        return
    existing = md.list_folders()
    exists = set(existing)
    subscribed = set(md.list_subscriptions())
    names = set(existing)
    if "SUBSCRIBED" in args.selection:
        # RFC 5258 §3.1: subscribed names are listed even when no such mailbox exists
        # (\NonExistent), e.g. after a DELETE (RFC 3501 §6.3.6 keeps the subscription)
        names |= subscribed
        names |= _ancestors(subscribed)  # parents of subscribed names (CHILDINFO)
    names |= _ancestors(existing)  # parents without a directory
    children: set[str] = set()
    for n in names:
        if "." in n:
            children.add(n.rsplit(".", 1)[0])
    regexes = [compile_pattern(args.reference, p) for p in args.patterns]
    # RFC 5258 §3.5 (RECURSIVEMATCH): a name gets CHILDINFO (SUBSCRIBED) when a subscribed
    # descendant is not itself listed, i.e. matches no pattern (as Dovecot: a descendant
    # that is listed needs no CHILDINFO on its parent).
    sub_children = _ancestors(n for n in subscribed if not any(r.match(n) for r in regexes))
    sel = args.selection
    want_subscribed = "SUBSCRIBED" in sel or "SUBSCRIBED" in args.returns
    lines: list[bytes] = []
    for name in sorted(names, key=lambda n: (n != "INBOX", n)):
        if not any(r.match(name) for r in regexes):
            continue
        attrs: list[str] = []
        extra = b""
        is_sub = name in subscribed
        if name not in exists:
            # RFC 9051 §7.3.1: rev2 says \NonExistent (which implies \Noselect) too
            attrs.append("\\NonExistent" if args.extended or s.rev2 else "\\Noselect")
        if "SUBSCRIBED" in sel and not is_sub:
            if "RECURSIVEMATCH" in sel and name in sub_children:  # RFC 5258 §3.5
                extra = b' ("CHILDINFO" ("SUBSCRIBED"))'
            else:
                continue
        if name in exists:  # RFC 3348 / RFC 5258 §4 CHILDREN
            attrs.append("\\HasChildren" if name in children else "\\HasNoChildren")
        elif name in children:  # a parent without a directory still has children
            attrs.append("\\HasChildren")
        # RFC 6154 §2: the uses of the folders made at first login, or those given at CREATE
        uses = (SPECIAL_USE[name],) if name in SPECIAL_USE else md.special_use(name) if name in exists else ()
        special = " ".join(uses)
        if special:
            attrs.append(special)
        if "SPECIAL-USE" in sel and not special:
            continue
        if want_subscribed and is_sub:
            attrs.append("\\Subscribed")
        lines.append(b"* LIST (" + " ".join(attrs).encode("ascii") + b') "." ' + render_mailbox(name, s.rev2) + extra
                     + b"\r\n")
        if "STATUS" in args.returns and name in exists:  # RFC 5819
            lines.append(status_line(s, name, args.status_items))
    yield b"".join(lines)
    yield from s.done(cmd, "LIST completed")


def lsub(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, ListArgs)
    md = s.md
    out: list[bytes] = []
    if not args.patterns:  # a pattern that is not modified UTF-7 matches nothing
        yield from s.done(cmd, "LSUB completed")
        return
    regex = compile_pattern(args.reference, args.patterns[0])
    exists = set(md.list_folders())
    subscribed = md.list_subscriptions()
    listed = set(subscribed)
    # RFC 3501 §6.3.9: "%" that stops above a subscribed name lists its unsubscribed
    # parent as \Noselect (LSUB "" foo.% with only foo.bar.baz subscribed gives foo.bar).
    parents = _ancestors(n for n in subscribed if not regex.match(n)) - listed
    for name in sorted(listed | parents, key=lambda n: (n != "INBOX", n)):
        if regex.match(name):
            attrs = "" if name in exists and name not in parents else "\\Noselect"
            out.append(b"* LSUB (" + attrs.encode() + b') "." ' + render_mailbox(name, s.rev2) + b"\r\n")
    yield b"".join(out)
    yield from s.done(cmd, "LSUB completed")


def _ancestors(names: Iterable[str]) -> set[str]:
    """Every proper parent name ("a", "a.b" for "a.b.c") of the given names."""
    out: set[str] = set()
    for n in names:
        parts = n.split(".")
        for i in range(1, len(parts)):
            out.add(".".join(parts[:i]))
    return out


def status_line(s: Session, name: str, items: Sequence[str]) -> bytes:
    if s.view is not None and s.view.folder.name == name:
        folder = s.view.folder
    else:
        folder = s.md.folder(name)
    st = folder.sync()
    values: list[str] = []
    for item in items:
        if item == "MESSAGES":
            v = len(st.messages)
        elif item == "RECENT":  # RFC 3501 §2.3.2: not yet claimed by a SELECT
            floor = s.index.get(folder.path).claim_recent(st.uidvalidity, 0, False)
            v = sum(1 for m in st.messages if m.uid > floor)
        elif item == "HIGHESTMODSEQ":  # RFC 7162 §3.1.6
            s.condstore_on()
            v = s.index.get(folder.path).reconcile(st)
        elif item == "UIDNEXT":
            v = st.uidnext
        elif item == "UIDVALIDITY":
            v = st.uidvalidity
        elif item == "UNSEEN":
            v = sum(1 for m in st.messages if "\\Seen" not in m.flags)
        elif item == "SIZE":  # RFC 8438
            v = sum(m.vsize for m in st.messages)
        elif item == "DELETED":  # RFC 9051 §6.3.11
            v = sum(1 for m in st.messages if "\\Deleted" in m.flags)
        elif item == "MAILBOXID":  # RFC 8474 §4.4
            values.append(f"MAILBOXID ({mailbox_id(st)})")
            continue
        else:
            raise ImapError("BAD", f"STATUS item {item} not supported")
        values.append(f"{item} {v}")
    return b"* STATUS " + render_mailbox(name, s.rev2) + b" (" + " ".join(values).encode("ascii") + b")\r\n"


def status(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, StatusArgs)
    try:
        line = status_line(s, args.mailbox, args.items)
    except FolderNotFound:
        raise ImapError("NO", "Mailbox does not exist", "NONEXISTENT") from None
    yield line
    yield from s.done(cmd, "STATUS completed")


HANDLERS: Mapping[str, Handler] = {"LIST": list_, "LSUB": lsub, "STATUS": status}
