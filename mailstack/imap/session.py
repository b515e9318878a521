"""Per-connection IMAP command execution over ``mailstack.storage`` (RFC 3501 §6).

A ``Session`` holds the protocol state (``states.State``), the logged-in user's Maildir,
the selected mailbox (``mailbox.MailboxView``) and the enabled extensions. ``run(cmd)`` is
a generator: it yields response bytes (already CRLF-terminated, large FETCH results in
chunks) and, where the adapter has work to do, an *effect*: ``Login`` (check a password),
``StartTLS``, ``Idle``, ``SaslNeedResponse`` or ``Logout``. It may block on storage, so
the asyncio adapter (``server``) steps it in a worker thread; it never touches a socket.

Invariants:
- Every command ends with exactly one tagged response; a command refused by the state
  table gets BAD and changes nothing (RFC 3501 §6).
- Untagged updates about the selected mailbox (EXPUNGE, EXISTS, FETCH FLAGS) made by any
  session or process go out before the tagged response of the next command, except that
  EXPUNGE is held back during FETCH, STORE and SEARCH (RFC 3501 §7.4.1).
- Storage errors become NO with a response code (RFC 5530); names that could leave the
  user's Maildir are refused by storage (``UnsafeName``) and become ``NO [CANNOT]``.
- Only implemented capabilities are advertised (``SUPPORTED`` filters the core's list).
- CONDSTORE (RFC 7162 §3.1) is on for a session after ENABLE CONDSTORE or any
  CONDSTORE-enabling command (§3.1: SELECT/EXAMINE (CONDSTORE), STATUS HIGHESTMODSEQ,
  FETCH MODSEQ / CHANGEDSINCE, STORE UNCHANGEDSINCE, SEARCH MODSEQ); from then on every
  sync of the selected folder is reconciled with the index (``FolderIndex.reconcile``)
  so changes by any process get modseqs, SELECT reports ``[HIGHESTMODSEQ]`` and every
  FETCH about flags carries MODSEQ. Sessions without it never pay for modseqs: changes
  are found by comparison whenever someone next asks.
- ``\\Recent`` (RFC 3501 §2.3.2): SELECT claims the folder's unclaimed UIDs (EXAMINE
  only looks), so each message is recent in one session at most.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailstack.storage import Folder, Maildir, MessageInfo
from mailstack.storage.errors import (
    FolderExists,
    FolderNotFound,
    LockTimeout,
    MessageNotFound,
    StorageError,
    TooManyKeywords,
    UnsafeName,
)

from . import states
from .commands import COMMANDS, auth, quota
from .commands.listing import SPECIAL_USE
from .commands.auth import ENABLEABLE, parse_sasl_plain
from .effects import Effect, Idle, Login, Logout, Output, SaslNeedResponse, StartTLS
from .index import Entry, IndexCache, entry_from_message
from .mailbox import SYSTEM_FLAGS, MailboxView, folder_stamp
from .message import ParsedMessage
from .responses import (
    ImapError,
    Literal,
    Raw,
    Value,
    bad,
    fetch_response,
    no,
    ok,
    render_flags,
)
from .search import SearchContext, body_text_of, matches
from .states import State
from .types import (
    SearchKey,
    AppendArgs,
    Command,
    CopyArgs,
    ExpungeArgs,
    FetchArgs,
    FetchAttribute,
    SearchArgs,
    StoreArgs,
)

__all__ = [
    "Session", "SessionConfig", "UserInfo", "Login", "StartTLS", "Idle", "Logout", "SaslNeedResponse", "Effect",
    "Output", "SPECIAL_USE", "SUPPORTED", "ENABLEABLE", "parse_sasl_plain",
]

log = logging.getLogger(__name__)

# What this server implements of the core's capability list (states.BASE_CAPABILITIES).
SUPPORTED = frozenset({
    "IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT", "UIDPLUS",
    "MOVE", "CHILDREN", "SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "QUOTA", "QUOTA=RES-STORAGE",
    "STARTTLS", "AUTH=PLAIN", "LOGINDISABLED", "CONDSTORE",
})
_CHUNK = 64 * 1024  # FETCH output is yielded in pieces of about this size


@dataclass(frozen=True)
class SessionConfig:
    hostname: str
    maildir_root: Path
    tls_available: bool = True
    append_limit: int = 50 * 1024 * 1024
    special_use: tuple[str, ...] = tuple(SPECIAL_USE)


@dataclass(frozen=True)
class UserInfo:
    """The logged-in account (from the directory)."""

    address: str
    domain: str
    local: str
    quota_bytes: int | None = None


def _uid_set(uids: Sequence[int]) -> str:
    """A compact sequence set for COPYUID / APPENDUID (RFC 4315 §3), order kept."""
    out: list[str] = []
    i = 0
    while i < len(uids):
        j = i
        while j + 1 < len(uids) and uids[j + 1] == uids[j] + 1:
            j += 1
        out.append(str(uids[i]) if i == j else f"{uids[i]}:{uids[j]}")
        i = j + 1
    return ",".join(out)


def _storage_error(e: StorageError) -> ImapError:
    """RFC 5530 response codes for storage failures."""
    if isinstance(e, UnsafeName):
        return ImapError("NO", "Invalid mailbox name", "CANNOT")
    if isinstance(e, FolderNotFound):
        return ImapError("NO", "Mailbox does not exist", "NONEXISTENT")
    if isinstance(e, FolderExists):
        return ImapError("NO", "Mailbox already exists", "ALREADYEXISTS")
    if isinstance(e, TooManyKeywords):
        return ImapError("NO", "Too many keywords in this mailbox", "LIMIT")
    if isinstance(e, LockTimeout):
        return ImapError("NO", "Mailbox is busy, try again", "INUSE")
    log.warning("imap: storage error: %s", e)
    return ImapError("NO", "Internal storage error", "SERVERBUG")


def _has_modseq(key: SearchKey) -> bool:
    return key.kind == "MODSEQ" or any(_has_modseq(c) for c in key.children)


class _Searchable:
    """A ``search.SearchableMessage`` whose headers come from the index."""

    __slots__ = ("seq", "uid", "flags", "internaldate", "size", "modseq", "_entry", "_load")

    def __init__(self, seq: int, uid: int, flags: frozenset[str], info: MessageInfo,
                 entry: Callable[[], Entry], load: Callable[[], bytes], modseq: int = 0) -> None:
        self.seq, self.uid, self.flags = seq, uid, flags
        self.internaldate, self.size, self.modseq = info.internaldate, info.vsize, modseq
        self._entry = entry
        self._load = load

    def headers(self) -> Sequence[tuple[str, str]]:
        return self._entry().headers

    def body_text(self) -> str:
        return body_text_of(ParsedMessage(self._load()))


class Session:
    """One IMAP connection's state and command execution (see the module docstring)."""

    def __init__(self, config: SessionConfig, *, tls_active: bool, plaintext_allowed: bool,
                 index: IndexCache | None = None, on_change: Callable[[Path], None] | None = None) -> None:
        self.config = config
        self.tls_active = tls_active
        self.plaintext_allowed = plaintext_allowed
        self.state = State.NOT_AUTHENTICATED
        self.user: UserInfo | None = None
        self.maildir: Maildir | None = None
        self.view: MailboxView | None = None
        self.index = index or IndexCache()
        self.on_change = on_change or (lambda _p: None)
        self.enabled: set[str] = set()
        self.client_id: dict[str, str | None] = {}
        self._pending: list[bytes] = []  # untagged responses to send with the next updates

    # -- capabilities -------------------------------------------------------------------
    def capabilities(self) -> list[str]:
        caps = states.capabilities(
            self.state, tls_active=self.tls_active,
            tls_available=self.config.tls_available and not self.tls_active,
            plaintext_allowed=self.plaintext_allowed, append_limit=None,
        )
        out = [c for c in caps if c in SUPPORTED]
        out.append(f"APPENDLIMIT={self.config.append_limit}")  # RFC 7889
        return out

    def greeting(self) -> bytes:
        return ok(None, f"{self.config.hostname} mailstack IMAP ready", "CAPABILITY " + " ".join(self.capabilities())
                  ).to_bytes()

    @property
    def login_allowed(self) -> bool:
        return self.tls_active or self.plaintext_allowed

    # -- dispatch -----------------------------------------------------------------------
    def run(self, cmd: Command) -> Iterator[Output]:
        """Execute one command: yields response bytes and effects (see module docstring)."""
        name = cmd.name
        spec = COMMANDS.get(name)
        legacy = getattr(self, "_cmd_" + name.lower(), None)
        if not states.is_allowed(self.state, name):
            yield bad(cmd.tag, f"{'UID ' if cmd.uid else ''}{name} not allowed now").to_bytes()
            return
        if spec is None and legacy is None:  # pragma: no cover - grammar and table agree
            yield bad(cmd.tag, f"Unknown command {name}").to_bytes()
            return
        try:
            yield from (spec.handler(self, cmd) if spec is not None else legacy(cmd))  # type: ignore[misc]
        except ImapError as e:
            yield from self.updates(cmd)
            yield e.response(cmd.tag).to_bytes()
        except StorageError as e:
            yield from self.updates(cmd)
            yield _storage_error(e).response(cmd.tag).to_bytes()

    def updates(self, cmd: Command | None = None, *, force: bool = False) -> Iterator[bytes]:
        """Untagged news about the selected mailbox (RFC 3501 §7.4.1 for EXPUNGE)."""
        if self._pending:
            yield b"".join(self._pending)
            self._pending = []
        view = self.view
        if view is None:
            return
        stamp = folder_stamp(view.folder)
        if stamp == view.stamp and not force:
            return
        view.stamp = stamp
        try:
            state = view.folder.sync()
        except StorageError as e:
            log.warning("imap: sync of %s failed: %s", view.folder.path, e)
            return
        if state.uidvalidity != view.uidvalidity:
            # RFC 3501 §2.3.1.1: the UIDs are no longer valid: the client must start over
            self.view = None
            self.state = State.AUTHENTICATED
            yield b"* BYE [UNAVAILABLE] UIDVALIDITY changed, please reconnect\r\n"
            return
        hold = cmd is not None and not cmd.uid and cmd.name in ("FETCH", "STORE", "SEARCH")
        idx = self.index.get(view.folder.path)
        modseq: Callable[[int], int] | None = None
        if self.condstore:  # RFC 7162 §3.2: changes by anyone get a modseq; FETCH carries it
            idx.reconcile(state)
            modseq = idx.modseq
        out = view.changes(state, allow_expunge=not hold, modseq=modseq,
                           recent_floor=lambda top: idx.claim_recent(view.uidvalidity, top, not view.readonly))
        if hold and len(view.uids) != len(state.messages):
            view.stamp = ()  # expunges held back: look again after the next command
        if out:
            yield b"".join(out)

    def done(self, cmd: Command, text: str = "Completed", code: str | None = None) -> Iterator[bytes]:
        yield from self.updates(cmd)
        yield ok(cmd.tag, text, code).to_bytes()

    def changed(self, folder: Folder) -> None:
        self.on_change(folder.path)

    # -- CONDSTORE (RFC 7162) -------------------------------------------------------------
    @property
    def condstore(self) -> bool:
        return "CONDSTORE" in self.enabled

    def condstore_on(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 §3.1): with a mailbox selected, the client
        learns its HIGHESTMODSEQ now (untagged OK before the tagged response)."""
        if self.condstore:
            return
        self.enabled.add("CONDSTORE")
        view = self.view
        if view is not None:
            highest = self.index.get(view.folder.path).reconcile(view.folder.state)
            self._pending.append(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % highest)

    # -- the adapter's calls back (see ``effects``) ----------------------------------------
    def tls_started(self) -> None:
        self.tls_active = True

    def sasl_response(self, tag: str, data: bytes | None) -> Iterator[Output]:
        """The client's AUTHENTICATE PLAIN response (None: it cancelled with ``*``)."""
        return auth.sasl_response(self, tag, data)

    def login_failed(self, tag: str, temporary: bool = False) -> bytes:
        return auth.login_failed(tag, temporary)

    def login_ok(self, tag: str, user: UserInfo) -> bytes:
        """Blocking (creates the Maildir and the special-use folders on first login)."""
        return auth.login_ok(self, tag, user)

    # -- authenticated ------------------------------------------------------------------
    @property
    def md(self) -> Maildir:
        assert self.maildir is not None
        return self.maildir

    def _cmd_append(self, cmd: Command) -> Iterator[Output]:
        args = cmd.args
        assert isinstance(args, AppendArgs)
        try:
            folder = self.md.folder(args.mailbox)
        except FolderNotFound:
            raise ImapError("NO", "Mailbox does not exist", "TRYCREATE") from None  # RFC 3501 §6.3.11
        if len(args.message) > self.config.append_limit:
            raise ImapError("NO", "Message too large", "TOOBIG")
        quota.check_quota(self, len(args.message))
        sysf = [f for f in args.flags if f in SYSTEM_FLAGS]
        kws = [f for f in args.flags if not f.startswith("\\")]
        uid = folder.append(args.message, sysf, args.internaldate, kws)
        validity = self.view.uidvalidity if (self.view and self.view.folder.path == folder.path) else \
            folder.state.uidvalidity
        self.changed(folder)
        yield from self.done(cmd, "APPEND completed", f"APPENDUID {validity} {uid}")  # RFC 4315 §3

    def _cmd_idle(self, cmd: Command) -> Iterator[Output]:
        yield from self.updates(None)
        yield b"+ idling\r\n"
        yield Idle(cmd.tag)

    def idle_updates(self) -> bytes:
        """Untagged news while idling (RFC 2177); blocking."""
        return b"".join(self.updates(None))

    def idle_done(self, tag: str) -> bytes:
        return b"".join(self.updates(None)) + ok(tag, "IDLE terminated").to_bytes()

    # -- selected -----------------------------------------------------------------------
    @property
    def selected(self) -> MailboxView:
        assert self.view is not None
        return self.view

    def require_writable(self) -> None:
        if self.selected.readonly:
            raise ImapError("NO", "Mailbox is read-only", "READ-ONLY")

    def pairs(self, cmd: Command, seqs: Any) -> list[tuple[int, int]]:
        try:
            return self.selected.resolve(seqs, cmd.uid)
        except ValueError:
            raise ImapError("BAD", "Invalid message sequence number") from None

    def _cmd_expunge(self, cmd: Command) -> Iterator[Output]:
        view = self.selected
        self.require_writable()
        only: set[int] | None = None
        if cmd.uid:  # RFC 4315 §2.1 UID EXPUNGE
            args = cmd.args
            assert isinstance(args, ExpungeArgs)
            only = {u for _, u in self.pairs(cmd, args.sequence_set)}
        deleted = [m.uid for m in view.folder.sync().messages
                   if "\\Deleted" in m.flags and (only is None or m.uid in only)]
        if deleted:
            view.folder.expunge(deleted)
            self.changed(view.folder)
        yield from self.updates(cmd, force=True)
        yield ok(cmd.tag, "EXPUNGE completed").to_bytes()

    # FETCH ------------------------------------------------------------------------------
    def _entry(self, info: MessageInfo, raw: bytes | None, load: Callable[[], bytes]) -> Entry:
        idx = self.index.get(self.selected.folder.path)
        if raw is not None:
            got = idx.get(info.base)
            if got is None:
                got = entry_from_message(ParsedMessage(raw))
                idx.put(info.base, got)
            return got
        return idx.entry(info.base, load)

    def _cmd_fetch(self, cmd: Command) -> Iterator[Output]:
        args = cmd.args
        assert isinstance(args, FetchArgs)
        view = self.selected
        folder = view.folder
        pairs = self.pairs(cmd, args.sequence_set)
        atts = list(args.attributes)
        if cmd.uid and not any(a.name == "UID" for a in atts):
            atts.insert(0, FetchAttribute("UID"))  # RFC 3501 §6.4.8
        idx = self.index.get(folder.path)
        if args.changedsince is not None or any(a.name == "MODSEQ" for a in atts):
            self.condstore_on()  # RFC 7162 §3.1
        if args.changedsince is not None:  # RFC 7162 §3.1.4.1: only what changed; MODSEQ implied
            if not any(a.name == "MODSEQ" for a in atts):
                atts.append(FetchAttribute("MODSEQ"))
            since = args.changedsince
            pairs = [(s, u) for s, u in pairs if idx.modseq(u) > since]
        sets_seen = not view.readonly and any(a.sets_seen for a in atts)
        needs_raw = any(a.section is not None or a.name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT") for a in atts)
        has_flags = any(a.name == "FLAGS" for a in atts)
        buf: list[bytes] = []
        size = 0
        vanished = 0
        changed = False
        for seq, uid in pairs:
            info = view.info(uid)
            raw: bytes | None = None
            parsed: ParsedMessage | None = None
            if needs_raw:
                try:
                    raw = folder.read(uid)
                except MessageNotFound:
                    vanished += 1
                    continue
                parsed = ParsedMessage(raw)
            add_flags = False
            if sets_seen and "\\Seen" not in info.flags:  # RFC 3501 §6.4.5
                try:
                    info = folder.set_flags(uid, info.flags | {"\\Seen"})
                    view.set_flags(uid, info)
                    changed = True
                    add_flags = not has_flags
                    if self.condstore:
                        idx.record([info])
                except MessageNotFound:
                    vanished += 1
                    continue
            items: list[tuple[str, Value]] = []
            entry: Entry | None = None
            for a in atts:
                n = a.name
                if n == "UID":
                    items.append(("UID", uid))
                elif n == "FLAGS":
                    items.append(("FLAGS", Raw(render_flags(view.flags_for(uid)))))
                elif n == "INTERNALDATE":
                    items.append(("INTERNALDATE", info.internaldate))
                elif n == "RFC822.SIZE":
                    items.append(("RFC822.SIZE", info.vsize))
                elif n == "MODSEQ":  # RFC 7162 §3.1.4
                    items.append(("MODSEQ", Raw(b"(%d)" % idx.modseq(uid))))
                elif n in ("ENVELOPE", "BODYSTRUCTURE") or (n == "BODY" and a.section is None):
                    if entry is None:
                        try:
                            entry = self._entry(info, raw, lambda u=uid: folder.read(u))  # type: ignore[misc]
                        except MessageNotFound:
                            break
                    data = entry.envelope if n == "ENVELOPE" else entry.bodystructure if n == "BODYSTRUCTURE" \
                        else entry.body
                    items.append((n, Raw(data)))
                else:
                    assert parsed is not None
                    sect = parsed.fetch_section(a)
                    items.append((a.response_name(), Literal(sect if sect is not None else b"")))
            else:
                if add_flags:
                    items.append(("FLAGS", Raw(render_flags(view.flags_for(uid)))))
                    if self.condstore and not any(a.name == "MODSEQ" for a in atts):  # RFC 7162 §3.2
                        items.append(("MODSEQ", Raw(b"(%d)" % idx.modseq(uid))))
                line = fetch_response(seq, items)
                buf.append(line)
                size += len(line)
                if size >= _CHUNK:
                    yield b"".join(buf)
                    buf, size = [], 0
                continue
            vanished += 1
        if buf:
            yield b"".join(buf)
        if changed:
            self.changed(folder)
        yield from self.updates(cmd)
        if vanished:  # RFC 5530 EXPUNGEISSUED
            yield no(cmd.tag, "Some messages were expunged meanwhile", "EXPUNGEISSUED").to_bytes()
        else:
            yield ok(cmd.tag, "FETCH completed").to_bytes()

    # STORE ------------------------------------------------------------------------------
    def _cmd_store(self, cmd: Command) -> Iterator[Output]:
        args = cmd.args
        assert isinstance(args, StoreArgs)
        self.require_writable()
        view = self.selected
        folder = view.folder
        pairs = self.pairs(cmd, args.sequence_set)
        given = {f for f in args.flags if f != "\\Recent"}
        bad_flags = [f for f in given if f.startswith("\\") and f not in SYSTEM_FLAGS]
        if bad_flags:
            raise ImapError("BAD", f"Unknown system flag {bad_flags[0]}")
        idx = self.index.get(folder.path)
        since = args.unchangedsince
        fresh = None
        if since is not None:  # RFC 7162 §3.1.3: compare with the modseqs as they are now
            self.condstore_on()
            fresh = folder.sync()
            idx.reconcile(fresh)
        condstore = self.condstore
        done: list[tuple[int, int, bool]] = []  # (seq, uid, flags changed)
        modified: list[int] = []
        changed_infos: list[MessageInfo] = []
        for seq, uid in pairs:
            info = view.info(uid)
            if fresh is not None:
                info = fresh.get(uid) or info
                if since is not None and idx.modseq(uid) > since:
                    modified.append(uid if cmd.uid else seq)
                    continue
            current = info.flags | info.keywords
            if args.mode == "+":
                new = current | given
            elif args.mode == "-":
                new = current - given
            else:
                new = frozenset(given)
            if new != current:
                sysf = [f for f in new if f in SYSTEM_FLAGS]
                kws = sorted(f for f in new if not f.startswith("\\"))
                try:
                    info = folder.set_flags(uid, sysf, kws)
                except MessageNotFound:
                    continue
                view.set_flags(uid, info)
                changed_infos.append(info)
                done.append((seq, uid, True))
            elif fresh is not None and info != view.info(uid):
                view.set_flags(uid, info)  # another process's change, now reported here
                done.append((seq, uid, True))
            else:
                done.append((seq, uid, False))
        if condstore and changed_infos:
            idx.record(changed_infos)
        buf: list[bytes] = []
        for seq, uid, flag_change in done:
            uid_part = b"UID %d " % uid if cmd.uid else b""
            if condstore and (flag_change or not args.silent):
                # RFC 7162 §3.1.3 / §3.2: MODSEQ in the FETCH, sent even for .SILENT when changed
                flags = b"" if args.silent else b"FLAGS %s " % render_flags(view.flags_for(uid))
                buf.append(b"* %d FETCH (%s%sMODSEQ (%d))\r\n" % (seq, uid_part, flags, idx.modseq(uid)))
            elif not args.silent:  # RFC 3501 §6.4.6
                buf.append(b"* %d FETCH (%sFLAGS %s)\r\n" % (seq, uid_part, render_flags(view.flags_for(uid))))
            if len(buf) >= 1000:
                yield b"".join(buf)
                buf = []
        if buf:
            yield b"".join(buf)
        if changed_infos:
            self.changed(folder)
        if modified:  # RFC 7162 §3.1.3
            yield from self.done(cmd, "Conditional STORE failed", f"MODIFIED {_uid_set(modified)}")
        else:
            yield from self.done(cmd, "STORE completed")

    # SEARCH -----------------------------------------------------------------------------
    def _cmd_search(self, cmd: Command) -> Iterator[Output]:
        args = cmd.args
        assert isinstance(args, SearchArgs)
        view = self.selected
        folder = view.folder
        idx = self.index.get(folder.path)
        ctx = SearchContext(view.exists, view.max_uid)
        found: list[int] = []
        key = args.key
        with_modseq = _has_modseq(key)
        if with_modseq:
            self.condstore_on()  # RFC 7162 §3.1
        top_modseq = 0
        for i, uid in enumerate(view.uids):
            info = view.info(uid)

            def load(u: int = uid) -> bytes:
                try:
                    return folder.read(u)
                except MessageNotFound:
                    return b""

            def entry(inf: MessageInfo = info, ld: Callable[[], bytes] = load) -> Entry:
                return idx.entry(inf.base, ld)

            m = _Searchable(i + 1, uid, view.flags_for(uid), info, entry, load,
                            idx.modseq(uid) if with_modseq else 0)
            if matches(key, m, ctx):
                found.append(uid if cmd.uid else i + 1)
                top_modseq = max(top_modseq, m.modseq)
        # RFC 7162 §3.1.5: with MODSEQ in the program, the highest modseq of what was found
        tail = f" (MODSEQ {top_modseq})" if with_modseq and found else ""
        yield ("* SEARCH" + "".join(f" {n}" for n in found) + tail + "\r\n").encode("ascii")
        yield from self.done(cmd, "SEARCH completed")

    # COPY / MOVE -----------------------------------------------------------------------
    def _target(self, name: str) -> Folder:
        try:
            return self.md.folder(name)
        except FolderNotFound:
            raise ImapError("NO", "Mailbox does not exist", "TRYCREATE") from None  # RFC 3501 §6.4.7

    def _cmd_copy(self, cmd: Command) -> Iterator[Output]:
        args = cmd.args
        assert isinstance(args, CopyArgs)
        view = self.selected
        pairs = self.pairs(cmd, args.sequence_set)
        target = self._target(args.mailbox)
        uids = [u for _, u in pairs]
        quota.check_quota(self, sum(view.info(u).size for u in uids))
        moved = view.folder.copy_to(uids, target)
        self.changed(target)
        code = None
        if moved:
            validity = target.sync().uidvalidity
            code = f"COPYUID {validity} {_uid_set([a for a, _ in moved])} {_uid_set([b for _, b in moved])}"
        yield from self.done(cmd, "COPY completed", code)

    def _cmd_move(self, cmd: Command) -> Iterator[Output]:
        args = cmd.args
        assert isinstance(args, CopyArgs)
        self.require_writable()
        view = self.selected
        pairs = self.pairs(cmd, args.sequence_set)
        target = self._target(args.mailbox)
        if target.path == view.folder.path:
            raise ImapError("NO", "Cannot move a message into its own mailbox", "CANNOT")
        moved = view.folder.move_to([u for _, u in pairs], target)
        self.changed(target)
        self.changed(view.folder)
        if moved:  # RFC 6851 §4.3: COPYUID in an untagged OK, before the EXPUNGEs
            validity = target.sync().uidvalidity
            code = f"COPYUID {validity} {_uid_set([a for a, _ in moved])} {_uid_set([b for _, b in moved])}"
            yield ok(None, "Moved", code).to_bytes()
        yield from self.updates(cmd, force=True)
        yield ok(cmd.tag, "MOVE completed").to_bytes()

