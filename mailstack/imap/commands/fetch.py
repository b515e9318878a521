"""IMAP FETCH (RFC 3501 §6.4.5, §7.4.2; UID FETCH §6.4.8; MODSEQ and CHANGEDSINCE RFC 7162 §3.1.4;
the VANISHED modifier RFC 7162 §3.2.6; BINARY, BINARY.PEEK, BINARY.SIZE RFC 3516 §4.2).

Each FETCH item is rendered by one function of ``RENDERERS`` (item name -> renderer)
from a ``_Message``: what is known of one message, whose file is read and whose index
entry (ENVELOPE, BODY, BODYSTRUCTURE) is looked up at most once, and only when an item
needs it. ``_Fetch.line`` builds the response line of one message; ``fetch`` runs it
over the sequence set and yields the lines in pieces of about ``CHUNK`` bytes.

Invariants:
- A message another session of this server expunged, that this session was not told of
  yet, is still served from the file kept open for it (``expunged``, RFC 2180 §4.1, as
  Dovecot does); its \\Seen is then not set. One removed where nothing was kept (another
  process, or over ``expunged.MAX_KEPT``) is left out of the response, whichever step
  finds it gone (one ``MessageNotFound`` handler for all of them); the other messages are
  answered and the tagged response is ``NO [EXPUNGEISSUED]`` (RFC 5530 §3, RFC 2180
  §4.1.2), or OK for UID FETCH, which ignores UIDs that no longer exist (RFC 3501
  §6.4.8). For a non-UID FETCH the EXPUNGE waits for a later command (RFC 3501 §7.4.1).
- \\Seen is set (§6.4.5) by BODY[...] without PEEK, RFC822 and RFC822.TEXT only, never in
  a read-only mailbox, and only after the message file was read; the response then
  carries FLAGS even if not asked for (and MODSEQ with CONDSTORE on, RFC 7162 §3.2).
- A response item a client did not name is never added, except UID for UID FETCH
  (§6.4.8), MODSEQ under CHANGEDSINCE (RFC 7162 §3.1.4.1), the FLAGS above, and UID
  beside those FLAGS when QRESYNC is on (RFC 7162 §3.2.4: flag changes carry the UID).
- ``UID FETCH ... (CHANGEDSINCE m VANISHED)`` (RFC 7162 §3.2.6) sends ``VANISHED
  (EARLIER)`` for the UIDs of its set expunged since m (``qresync.vanished_earlier``)
  before the FETCHes. ``*`` in the set is taken as "no upper bound" for that, as Dovecot
  does (``UID FETCH 11:*`` never reports UID 10). VANISHED without UID, without
  CHANGEDSINCE or without ENABLE QRESYNC is BAD.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from mailstack.storage import Folder, MessageInfo
from mailstack.storage.errors import MessageNotFound

from .. import uidranges
from ..effects import Output
from ..expunged import KEPT
from ..index import Entry, FolderIndex, entry_from_message
from ..mailbox import MailboxView
from ..message import ParsedMessage, UnknownCTE
from ..objectid import email_id, save_date
from ..qresync import vanished_earlier
from ..responses import ImapError, Literal, Raw, Value, fetch_response, no, ok, render_flags
from ..types import Command, FetchArgs, FetchAttribute

if TYPE_CHECKING:
    from . import Handler
    from ..session import Session

__all__ = ["HANDLERS", "RENDERERS", "CHUNK"]

CHUNK = 64 * 1024  # FETCH output is yielded in pieces of about this size
_FILE_ITEMS = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT"})  # besides BODY[section]


class _Message:
    """One message being fetched: its file and index entry, each loaded at most once."""

    __slots__ = ("seq", "uid", "info", "view", "folder", "idx", "_raw", "_parsed", "_entry")

    def __init__(self, seq: int, uid: int, view: MailboxView, idx: FolderIndex) -> None:
        self.seq, self.uid, self.view, self.idx = seq, uid, view, idx
        self.folder: Folder = view.folder
        self.info: MessageInfo = view.info(uid)
        self._raw: bytes | None = None
        self._parsed: ParsedMessage | None = None
        self._entry: Entry | None = None

    def file(self) -> bytes:
        """The message as stored; ``MessageNotFound`` if someone expunged it."""
        if self._raw is None:
            try:
                self._raw = self.folder.read(self.uid)
            except MessageNotFound:
                # expunged by another session that this one was not told of yet: served
                # from the file kept open for it (RFC 2180 §4.1, as Dovecot does)
                kept = KEPT.read(self.view, self.uid)
                if kept is None:
                    raise
                self._raw = kept
        return self._raw

    def parsed(self) -> ParsedMessage:
        if self._parsed is None:
            self._parsed = ParsedMessage(self.file())
        return self._parsed

    def entry(self) -> Entry:
        """ENVELOPE, BODY, BODYSTRUCTURE from the folder index, built from the file if not there."""
        if self._entry is None:
            got = self.idx.get(self.info.base)
            if got is None:
                got = entry_from_message(self.parsed())
                self.idx.put(self.info.base, got)
            self._entry = got
        return self._entry

    def flags(self) -> Raw:
        return Raw(render_flags(self.view.flags_for(self.uid)))

    def modseq(self) -> Raw:
        return Raw(b"(%d)" % self.idx.modseq(self.uid))


# -- the item renderers (RFC 3501 §7.4.2) -------------------------------------------------
Renderer = Callable[[_Message, FetchAttribute], tuple[str, Value]]


def _section(m: _Message, a: FetchAttribute) -> tuple[str, Value]:
    """BODY[section]<partial>, RFC822, RFC822.HEADER, RFC822.TEXT: bytes of the file."""
    data = m.parsed().fetch_section(a)
    return a.response_name(), Literal(data if data is not None else b"")


def _body(m: _Message, a: FetchAttribute) -> tuple[str, Value]:
    if a.section is not None:
        return _section(m, a)
    return "BODY", Raw(m.entry().body)  # BODY without a section: BODYSTRUCTURE without extensions


def _binary_content(m: _Message, a: FetchAttribute) -> bytes:
    assert a.section is not None
    try:
        data = m.parsed().binary_section(a.section.part)
    except UnknownCTE:  # RFC 3516 §4.3
        raise ImapError("NO", "Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
    return data if data is not None else b""


def _binary(m: _Message, a: FetchAttribute) -> tuple[str, Value]:
    """BINARY[part]<partial> (RFC 3516 §4.2): decoded content, as a literal8 ``~{n}``
    when it holds a NUL (§4.3: the only octet a plain literal cannot carry)."""
    data = _binary_content(m, a)
    if a.partial is not None:
        origin, count = a.partial
        data = data[origin : origin + count]
    if b"\0" in data:
        return a.response_name(), Raw(b"~{%d}\r\n" % len(data) + data)
    return a.response_name(), Literal(data)


RENDERERS: Mapping[str, Renderer] = {
    "UID": lambda m, a: ("UID", m.uid),
    "FLAGS": lambda m, a: ("FLAGS", m.flags()),
    "INTERNALDATE": lambda m, a: ("INTERNALDATE", m.info.internaldate),
    "RFC822.SIZE": lambda m, a: ("RFC822.SIZE", m.info.vsize),
    "MODSEQ": lambda m, a: ("MODSEQ", m.modseq()),  # RFC 7162 §3.1.4
    "ENVELOPE": lambda m, a: ("ENVELOPE", Raw(m.entry().envelope)),
    "BODYSTRUCTURE": lambda m, a: ("BODYSTRUCTURE", Raw(m.entry().bodystructure)),
    "BODY": _body,
    "RFC822": _section,
    "RFC822.HEADER": _section,
    "RFC822.TEXT": _section,
    "BINARY": _binary,  # RFC 3516 §4.2
    "BINARY.SIZE": lambda m, a: (a.response_name(), len(_binary_content(m, a))),  # RFC 3516 §4.2
    "EMAILID": lambda m, a: ("EMAILID", Raw(b"(%s)" % email_id(m.folder.state, m.info).encode("ascii"))),  # RFC 8474
    "THREADID": lambda m, a: ("THREADID", None),  # RFC 8474 §5.2: NIL, no threads here
    "SAVEDATE": lambda m, a: ("SAVEDATE", save_date(m.folder, m.info, m.idx)),  # RFC 8514 §4.1 (NIL: unknown)
}


def _needs_file(a: FetchAttribute) -> bool:
    return a.section is not None or a.name in _FILE_ITEMS


class _Fetch:
    """One FETCH command: the items asked for and what rendering them changed."""

    def __init__(self, s: Session, view: MailboxView, atts: Sequence[FetchAttribute]) -> None:
        self.s, self.view, self.atts = s, view, tuple(atts)
        self.idx = s.index.get(view.folder.path)
        self.renderers = [RENDERERS[a.name] for a in self.atts]
        self.sets_seen = not view.readonly and any(a.sets_seen for a in self.atts)
        self.needs_file = any(_needs_file(a) for a in self.atts)
        self.has_flags = any(a.name == "FLAGS" for a in self.atts)
        self.has_modseq = any(a.name == "MODSEQ" for a in self.atts)
        self.has_uid = any(a.name == "UID" for a in self.atts)
        self.changed = False  # some \Seen was set: other sessions must hear of it

    def line(self, seq: int, uid: int) -> bytes | None:
        """The ``* n FETCH (...)`` line of one message, or None if it is gone."""
        m = _Message(seq, uid, self.view, self.idx)
        try:
            if self.needs_file:
                m.file()  # before \Seen: a message that cannot be read is not marked seen
            add_flags = False
            if self.sets_seen:  # RFC 3501 §6.4.5
                # added to the flags on disk (not this session's view of them): another
                # session's flags stay, and a \Seen another session removed is set again
                try:
                    stored = m.folder.update_flags(uid, add=("\\Seen",))
                except MessageNotFound:
                    stored = m.info  # expunged meanwhile but still served: no flag to set
                if stored != m.info:
                    m.info = stored
                    self.view.set_flags(uid, m.info)
                    self.changed = True
                    add_flags = not self.has_flags
                    if self.s.condstore:
                        self.idx.record([m.info])
            items = [render(m, a) for render, a in zip(self.renderers, self.atts)]
        except MessageNotFound:  # expunged by someone else meanwhile (RFC 2180 §4.1.2)
            return None
        if add_flags:
            if self.s.qresync and not self.has_uid:  # RFC 7162 §3.2.4
                items.append(("UID", uid))
            items.append(("FLAGS", m.flags()))
            if self.s.condstore and not self.has_modseq:  # RFC 7162 §3.2
                items.append(("MODSEQ", m.modseq()))
        # storage may hand back keywords set meanwhile elsewhere: FLAGS first (RFC 3501 §7.2.6)
        kws = self.view.info(uid).keywords
        return (b"".join(self.view.announce(kws)) if kws else b"") + fetch_response(seq, items)


def fetch(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, FetchArgs)
    view = s.selected
    if args.vanished:  # RFC 7162 §3.2.6
        if not cmd.uid:
            raise ImapError("BAD", "VANISHED is a UID FETCH modifier")
        if args.changedsince is None:
            raise ImapError("BAD", "VANISHED used without CHANGEDSINCE")
        if not s.qresync:
            raise ImapError("BAD", "QRESYNC not enabled")
    pairs = s.pairs(cmd, args.sequence_set)
    atts = list(args.attributes)
    if cmd.uid and not any(a.name == "UID" for a in atts):
        atts.insert(0, FetchAttribute("UID"))  # RFC 3501 §6.4.8
    if args.changedsince is not None or any(a.name == "MODSEQ" for a in atts):
        s.condstore_on()  # RFC 7162 §3.1
    if args.changedsince is not None:  # RFC 7162 §3.1.4.1: only what changed; MODSEQ implied
        if not any(a.name == "MODSEQ" for a in atts):
            atts.append(FetchAttribute("MODSEQ"))
        idx = s.index.get(view.folder.path)
        since = args.changedsince
        pairs = [(n, u) for n, u in pairs if idx.modseq(u) > since]
        if args.vanished:  # RFC 7162 §3.2.6: before the FETCHes
            known = uidranges.normalize(args.sequence_set.spans(uidranges.MAX_UID))
            lines = uidranges.vanished_responses(vanished_earlier(idx, view, since, known), earlier=True)
            if lines:
                yield b"".join(lines)
    job = _Fetch(s, view, atts)
    buf: list[bytes] = []
    size = 0
    vanished = 0
    for seq, uid in pairs:
        line = job.line(seq, uid)
        if line is None:
            vanished += 1
            continue
        buf.append(line)
        size += len(line)
        if size >= CHUNK:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)
    if job.changed:
        s.changed(view.folder)
    yield from s.updates(cmd)
    if vanished and not cmd.uid:  # RFC 5530 §3 EXPUNGEISSUED; UID FETCH ignores them (RFC 3501 §6.4.8)
        yield no(cmd.tag, "Some messages were expunged meanwhile", "EXPUNGEISSUED").to_bytes()
    else:
        yield ok(cmd.tag, "FETCH completed").to_bytes()


HANDLERS: Mapping[str, Handler] = {"FETCH": fetch}
