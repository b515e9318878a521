"""IMAP STORE, COPY, MOVE, EXPUNGE and APPEND: changing what is in a mailbox.

STORE (RFC 3501 §6.4.6; UNCHANGEDSINCE and MODIFIED from RFC 7162 §3.1.3), COPY
(§6.4.7), MOVE (RFC 6851), EXPUNGE and UID EXPUNGE (§6.4.3, RFC 4315 §2.1), APPEND
(§6.3.11, APPENDLIMIT RFC 7889, MULTIAPPEND RFC 3502, literal8 RFC 3516 §4.4, CATENATE
RFC 4469 with ``imap.catenate``); COPYUID and APPENDUID (RFC 4315 §3).

Invariants:
- A read-only mailbox is never changed: ``NO [READ-ONLY]`` (RFC 3501 §6.3.2).
- Unknown system flags are refused (``BAD``) before any message is touched; ``\\Recent``
  in a STORE is ignored, only the server sets it (§2.3.2).
- COPY, MOVE and APPEND check the user's quota first and add nothing when it would be
  exceeded (``NO [OVERQUOTA]``, RFC 9208); a missing target gives ``NO [TRYCREATE]``.
- A MULTIAPPEND stores all its messages or none; a literal8 message has its binary
  parts stored base64-encoded (no NUL ever reaches a Maildir file).
- A CATENATE URL reads only the logged-in user's own mailboxes; every message of the
  command is put together (``NO [BADURL]`` / ``NO [TOOBIG]`` otherwise) before any is stored.
- A message another session expunged meanwhile is skipped by STORE, never recreated.
- STORE +FLAGS/-FLAGS change the flags on disk at that moment (``Folder.update_flags``),
  not this session's possibly stale view of them; the FETCH FLAGS sent are the flags
  written, and under .SILENT one is still sent when they are not what the client expects.
- MOVE and COPY into the selected mailbox itself work as in Dovecot: new UIDs, COPYUID.
- Messages EXPUNGE/MOVE remove stay readable by other sessions that were not told yet
  (``expunged.KEPT``, RFC 2180 §4.1).
- With CONDSTORE on, every FETCH a STORE sends carries MODSEQ, even under .SILENT
  when the flags changed (RFC 7162 §3.1.3, §3.2).
- With QRESYNC on, every FETCH a STORE sends carries UID (RFC 7162 §3.2.4), expunges go
  out as VANISHED (§3.2.10, ``Session.updates``) and EXPUNGE, UID EXPUNGE and MOVE end
  with ``OK [HIGHESTMODSEQ n]`` (§3.2.7, §3.2.9; for MOVE as Dovecot does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from mailstack.spam.learn import note_copy
from mailstack.storage import Folder, MessageInfo
from mailstack.storage.errors import FolderNotFound, MessageNotFound, StorageError

from ..catenate import BadUrl, MessageUrl, TooBig, badurl_code, build_message
from ..effects import Output
from ..expunged import KEPT
from ..mailbox import SYSTEM_FLAGS
from ..responses import ImapError, ok, render_flags, uid_set
from ..message import ParsedMessage, encode_binary_parts
from ..types import AppendArgs, AppendMessage, Command, CopyArgs, ExpungeArgs, StoreArgs
from .quota import check_quota

if TYPE_CHECKING:
    from . import Handler
    from ..session import Session

__all__ = ["HANDLERS"]


def _apply(folder: Folder, uid: int, mode: str, given: frozenset[str] | set[str]) -> MessageInfo:
    """STORE's change to one message, made to its flags on disk (``Folder.update_flags``)."""
    sysf = [f for f in given if f.startswith("\\")]
    kws = sorted(f for f in given if not f.startswith("\\"))
    if mode == "+":
        return folder.update_flags(uid, add=sysf, add_keywords=kws)
    if mode == "-":
        return folder.update_flags(uid, remove=sysf, remove_keywords=kws)
    return folder.update_flags(uid, replace=sysf, replace_keywords=kws)


def store(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, StoreArgs)
    s.require_writable()
    view = s.selected
    folder = view.folder
    pairs = s.pairs(cmd, args.sequence_set)
    given = {f for f in args.flags if f != "\\Recent"}
    bad_flags = [f for f in given if f.startswith("\\") and f not in SYSTEM_FLAGS]
    if bad_flags:
        raise ImapError("BAD", f"Unknown system flag {bad_flags[0]}")
    idx = s.index.get(folder.path)
    since = args.unchangedsince
    fresh = None
    if since is not None:  # RFC 7162 §3.1.3: compare with the modseqs as they are now
        s.condstore_on()
        fresh = folder.sync()
        idx.reconcile(fresh)
    condstore = s.condstore
    done: list[tuple[int, int, bool, bool]] = []  # (seq, uid, flags changed, not what the client expects)
    modified: list[int] = []
    changed_infos: list[MessageInfo] = []
    for seq, uid in pairs:
        info = view.info(uid)
        if fresh is not None:
            info = fresh.get(uid) or info
            if since is not None and idx.modseq(uid) > since:
                modified.append(uid if cmd.uid else seq)
                continue
        before = view.flags_for(uid)
        # The change is applied to the flags on disk now, not to this session's view of
        # them: flags another session set meanwhile stay (RFC 3501 §6.4.6 "+FLAGS").
        try:
            stored = _apply(folder, uid, args.mode, given)
        except MessageNotFound:
            continue
        if stored != view.info(uid):
            view.set_flags(uid, stored)
            changed_infos.append(stored)
        after = view.flags_for(uid)
        # What the client expected from its own view; anything else (another session's
        # change, now visible) is reported even under .SILENT.
        if args.mode == "+":
            expected = before | given
        elif args.mode == "-":
            expected = before - given
        else:
            expected = frozenset(given) | (before & {"\\Recent"})
        done.append((seq, uid, after != before, after != expected))
    if condstore and changed_infos:
        idx.record(changed_infos)
    # RFC 3501 §7.2.6: keywords new to the mailbox go out in FLAGS before the FETCHes
    buf: list[bytes] = view.announce(k for _, uid, changed, _s in done if changed for k in view.flags_for(uid))
    for seq, uid, flag_change, surprise in done:
        uid_part = b"UID %d " % uid if cmd.uid or s.qresync else b""  # RFC 7162 §3.2.4
        silent = args.silent and not surprise
        if condstore and (flag_change or not silent):
            # RFC 7162 §3.1.3 / §3.2: MODSEQ in the FETCH, sent even for .SILENT when changed
            flags = b"" if silent else b"FLAGS %s " % render_flags(view.flags_for(uid))
            buf.append(b"* %d FETCH (%s%sMODSEQ (%d))\r\n" % (seq, uid_part, flags, idx.modseq(uid)))
        elif not silent:  # RFC 3501 §6.4.6
            buf.append(b"* %d FETCH (%sFLAGS %s)\r\n" % (seq, uid_part, render_flags(view.flags_for(uid))))
        if len(buf) >= 1000:
            yield b"".join(buf)
            buf = []
    if buf:
        yield b"".join(buf)
    if changed_infos:
        s.changed(folder)
    if modified:  # RFC 7162 §3.1.3
        yield from s.done(cmd, "Conditional STORE failed", f"MODIFIED {uid_set(modified)}")
    else:
        yield from s.done(cmd, "STORE completed")


def expunge(s: Session, cmd: Command) -> Iterator[Output]:
    view = s.selected
    s.require_writable()
    only: set[int] | None = None
    if cmd.uid:  # RFC 4315 §2.1 UID EXPUNGE
        args = cmd.args
        assert isinstance(args, ExpungeArgs)
        only = {u for _, u in s.pairs(cmd, args.sequence_set)}
    deleted = [m.uid for m in view.folder.sync().messages
               if "\\Deleted" in m.flags and (only is None or m.uid in only)]
    if deleted:
        with KEPT.expunging(view, deleted):  # other sessions may still fetch them (RFC 2180 §4.1)
            view.folder.expunge(deleted)
        s.changed(view.folder)
    yield from s.updates(cmd, force=True)
    yield ok(cmd.tag, "EXPUNGE completed", _highest(s, view.folder)).to_bytes()


def _highest(s: Session, folder: Folder) -> str | None:
    """RFC 7162 §3.2.7, §3.2.9: with QRESYNC the tagged OK of an expunge gives the modseq it
    made (``updates`` has just reconciled)."""
    return f"HIGHESTMODSEQ {s.index.get(folder.path).highest}" if s.qresync else None


def _target(s: Session, name: str) -> Folder:
    try:
        return s.md.folder(name)
    except FolderNotFound:
        raise ImapError("NO", "Mailbox does not exist", "TRYCREATE") from None  # RFC 3501 §6.4.7


def copy(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, CopyArgs)
    view = s.selected
    pairs = s.pairs(cmd, args.sequence_set)
    target = _target(s, args.mailbox)
    uids = [u for _, u in pairs]
    check_quota(s, sum(view.info(u).size for u in uids))
    moved = view.folder.copy_to(uids, target)
    s.changed(target)
    note_copy(s.config.learning, s.md, s.user.address if s.user else "", view.folder.name, target, moved)
    code = None
    if moved:
        validity = target.sync().uidvalidity
        code = f"COPYUID {validity} {uid_set([a for a, _ in moved])} {uid_set([b for _, b in moved])}"
    yield from s.done(cmd, "COPY completed", code)


def move(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, CopyArgs)
    s.require_writable()
    view = s.selected
    pairs = s.pairs(cmd, args.sequence_set)
    target = _target(s, args.mailbox)
    # Into the selected mailbox itself too, as Dovecot does (RFC 6851 does not forbid it):
    # each message gets a new UID (COPYUID), then the old one is expunged.
    uids = [u for _, u in pairs]
    with KEPT.expunging(view, uids):  # other sessions may still fetch them (RFC 2180 §4.1)
        moved = view.folder.move_to(uids, target)
    s.changed(target)
    note_copy(s.config.learning, s.md, s.user.address if s.user else "", view.folder.name, target, moved)
    s.changed(view.folder)
    if moved:  # RFC 6851 §4.3: COPYUID in an untagged OK, before the EXPUNGEs
        validity = target.sync().uidvalidity
        code = f"COPYUID {validity} {uid_set([a for a, _ in moved])} {uid_set([b for _, b in moved])}"
        yield ok(None, "Moved", code).to_bytes()
    yield from s.updates(cmd, force=True)
    yield ok(cmd.tag, "MOVE completed", _highest(s, view.folder)).to_bytes()


def _unbinary(m: AppendMessage) -> AppendMessage:
    """A literal8 message (RFC 3516 §4.4) with its binary parts base64-encoded; one whose
    NUL is outside any MIME body part cannot be stored as a message and is refused."""
    if not m.binary:
        return m
    data = encode_binary_parts(m.message)
    if b"\0" in data:
        raise ImapError("NO", "NUL outside a MIME body part", "CANNOT")
    return AppendMessage(m.flags, m.internaldate, data)


def _url_reader(s: Session) -> Callable[[MessageUrl], ParsedMessage | None]:
    """Reads what a CATENATE URL names from the user's own mailboxes: each folder synced
    once per command, the last message read kept (parts of one message are the usual case)."""
    folders: dict[str, Folder | None] = {}
    last: list[tuple[tuple[str, int], ParsedMessage]] = []

    def read(u: MessageUrl) -> ParsedMessage | None:
        if u.mailbox not in folders:
            folders[u.mailbox] = None
            try:
                f = s.md.folder(u.mailbox)
                f.sync()
                folders[u.mailbox] = f
            except StorageError:  # missing, unsafe name, unreadable: nothing there
                pass
        folder = folders[u.mailbox]
        if folder is None or (u.uidvalidity is not None and u.uidvalidity != folder.state.uidvalidity):
            return None
        key = (u.mailbox, u.uid)
        if last and last[0][0] == key:
            return last[0][1]
        try:
            parsed = ParsedMessage(folder.read(u.uid))
        except MessageNotFound:
            return None
        last[:] = [(key, parsed)]
        return parsed

    return read


def _catenated(s: Session, m: AppendMessage) -> AppendMessage:
    """A CATENATE message put together (RFC 4469 §3); ``NO [BADURL]`` / ``NO [TOOBIG]``."""
    if not m.parts:
        return m
    assert s.user is not None
    try:
        data = build_message(m.parts, _url_reader(s), user=s.user.address, hostname=s.config.hostname,
                             limit=s.config.append_limit)
    except BadUrl as e:
        raise ImapError("NO", e.reason, badurl_code(e.url)) from None
    except TooBig:
        raise ImapError("NO", "Message too large", "TOOBIG") from None
    return AppendMessage(m.flags, m.internaldate, data)


def append(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, AppendArgs)
    try:
        folder = s.md.folder(args.mailbox)
    except FolderNotFound:
        raise ImapError("NO", "Mailbox does not exist", "TRYCREATE") from None  # RFC 3501 §6.3.11
    # RFC 4469 §3: CATENATE parts are put together before anything is stored
    messages = [_unbinary(_catenated(s, m)) for m in args.messages]
    if any(len(m.message) > s.config.append_limit for m in messages):
        raise ImapError("NO", "Message too large", "TOOBIG")
    check_quota(s, sum(len(m.message) for m in messages))
    # RFC 3502 §6.3.11 MULTIAPPEND: all the messages or none. They are stored one by one
    # (each is a file of its own), and a failure part-way expunges those already stored
    # before the NO, as Dovecot does with its save transaction's rollback.
    uids: list[int] = []
    try:
        for m in messages:
            sysf = [f for f in m.flags if f in SYSTEM_FLAGS]
            kws = [f for f in m.flags if not f.startswith("\\")]
            uids.append(folder.append(m.message, sysf, m.internaldate, kws))
    except BaseException:
        if uids:
            folder.expunge(uids)
        raise
    validity = s.view.uidvalidity if (s.view and s.view.folder.path == folder.path) else \
        folder.state.uidvalidity
    s.changed(folder)
    # RFC 4315 §3 APPENDUID; for a MULTIAPPEND its uid-set in the order given (RFC 4315 §4)
    yield from s.done(cmd, "APPEND completed", f"APPENDUID {validity} {uid_set(uids)}")


HANDLERS: Mapping[str, Handler] = {
    "STORE": store, "COPY": copy, "MOVE": move, "EXPUNGE": expunge, "APPEND": append,
}
