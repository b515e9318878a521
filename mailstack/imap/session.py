"""One IMAP connection's state, and the dispatch of its commands (RFC 3501 §3, §6).

A ``Session`` holds the protocol state (``states.State``), the logged-in user's Maildir,
the selected mailbox (``mailbox.MailboxView``) and the enabled extensions. ``run(cmd)``
looks the command up in the command table (``commands.COMMANDS``: handler and allowed
states, one module per command family) and runs its handler. It is a generator: it
yields response bytes (already CRLF-terminated, large FETCH results in chunks) and,
where the adapter has work to do, an *effect* (``effects``): ``Login`` (check a
password), ``StartTLS``, ``Idle``, ``SaslNeedResponse`` or ``Logout``. It may block on
storage, so the asyncio adapter (``server``) steps it in a worker thread; it never
touches a socket. The handlers share what is here: ``updates``/``done`` (untagged news,
then the tagged OK), ``changed`` (wake other sessions), ``condstore_on``, ``selected``,
``md``, ``pairs``, ``require_writable``.

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
- QRESYNC (RFC 7162 §3.2) is on after ENABLE QRESYNC, which turns CONDSTORE on too
  (§3.2.3); from then on expunges go out as VANISHED (§3.2.10), held back exactly where
  EXPUNGE would be, and unsolicited FETCH responses carry UID (§3.2.4).
- ``hibernate()`` (IDLE, by the adapter) swaps the selected mailbox's view for a
  ``mailbox.FrozenView`` and drops the folder's caches; ``wake()`` rebuilds them from disk,
  and the next ``updates`` tells the client what changed in between. Nothing else runs
  while a session is hibernated.
- ``\\Recent`` (RFC 3501 §2.3.2): SELECT claims the folder's unclaimed UIDs (EXAMINE
  only looks), so each message is recent in one session at most.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mailstack.spam.learn import Learning
from mailstack.storage import Folder, Maildir
from mailstack.storage.errors import (
    FolderExists,
    FolderNotFound,
    LockTimeout,
    StorageError,
    TooManyKeywords,
    UnsafeName,
)

from . import states
from .commands import COMMANDS, auth, idle, search
from .commands.auth import ENABLEABLE, parse_sasl_plain
from .commands.listing import SPECIAL_USE
from .effects import Compress, Effect, Idle, Login, Logout, Output, SaslNeedResponse, StartTLS
from .index import IndexCache
from .mailbox import FrozenView, MailboxView, folder_stamp
from .responses import ImapError, bad, ok
from .states import State
from .types import Command, SequenceSet

__all__ = [
    "Session", "SessionConfig", "UserInfo", "Login", "StartTLS", "Compress", "Idle", "Logout", "SaslNeedResponse", "Effect",
    "Output", "SPECIAL_USE", "SUPPORTED", "ENABLEABLE", "parse_sasl_plain",
]

log = logging.getLogger(__name__)

# What this server implements of the core's capability list (states.BASE_CAPABILITIES).
SUPPORTED = frozenset({
    "IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT", "UIDPLUS",
    "MOVE", "CHILDREN", "SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "QUOTA", "QUOTA=RES-STORAGE",
    "STARTTLS", "AUTH=PLAIN", "LOGINDISABLED", "CONDSTORE", "QRESYNC",
    "CREATE-SPECIAL-USE", "STATUS=SIZE", "MULTIAPPEND", "BINARY",
    "ESEARCH", "SEARCHRES", "SORT", "SORT=DISPLAY", "ESORT",
    "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES",
    "CATENATE", "CONTEXT=SEARCH",
    "COMPRESS=DEFLATE", "OBJECTID", "SAVEDATE",
})


@dataclass(frozen=True)
class SessionConfig:
    hostname: str
    maildir_root: Path
    tls_available: bool = True
    append_limit: int = 50 * 1024 * 1024
    special_use: tuple[str, ...] = tuple(SPECIAL_USE)
    learning: Learning | None = None  # COPY/MOVE into or out of Junk teach rspamd (mailstack.spam.learn)


@dataclass(frozen=True)
class UserInfo:
    """The logged-in account (from the directory)."""

    address: str
    domain: str
    local: str
    quota_bytes: int | None = None


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
        self.compressed = False  # COMPRESS=DEFLATE is on (RFC 4978)
        self.frozen: FrozenView | None = None  # the selected mailbox while hibernated

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
        spec = COMMANDS.get(name)  # every command the grammar knows is there (tests/imap/test_states.py)
        if spec is None or self.state not in spec.states:  # RFC 3501 §6: BAD, nothing changes
            yield bad(cmd.tag, f"{'UID ' if cmd.uid else ''}{name} not allowed now").to_bytes()
            return
        try:
            yield from spec.handler(self, cmd)
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
        before = list(view.uids) if view.contexts else None
        qresync = self.qresync  # RFC 7162 §3.2.10 VANISHED; §3.2.4 UID in every unsolicited FETCH
        # RFC 9051 §7.5.2: in rev2 too, unsolicited FETCH responses carry the UID
        out = view.changes(state, allow_expunge=not hold, modseq=modseq, with_uid=qresync or self.rev2,
                           vanished=qresync,
                           recent_floor=lambda top: idx.claim_recent(view.uidvalidity, top, not view.readonly))
        if before is not None:  # RFC 5267 §4.3: results of SEARCH RETURN (UPDATE) that changed
            first, last = search.context_updates(self, before)
            at = next((i for i, line in enumerate(out) if line.endswith(b" EXPUNGE\r\n")
                       or line.startswith(b"* VANISHED")), len(out))
            out[at:at] = first
            out.extend(last)
        if hold and len(view.uids) != len(state.messages):
            view.stamp = ()  # expunges held back: look again after the next command
        if out:
            yield b"".join(out)

    def done(self, cmd: Command, text: str = "Completed", code: str | None = None) -> Iterator[bytes]:
        yield from self.updates(cmd)
        yield ok(cmd.tag, text, code).to_bytes()

    def changed(self, folder: Folder) -> None:
        self.on_change(folder.path)

    @property
    def rev2(self) -> bool:
        """ENABLE IMAP4rev2 was given (RFC 9051 §6.3.1): rev2's rules for this session, from
        Appendix E: no \\Recent flag nor RECENT response, SEARCH answers ESEARCH (RETURN
        (ALL)), SELECT sends LIST and no [UNSEEN], [CLOSED] when a SELECT replaces a selected
        mailbox, \\NonExistent in LIST, UID in unsolicited FETCH, mailbox names in UTF-8 both
        ways (the reader is told by the adapter), STATUS DELETED (accepted from anyone).
        LSUB, STATUS RECENT and the NEW/OLD/RECENT search keys, gone from rev2, still answer
        as in rev1 (a client that uses them gets what it asked for). Dovecot 2.3.19 announces
        no IMAP4rev2, so RFC 9051 itself is the reference here."""
        return "IMAP4rev2" in self.enabled

    # -- CONDSTORE (RFC 7162) -------------------------------------------------------------
    @property
    def condstore(self) -> bool:
        return "CONDSTORE" in self.enabled

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

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

    def idle_updates(self) -> bytes:
        """Untagged news while idling (RFC 2177); blocking."""
        return idle.idle_updates(self)

    def idle_done(self, tag: str) -> bytes:
        return idle.idle_done(self, tag)

    def hibernate(self) -> bool:
        """Drop the selected mailbox's view and caches for a compact record (an IDLE that
        waits); False (nothing changed) when it cannot be frozen (``MailboxView.freeze``)."""
        view = self.view
        if view is None or self._pending or self.frozen is not None:
            return False
        fz = view.freeze()
        if fz is None:
            return False
        self.frozen, self.view = fz, None
        return True

    def wake(self) -> None:
        """Blocking: rebuild the view ``hibernate`` dropped (the folder is read again); the
        next ``updates`` tells what changed meanwhile. A folder that is gone (deleted or
        renamed by another session) ends the selection as a UIDVALIDITY change does."""
        fz, self.frozen = self.frozen, None
        if fz is None:
            return
        try:
            folder = self.md.folder(fz.name)
            view = MailboxView.thaw(folder, folder.sync(), fz)
        except StorageError as e:
            log.info("imap: selected folder %r unavailable after hibernation: %s", fz.name, e)
            self.state = State.AUTHENTICATED
            self._pending.append(b"* BYE [UNAVAILABLE] Mailbox is gone, please reconnect\r\n")
            return
        self.view = view

    # -- authenticated ------------------------------------------------------------------
    @property
    def md(self) -> Maildir:
        """The logged-in user's Maildir."""
        assert self.maildir is not None
        return self.maildir

    # -- selected -----------------------------------------------------------------------
    @property
    def selected(self) -> MailboxView:
        """The selected mailbox (the state table lets only selected-state commands ask)."""
        assert self.view is not None
        return self.view

    def require_writable(self) -> None:
        if self.selected.readonly:  # RFC 3501 §6.3.2: EXAMINE selects read-only
            raise ImapError("NO", "Mailbox is read-only", "READ-ONLY")

    def pairs(self, cmd: Command, seqs: SequenceSet) -> list[tuple[int, int]]:
        """(sequence number, UID) of the messages ``seqs`` names (UIDs if ``cmd.uid``)."""
        try:
            return self.selected.resolve(seqs, cmd.uid, self.selected.saved)  # RFC 5182 "$"
        except ValueError:
            raise ImapError("BAD", "Invalid message sequence number") from None
