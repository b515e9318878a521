"""The selected mailbox as one IMAP session sees it (RFC 3501 §2.3.1, §7.3, §7.4).

``MailboxView`` wraps a ``mailstack.storage.Folder`` and keeps what the client was last
told: the UIDs in sequence-number order, each message's flags (system flags and keywords
together, plus the session's ``\\Recent``), UIDVALIDITY and UIDNEXT. ``changes(state)``
compares a fresh ``FolderState`` with that view and returns the untagged responses that
bring the client up to date (EXPUNGE, EXISTS, RECENT, FETCH FLAGS), updating the view.

Invariants:
- ``uids`` is strictly increasing: sequence number n is ``uids[n - 1]`` (RFC 3501 §2.3.1.2),
  and lookups from UID to sequence number are a bisection, never a scan.
- The view changes only through ``changes``, ``set_flags`` and ``forget``; EXPUNGE
  responses go out highest sequence number first, so each number is valid when sent.
- Nothing here opens a message file: sizes, dates and flags come from the uidlist and
  the file names (``FolderState``), so SELECT and ``FETCH 1:* (FLAGS)`` on a folder of
  100,000 messages never read one.
- ``\\Recent`` (RFC 3501 §2.3.2) is per session and each message is recent for one
  session at most: the caller passes ``recent_floor`` (``FolderIndex.claim_recent``,
  which claims UIDs atomically across sessions and processes) and only UIDs above the
  floor it returns become recent here.
- A keyword reaches the client in ``* FLAGS`` / ``PERMANENTFLAGS`` before any FETCH
  carries it (RFC 3501 §7.2.6): ``announce`` is called wherever flags go out (``changes``
  for other sessions' and processes' changes, STORE, FETCH's implicit \\Seen).
- With ``modseq`` given (CONDSTORE enabled, RFC 7162 §3.2), unsolicited FETCH responses
  for flag changes carry ``MODSEQ (n)``.
- With ``vanished`` (QRESYNC enabled, RFC 7162 §3.2.10) expunges go out as one
  ``* VANISHED <uid-set>`` (split into lines of ``uidranges.MAX_LINE``) instead of one
  ``* n EXPUNGE`` each; the UIDs are exactly those the view drops, so the client's count
  of messages stays right.
"""

from __future__ import annotations

import dataclasses
import os
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mailstack.storage import Folder, FolderState, MessageInfo

from . import uidranges
from .contexts import UpdateContext
from .expunged import KEPT
from .responses import render_flags
from .types import SequenceSet

__all__ = ["FrozenView", "MailboxView", "SYSTEM_FLAGS", "flags_of", "folder_stamp"]

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def flags_of(info: MessageInfo) -> frozenset[str]:
    """System flags and keywords of a stored message, as IMAP shows them."""
    return info.flags | info.keywords if info.keywords else info.flags


def folder_stamp(folder: Folder) -> tuple[int, ...]:
    """A cheap fingerprint of a folder's state: changes whenever a message arrives, is
    renamed (flags) or removed, or the uidlist / keywords change (any process)."""
    out: list[int] = []
    for p in (folder.new, folder.cur, folder.path / "dovecot-uidlist", folder.path / "dovecot-keywords"):
        try:
            st = os.stat(p)
            out.extend((st.st_mtime_ns, st.st_ino, st.st_size))
        except FileNotFoundError:
            out.extend((0, 0, 0))
    return tuple(out)


@dataclass(frozen=True)
class Snapshot:
    """One message as the client knows it."""

    seq: int
    uid: int
    info: MessageInfo
    flags: frozenset[str]  # incl. \\Recent


@dataclass(frozen=True, slots=True)
class FrozenView:
    """What a client was told about its selected mailbox, compactly (``MailboxView.freeze``):
    ``uids`` in sequence order, ``told[i]`` the index in ``flagsets`` of the flags the client
    knows for ``uids[i]`` (without \\Recent, kept in ``recent``)."""

    name: str  # the folder's IMAP name
    readonly: bool
    uidvalidity: int
    uidnext: int
    uids: array[int]
    told: bytes
    flagsets: tuple[frozenset[str], ...]
    recent: frozenset[int]
    announced: frozenset[str]
    saved: frozenset[int]
    rev2: bool


_FREEZE_FLAGSETS = 255  # distinct flag sets a frozen view can name (one byte each): beyond, no freeze


class MailboxView:
    """The selected mailbox of one session. Not thread-safe: one command at a time."""

    def __init__(self, folder: Folder, state: FolderState, *, readonly: bool) -> None:
        self.folder = folder
        self.readonly = readonly
        self.uidvalidity = state.uidvalidity
        self.uidnext = state.uidnext
        self.uids: list[int] = [m.uid for m in state.messages]
        self.infos: dict[int, MessageInfo] = {m.uid: m for m in state.messages}
        self.flags: dict[int, frozenset[str]] = {}  # only where they differ from flags_of(info)
        self.recent: set[int] = set()
        self.stamp = folder_stamp(folder)
        # Keywords the client has been told of in FLAGS / PERMANENTFLAGS (RFC 3501 §7.2.6);
        # SELECT sends ``flags_response()`` for these. The list only grows while selected.
        self.announced: frozenset[str] = frozenset(self.keywords())
        KEPT.register(self)  # may still FETCH what another session expunges (RFC 2180 §4.1)
        # RFC 5182 §2.1: the "$" of SEARCH RETURN (SAVE), as UIDs; empty at SELECT
        self.saved: frozenset[int] = frozenset()
        # RFC 5267 §4.3: SEARCH RETURN (UPDATE) contexts by tag; they end with the selection
        self.contexts: dict[str, UpdateContext] = {}
        # RFC 9051 (the session enabled IMAP4rev2): no \Recent flag, no RECENT response
        self.rev2 = False

    # -- lookups ------------------------------------------------------------------------
    @property
    def exists(self) -> int:
        return len(self.uids)

    @property
    def max_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def flags_for(self, uid: int) -> frozenset[str]:
        f = self.flags.get(uid)
        if f is None:
            f = flags_of(self.infos[uid])
        return f | {"\\Recent"} if uid in self.recent and not self.rev2 else f

    def seq_of(self, uid: int) -> int | None:
        i = bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def resolve(self, seqs: SequenceSet, uid: bool, saved: Iterable[int] = ()) -> list[tuple[int, int]]:
        """(seq, uid) pairs a sequence set names, in ascending order.

        Sequence numbers beyond EXISTS raise ``ValueError`` (RFC 3501 §9: invalid);
        UID sets simply skip UIDs that do not exist (RFC 3501 §6.4.8).
        """
        if seqs.saved:
            wanted = set(saved)
            return [(i + 1, u) for i, u in enumerate(self.uids) if u in wanted]
        if uid:
            largest = self.max_uid
            if not self.uids:
                return []
            out: list[tuple[int, int]] = []
            for lo, hi in seqs.spans(largest):  # sorted and disjoint: each cut out by bisection
                a, b = bisect_left(self.uids, lo), bisect_left(self.uids, hi + 1)
                out.extend((i + 1, self.uids[i]) for i in range(a, b))
            return out
        n = self.exists
        if seqs.max_number() > n:
            raise ValueError("Invalid message sequence number")
        if n == 0:
            return []
        return [(s, self.uids[s - 1]) for s in seqs.resolve(n)]

    def info(self, uid: int) -> MessageInfo:
        return self.infos[uid]

    def keywords(self) -> list[str]:
        """Keywords in use in this folder (for FLAGS / PERMANENTFLAGS)."""
        seen: set[str] = set()
        for info in self.infos.values():
            if info.keywords:
                seen |= info.keywords
        return sorted(seen)

    def flags_response(self) -> bytes:
        """``* FLAGS`` and ``* OK [PERMANENTFLAGS]`` (RFC 3501 §7.2.6, §7.1) for the
        system flags and the announced keywords."""
        flag_list = " ".join(list(SYSTEM_FLAGS) + sorted(self.announced))
        perm = (f"* OK [PERMANENTFLAGS ({flag_list} \\*)] Flags permitted\r\n" if not self.readonly
                else "* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n")
        return f"* FLAGS ({flag_list})\r\n{perm}".encode("ascii")

    def announce(self, flags: Iterable[str]) -> list[bytes]:
        """RFC 3501 §7.2.6: a keyword reaches the client in FLAGS before any FETCH carries it.
        The FLAGS / PERMANENTFLAGS responses to send first if ``flags`` hold keywords the
        client has not been told of (none otherwise); marks them told."""
        new = {f for f in flags if not f.startswith("\\")} - self.announced
        if not new:
            return []
        self.announced |= new
        return [self.flags_response()]

    # -- hibernation ----------------------------------------------------------------------
    def freeze(self) -> FrozenView | None:
        """A compact record of what the client was told (None: this view cannot be frozen:
        SEARCH RETURN (UPDATE) contexts are open, or over ``_FREEZE_FLAGSETS`` flag sets)."""
        if self.contexts:
            return None
        index: dict[frozenset[str], int] = {}
        told = bytearray(len(self.uids))
        for i, uid in enumerate(self.uids):
            f = self.flags.get(uid)
            if f is None:
                f = flags_of(self.infos[uid])
            n = index.setdefault(f, len(index))
            if n >= _FREEZE_FLAGSETS:
                return None
            told[i] = n
        return FrozenView(self.folder.name, self.readonly, self.uidvalidity, self.uidnext, array("I", self.uids),
                          bytes(told), tuple(index), frozenset(self.recent), self.announced, self.saved, self.rev2)

    @classmethod
    def thaw(cls, folder: Folder, state: FolderState, fz: FrozenView) -> MailboxView:
        """The view ``fz`` was frozen from, over ``state``: its next ``changes(state)`` tells
        the client what changed since (a UIDVALIDITY change is the caller's to see)."""
        view = cls(folder, state, readonly=fz.readonly)
        view.uidvalidity, view.uidnext = fz.uidvalidity, fz.uidnext
        view.uids = fz.uids.tolist()
        infos: dict[int, MessageInfo] = {}
        for uid, n in zip(view.uids, fz.told):
            info = state.get(uid)
            if info is None:
                continue  # expunged meanwhile: changes() reports it
            told = fz.flagsets[n]
            if flags_of(info) != told:
                # changed meanwhile: a file name that matches nothing makes changes() compare
                # what the client was told (``flags``) with what is stored now
                info = dataclasses.replace(info, filename="")
                view.flags[uid] = told
            infos[uid] = info
        view.infos = infos
        view.recent = set(fz.recent)
        view.announced = fz.announced
        view.saved = fz.saved
        view.rev2 = fz.rev2
        view.stamp = ()  # the next updates() syncs and compares
        return view

    # -- changes ------------------------------------------------------------------------
    def set_flags(self, uid: int, info: MessageInfo) -> None:
        """A flag change this session made (already in storage)."""
        self.infos[uid] = info
        self.flags.pop(uid, None)

    def forget_recent(self) -> None:
        self.recent.clear()

    def changes(self, state: FolderState, *, allow_expunge: bool = True, with_uid: bool = False,
                modseq: Callable[[int], int] | None = None,
                recent_floor: Callable[[int], int] | None = None, vanished: bool = False) -> list[bytes]:
        """Untagged responses for what changed since the client's view; updates the view.

        With ``allow_expunge`` False (during FETCH, STORE, SEARCH: RFC 3501 §7.4.1) removed
        messages stay in the view until a later call. ``modseq(uid)`` adds MODSEQ to the
        FETCH responses (RFC 7162 §3.2); ``recent_floor(max_uid)`` claims new arrivals as
        ``\\Recent`` and returns the UID above which they are this session's. ``vanished``
        reports expunges as VANISHED (RFC 7162 §3.2.10), not EXPUNGE.
        """
        out: list[bytes] = []
        new_uids = [m.uid for m in state.messages]
        new_set = set(new_uids) if len(new_uids) != len(self.uids) or new_uids != self.uids else None
        if new_set is not None and allow_expunge:
            gone = [u for u in self.uids if u not in new_set]
            if vanished and gone:  # RFC 7162 §3.2.10: UIDs, not sequence numbers
                out.extend(uidranges.vanished_responses(uidranges.from_sorted(gone)))
                self.uids = [u for u in self.uids if u in new_set]
            for u in reversed(gone):
                if not vanished:
                    seq = self.seq_of(u)
                    assert seq is not None
                    out.append(b"* %d EXPUNGE\r\n" % seq)
                    del self.uids[seq - 1]
                self.infos.pop(u, None)
                self.flags.pop(u, None)
                self.recent.discard(u)
            if gone:
                KEPT.release()  # this session was told: files kept for it may go
        # keywords new to this folder (set by others, or found on disk): FLAGS first
        out.extend(self.announce(k for m in state.messages if m.keywords for k in m.keywords))
        # flag changes by others (FETCH FLAGS, RFC 3501 §7.4.2 unsolicited)
        for m in state.messages:
            old = self.infos.get(m.uid)
            if old is None:
                continue
            if old.filename != m.filename or old.keywords != m.keywords:
                before = self.flags_for(m.uid)
                self.infos[m.uid] = m
                self.flags.pop(m.uid, None)
                after = self.flags_for(m.uid)
                seq = self.seq_of(m.uid)
                if after != before and seq is not None:
                    uid_part = b"UID %d " % m.uid if with_uid else b""
                    mod_part = b" MODSEQ (%d)" % modseq(m.uid) if modseq is not None else b""
                    out.append(b"* %d FETCH (%sFLAGS %s%s)\r\n" % (seq, uid_part, render_flags(after), mod_part))
        top = self.max_uid
        added = [m for m in state.messages if m.uid > top]
        if added:
            floor = recent_floor(added[-1].uid) if recent_floor is not None else 0
            for m in added:
                self.uids.append(m.uid)
                self.infos[m.uid] = m
                if m.uid > floor:
                    self.recent.add(m.uid)
            out.append(b"* %d EXISTS\r\n" % self.exists)
            if not self.rev2:  # RFC 9051 Appendix E: no RECENT response in rev2
                out.append(b"* %d RECENT\r\n" % len(self.recent))
        self.uidnext = max(self.uidnext, state.uidnext)
        return out
