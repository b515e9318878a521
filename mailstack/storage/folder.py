"""One mailbox (INBOX or a `.Name` folder) shared by IMAP and POP3.

Layout and formats are Dovecot's, so Dovecot and mailstack can share the folder:
messages in `cur/` (and `new/` until the first sync), UIDs in `dovecot-uidlist`
(see uidlist.py), keyword letters in `dovecot-keywords`, flags in `:2,` file names.

Invariants:
- UIDs are assigned, and `dovecot-uidlist` changed, only under the
  `dovecot-uidlist.lock` dotlock; a UID once given to a base name is never reused and
  stays with it across re-syncs, processes and Dovecot.
- `sync()` never opens a message file: sizes come from `,S=`/`,W=` in the name (a
  message without `W=` is read once and its size kept in the uidlist `W` extension,
  as Dovecot does), the internal date is the file's mtime (a stat, cached).
- The uidlist is rewritten (write_durable) only when it changed, and a rewrite keeps
  every record's extension fields (Dovecot's `P` saved POP3 UIDLs, `O`, `G`, ...).
- A message's POP3 UIDL is its `P` field when it has one, else Dovecot's default
  `%08Xu%08Xv` in lower-case hex (`FolderState.pop3_uidl`).
- Files are renamed or removed by other processes at any time: every mutation that
  finds its file gone re-syncs and retries, and a file missing after that is a
  message expunged by someone else (`MessageNotFound`, or silently skipped in bulk).
- Flag changes (`update_flags`) are applied to the name the file has at the rename,
  retried as the same change when another writer renamed it first: no lock, and no
  writer ever undoes another's flags (sessions, processes, hosts, Dovecot).
- A new message is fsynced in `tmp/` before it is renamed into `cur/`, and `cur/`
  is fsynced before its UID is returned.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from . import hooks, quota, tmpclean
from .errors import MessageNotFound, StorageError, TooManyKeywords
from .filename import LETTER_TO_FLAG, flag_letters, lf_and_vsize, new_basename, size_from_name, split_name, with_flags
from .lock import DotLock
from .safeio import create_exclusive, fsync_dir, write_durable
from .uidlist import (
    KEYWORDS_NAME,
    MAX_KEYWORDS,
    UIDLIST_NAME,
    UidList,
    UidRecord,
    format_keywords,
    format_uidlist,
    next_uidvalidity,
    parse_keywords,
    parse_uidlist,
)

if TYPE_CHECKING:
    from .maildir import Maildir

__all__ = ["Folder", "FolderState", "MessageInfo", "default_pop3_uidl"]

log = logging.getLogger(__name__)

# update_flags: how many times a rename that lost a race is tried again. Each failure
# means another writer renamed the file first; this bound only stops a runaway loop.
_FLAG_RETRIES = 1000
_RENAME_RETRIES = 5  # fresh listings of cur/ before a base missing from one counts as expunged

_LINK_FALLBACK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES}


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message as of the last sync. flags: IMAP system flags (`\\Seen`, ...)."""

    uid: int
    filename: str  # current full name in cur/
    flags: frozenset[str]
    keywords: frozenset[str]
    size: int  # bytes on disk (LF), S=
    vsize: int  # bytes with CRLF line ends (RFC822.SIZE, POP3), W=
    internaldate: datetime  # file mtime, UTC

    @property
    def base(self) -> str:
        return self.filename.partition(":")[0]


@dataclass(frozen=True)
class FolderState:
    """An immutable snapshot: messages sorted by UID.

    saved_uidls: the POP3 UIDLs kept in the uidlist's `P` fields (uid -> UIDL, an empty
    `P` already resolved to the base name), see `pop3_uidl`.
    guids: the message GUIDs kept in the uidlist's `G` fields (uid -> GUID), see `message_guid`.
    mailbox_guid: the uidlist header's `G` (32 hex digits): the folder's identity, which moves
    with its directory on a rename and is new for a folder deleted and made again.
    """

    uidvalidity: int
    uidnext: int
    messages: tuple[MessageInfo, ...]
    _index: dict[int, int] = field(default_factory=dict, repr=False, compare=False)
    saved_uidls: Mapping[int, str] = field(default_factory=dict, repr=False)
    guids: Mapping[int, str] = field(default_factory=dict, repr=False)
    mailbox_guid: str = ""

    def __post_init__(self) -> None:
        if not self._index:
            self._index.update((m.uid, i) for i, m in enumerate(self.messages))

    def get(self, uid: int) -> MessageInfo | None:
        i = self._index.get(uid)
        return None if i is None else self.messages[i]

    def uids(self) -> list[int]:
        return [m.uid for m in self.messages]

    def pop3_uidl(self, msg: MessageInfo) -> str:
        """The POP3 UIDL Dovecot would give this message (docs/on-disk.md).

        As Dovecot's pop3_get_uid(): the UIDL saved in the record's `P` field when there
        is one (written by Dovecot's `pop3_save_uidl = yes`, or by a migration that kept
        another server's UIDLs), else Dovecot's default `pop3_uidl_format = %08Xu%08Xv`:
        UID then UIDVALIDITY, 8 lower-case hex digits each, as Dovecot's `%X` prints them
        (POP3 clients compare UIDLs as exact strings).
        """
        return self.saved_uidls.get(msg.uid) or default_pop3_uidl(msg.uid, self.uidvalidity)

    def message_guid(self, msg: MessageInfo) -> str:
        """The message's GUID as Dovecot's Maildir sees it: the record's `G` field when there
        is one (written for a copy, whose file has a new name), else the base name."""
        return self.guids.get(msg.uid) or msg.base

    def _with(self, msg: MessageInfo) -> FolderState:
        i = self._index[msg.uid]
        msgs = list(self.messages)
        msgs[i] = msg
        return FolderState(self.uidvalidity, self.uidnext, tuple(msgs), self._index, self.saved_uidls, self.guids,
                           self.mailbox_guid)


def default_pop3_uidl(uid: int, uidvalidity: int) -> str:
    """Dovecot's default `pop3_uidl_format = %08Xu%08Xv`: its `%X` is lower-case hex."""
    return f"{uid:08x}{uidvalidity:08x}"


def _valid_uidl(text: str) -> bool:
    """RFC 1939 §7: a unique-id is made of the characters 0x21-0x7E.

    Its "1 to 70 characters" is not enforced: Dovecot serves longer saved UIDLs (Maildir
    base names, `%f`), and the client already knows them by those strings.
    """
    return bool(text) and all("!" <= c <= "~" for c in text)


def _saved_uidl(rec: UidRecord) -> str | None:
    """The UIDL in a record's `P` field; Dovecot writes an empty `P` for "the base name"
    (maildir_update_pop3_uidl's optimisation, read back by MAIL_FETCH_UIDL_BACKEND)."""
    value = rec.ext.get("P")
    if value is None:
        return None
    uidl = value or rec.base
    return uidl if _valid_uidl(uidl) else None


def _sort_key(base: str) -> tuple[int, int, str]:
    """Dovecot's maildir_filename_sort_cmp: seconds, then microseconds, then the name."""
    sec_s, _, rest = base.partition(".")
    usec = 0
    if rest.startswith("M"):
        digits = ""
        for c in rest[1:]:
            if not c.isdigit():
                break
            digits += c
        usec = int(digits) if digits else 0
    return (int(sec_s) if sec_s.isdigit() else 0, usec, base)


def _timestamp(value: datetime | float | int | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


class Folder:
    """A Maildir++ folder. Get one from `Maildir.folder(name)`."""

    def __init__(self, maildir: Maildir, name: str, path: Path):
        self.maildir = maildir
        self.name = name
        self.path = path
        self.cur = path / "cur"
        self.new = path / "new"
        self.tmp = path / "tmp"
        self._uidlist_path = path / UIDLIST_NAME
        self._keywords_path = path / KEYWORDS_NAME
        self._lock = DotLock(self._uidlist_path)
        self._ul: UidList | None = None
        self._ul_key: tuple[int, int, int] | None = None
        self._kw: dict[int, str] = {}
        self._kw_key: tuple[int, int, int] | None = None
        self._mtimes: dict[str, int] = {}
        self._name_sizes: dict[str, tuple[int | None, int | None]] = {}
        self._infos: dict[str, MessageInfo] = {}
        self._infos_kw: dict[int, str] | None = None
        self._flag_memo: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self._state: FolderState | None = None
        self._bad_uidls: set[int] = set()  # UIDs whose broken `P` field was logged already

    def __repr__(self) -> str:
        return f"Folder({self.name!r}, {str(self.path)!r})"

    # ------------------------------------------------------------------ files

    @staticmethod
    def _stat_key(path: Path) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load_uidlist(self) -> UidList | None:
        key = self._stat_key(self._uidlist_path)
        if key is None:
            self._ul, self._ul_key = None, None
            return None
        if key == self._ul_key and self._ul is not None:
            return self._ul
        try:
            data = self._uidlist_path.read_bytes()
        except FileNotFoundError:
            return None
        ul = parse_uidlist(data)
        if ul is None:
            log.warning("broken %s: rebuilding it with a new UIDVALIDITY", self._uidlist_path)
        self._ul, self._ul_key = ul, key
        return ul

    def _write_uidlist(self, ul: UidList) -> None:
        write_durable(self._uidlist_path, format_uidlist(ul))
        self._ul, self._ul_key = ul, self._stat_key(self._uidlist_path)

    def _load_keywords(self) -> dict[int, str]:
        key = self._stat_key(self._keywords_path)
        if key is None:
            if self._kw_key is not None or self._kw:
                self._flag_memo = {}
                self._kw, self._kw_key = {}, None
        elif key != self._kw_key:
            try:
                self._kw = parse_keywords(self._keywords_path.read_bytes())
            except FileNotFoundError:
                self._kw = {}
            self._kw_key = key
            self._flag_memo = {}
        return self._kw

    def _keyword_letters(self, keywords: Iterable[str], locked: bool) -> str:
        """Letters for keyword names, creating entries in dovecot-keywords when needed."""
        wanted = list(dict.fromkeys(keywords))
        if not wanted:
            return ""
        for k in wanted:
            if not k or any(c in k for c in " \t\r\n\0") or k.startswith("\\"):
                raise StorageError(f"invalid keyword {k!r}")
        kws = self._load_keywords()
        by_name = {v.lower(): i for i, v in kws.items()}
        if any(k.lower() not in by_name for k in wanted):
            if not locked:
                with self._lock:
                    return self._keyword_letters(wanted, locked=True)
            kws = dict(kws)
            for k in wanted:
                if k.lower() in by_name:
                    continue
                free = next((i for i in range(MAX_KEYWORDS) if i not in kws), None)
                if free is None:
                    raise TooManyKeywords(f"folder {self.name} already has {MAX_KEYWORDS} keywords")
                kws[free] = k
                by_name[k.lower()] = free
            write_durable(self._keywords_path, format_keywords(kws))
            self._kw, self._kw_key = kws, self._stat_key(self._keywords_path)
            self._flag_memo = {}
        return "".join(sorted(chr(ord("a") + by_name[k.lower()]) for k in wanted))

    def _decode_letters(self, letters: str | None) -> tuple[frozenset[str], frozenset[str]]:
        if not letters:
            return frozenset(), frozenset()
        flags = frozenset(LETTER_TO_FLAG[c] for c in letters if c in LETTER_TO_FLAG)
        kws = self._kw
        keywords = frozenset(kws[ord(c) - 97] for c in letters if "a" <= c <= "z" and (ord(c) - 97) in kws)
        return flags, keywords

    # ------------------------------------------------------------------ sync

    def sync(self) -> FolderState:
        """Bring dovecot-uidlist up to date with cur/ and new/; return the new state."""
        with self._lock:
            return self._sync_locked()

    @property
    def state(self) -> FolderState:
        """The last synced state (syncs once if there is none yet)."""
        return self._state if self._state is not None else self.sync()

    def _scan_cur(self) -> dict[str, str]:
        names: list[str] = []
        for _ in range(5):
            before = os.stat(self.cur).st_mtime_ns
            names = os.listdir(self.cur)
            if os.stat(self.cur).st_mtime_ns == before:
                break  # nobody renamed in cur/ while we read it: the listing is whole
        return {n.partition(":")[0]: n for n in names if not n.startswith(".")}

    def _move_new(self) -> None:
        try:
            names = os.listdir(self.new)
        except FileNotFoundError:
            raise StorageError(f"folder directory missing: {self.new}") from None
        for name in names:
            if name.startswith("."):
                continue
            base, letters = split_name(name)
            target = name if letters is not None else base + ":2,"
            try:
                os.rename(self.new / name, self.cur / target)
            except FileNotFoundError:
                pass  # another process moved it first

    def _vsize_of(self, name: str) -> int | None:
        try:
            with open(self.cur / name, "rb") as f:
                _, vsize = lf_and_vsize(f.read())
        except FileNotFoundError:
            return None
        return vsize

    def _sync_locked(self) -> FolderState:
        ul = self._load_uidlist()
        self._ul_key = None  # we change ul in place: re-read it if this sync fails half-way
        changed = False
        if ul is None:
            ul = UidList.new(next_uidvalidity(self.maildir.root))
            changed = True
        if ul.guid_new:  # made up when read: written now, or each read would make another
            ul.guid_new = False
            changed = True
        self._move_new()
        by_base = self._scan_cur()
        missing = [r.base for r in ul.records if r.base not in by_base]
        for _ in range(_RENAME_RETRIES if missing else 0):
            # A base the uidlist knows but the listing lacks is expunged, or was renamed
            # while cur/ was read (readdir does not promise to show an entry renamed
            # during the listing, and directory mtimes are too coarse to tell). Dropping
            # its record would give the message a new UID when it reappears, so each
            # absence is confirmed by later listings first.
            again = self._scan_cur()
            found = {b: again[b] for b in missing if b in again}
            if not found:
                break
            by_base.update(found)
            missing = [b for b in missing if b not in found]

        records = [r for r in ul.records if r.base in by_base]
        if len(records) != len(ul.records):
            changed = True
        known = {r.base for r in records}
        fresh = sorted((b for b in by_base if b not in known), key=_sort_key)
        for base in fresh:
            records.append(UidRecord(ul.nextuid, base))
            ul.nextuid += 1
            changed = True
        sizes = self._name_sizes
        for rec in records:
            if "W" not in rec.ext and (sizes.get(rec.base) or self._parse_sizes(rec.base))[1] is None:
                vsize = self._vsize_of(by_base[rec.base])
                if vsize is not None:
                    rec.ext["W"] = str(vsize)
                    changed = True
        ul.records = records
        if changed:
            self._write_uidlist(ul)
        else:
            self._ul, self._ul_key = ul, self._stat_key(self._uidlist_path)
        self._load_keywords()
        self._state = self._build_state(ul, by_base)
        return self._state

    def _build_state(self, ul: UidList, by_base: dict[str, str]) -> FolderState:
        mtimes = self._mtimes
        memo = self._flag_memo
        name_sizes = self._name_sizes
        msgs: list[MessageInfo] = []
        live: dict[str, int] = {}
        live_sizes: dict[str, tuple[int | None, int | None]] = {}
        utc = timezone.utc
        old_infos = self._infos if self._infos_kw is self._kw else {}
        infos: dict[str, MessageInfo] = {}
        saved: dict[int, str] = {}
        guids: dict[int, str] = {}
        for rec in ul.records:
            base = rec.base
            name = by_base.get(base)
            if name is None:
                continue
            if rec.ext.get("G"):
                guids[rec.uid] = rec.ext["G"]
            if "P" in rec.ext:
                uidl = _saved_uidl(rec)
                if uidl is not None:
                    saved[rec.uid] = uidl
                elif rec.uid not in self._bad_uidls:
                    # Not sendable as a POP3 UIDL (RFC 1939 §7): the default one is served
                    # instead; only this message may be fetched again by a client.
                    self._bad_uidls.add(rec.uid)
                    log.warning("%s: UID %d has an unusable POP3 UIDL %r in its P field, serving %s",
                                self._uidlist_path, rec.uid, rec.ext["P"], default_pop3_uidl(rec.uid, ul.uidvalidity))
            known = old_infos.get(name)
            if known is not None and known.uid == rec.uid:
                msgs.append(known)
                infos[name] = known
                live[base] = mtimes[base]
                live_sizes[base] = name_sizes[base]
                continue
            mtime = mtimes.get(base)
            if mtime is None:
                found = self._stat_base(base, name)
                if found is None:
                    continue  # expunged by someone else a moment ago
                name, mtime = found
            live[base] = mtime
            sizes = name_sizes.get(base) or self._parse_sizes(base)
            live_sizes[base] = sizes
            letters = name[len(base) + 3 :] if name.startswith(":2,", len(base)) else ""
            decoded = memo.get(letters)
            if decoded is None:
                flags, kws = self._decode_letters(letters)
                memo[letters] = decoded = (flags, kws)
            size, vsize = sizes
            if size is None:
                size = int(rec.ext.get("S") or self._lstat_size(name))
            if vsize is None:
                vsize = int(rec.ext.get("W") or size)
            info = MessageInfo(rec.uid, name, decoded[0], decoded[1], size, vsize, datetime.fromtimestamp(mtime, utc))
            msgs.append(info)
            infos[name] = info
        self._infos, self._infos_kw = infos, self._kw
        self._mtimes = live
        self._name_sizes = live_sizes
        return FolderState(ul.uidvalidity, ul.nextuid, tuple(msgs), saved_uidls=saved, guids=guids,
                           mailbox_guid=ul.guid)

    def _stat_base(self, base: str, name: str) -> tuple[str, int] | None:
        """(current name, mtime) of the message file ``base``; None once it is gone.

        The name from the scan may have been renamed (a flag change by another session or
        process) before this stat: that is not an expunge, so cur/ is listed again to find
        the new name. Only a base missing from a fresh listing counts as expunged, never a
        stale name (treating it as gone made the message vanish from the state, and an
        IMAP client saw it expunged while it was only being flagged).
        """
        for _ in range(_RENAME_RETRIES):
            try:
                return name, int(os.stat(self.cur / name).st_mtime)
            except FileNotFoundError:
                current = self._scan_cur().get(base)
                if current is None:
                    return None
                name = current
        return None

    def _parse_sizes(self, base: str) -> tuple[int | None, int | None]:
        sizes = (size_from_name(base, "S"), size_from_name(base, "W"))
        self._name_sizes[base] = sizes
        return sizes

    def _lstat_size(self, name: str) -> int:
        try:
            return os.lstat(self.cur / name).st_size
        except FileNotFoundError:
            return 0

    def _invalidate_flag_memo(self) -> None:
        self._flag_memo = {}

    # ------------------------------------------------------------------ lookups

    def _lookup(self, uid: int, fresh: bool = False) -> MessageInfo:
        state = self.sync() if (fresh or self._state is None) else self._state
        info = state.get(uid)
        if info is None and not fresh:
            info = self.sync().get(uid)
        if info is None:
            raise MessageNotFound(f"UID {uid} is not in {self.name}")
        return info

    def open_path(self, uid: int) -> Path:
        """Path of the message file (it may still be renamed by others: use read() when you can)."""
        info = self._lookup(uid)
        path = self.cur / info.filename
        if not path.exists():
            path = self.cur / self._lookup(uid, fresh=True).filename
        return path

    def read(self, uid: int) -> bytes:
        """The message as stored (LF line ends)."""
        info = self._lookup(uid)
        for _ in range(3):
            try:
                with open(self.cur / info.filename, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                info = self._lookup(uid, fresh=True)
        raise MessageNotFound(f"UID {uid} keeps vanishing in {self.name}")

    # ------------------------------------------------------------------ flags

    def set_flags(self, uid: int, flags: Iterable[str], keywords: Iterable[str] | None = None) -> MessageInfo:
        """Replace the system flags (and keywords, unless None) of one message.

        A replace is the same whatever the flags on disk were; to add or remove flags use
        ``update_flags``, which applies only the change to the flags on disk.
        """
        return self.update_flags(uid, replace=flags, replace_keywords=keywords)

    def _known_keyword_letters(self, keywords: Iterable[str]) -> str:
        """Letters of keywords already in dovecot-keywords (unknown ones: no letter)."""
        wanted = {k.lower() for k in keywords}
        if not wanted:
            return ""
        kws = self._load_keywords()
        return "".join(sorted(chr(97 + i) for i, v in kws.items() if v.lower() in wanted))

    def update_flags(
        self,
        uid: int,
        *,
        add: Iterable[str] = (),
        remove: Iterable[str] = (),
        replace: Iterable[str] | None = None,
        add_keywords: Iterable[str] = (),
        remove_keywords: Iterable[str] = (),
        replace_keywords: Iterable[str] | None = None,
    ) -> MessageInfo:
        """Change one message's flags as they are on disk now; returns what was written.

        ``replace`` / ``replace_keywords`` (when not None) set the whole system flag /
        keyword set; otherwise ``add`` and ``remove`` (then ``add_keywords`` and
        ``remove_keywords``) are applied to the flags found in the file name at the moment
        of the rename (IMAP STORE +FLAGS / -FLAGS, RFC 3501 §6.4.6). Letters we do not
        know (e.g. Maildir's ``P``) are kept.

        No lock is needed, and none is taken, across sessions, processes or hosts sharing
        the folder: the new name is computed from the name the file has, and rename(2) of
        a name that no longer exists fails (ENOENT) atomically. When it fails someone
        else renamed the file (changed its flags) first, so the current name is looked
        up again and the same *change* is applied to it, never a stale full set; each
        failure means another writer succeeded, so the loop makes progress. A message
        whose flags already are the wanted ones is not renamed, but its name is checked
        to still exist (the check is then the linearization point).
        ``MessageNotFound`` if the message was expunged.
        """
        add_l = flag_letters(add)
        remove_l = set(flag_letters(remove))
        replace_l = None if replace is None else flag_letters(replace)
        # Keywords get letters (and dovecot-keywords entries) before any rename.
        add_kw = self._keyword_letters(add_keywords, locked=False)
        replace_kw = None if replace_keywords is None else self._keyword_letters(replace_keywords, locked=False)
        remove_kw = set(self._known_keyword_letters(remove_keywords))
        info = self._lookup(uid)
        for _ in range(_FLAG_RETRIES):
            base, old = split_name(info.filename)
            old = old or ""
            if replace_l is not None:
                sys_l = replace_l
            else:
                sys_l = "".join((set(c for c in old if c in "DFRST") | set(add_l)) - remove_l)
            if replace_kw is not None:
                kw_l = replace_kw
            else:
                kw_l = "".join((set(c for c in old if "a" <= c <= "z") | set(add_kw)) - remove_kw)
            new_name = with_flags(base, old, sys_l, kw_l)
            try:
                if new_name == info.filename:
                    os.stat(self.cur / new_name)
                else:
                    os.rename(self.cur / info.filename, self.cur / new_name)
                    hooks.changed(self.path)
            except FileNotFoundError:
                info = self._lookup(uid, fresh=True)  # renamed by someone else: apply the change again
                continue
            self._load_keywords()
            self._invalidate_flag_memo()
            new_flags, new_kws = self._decode_letters(new_name[len(base) + 3 :])
            new_info = dataclasses.replace(info, filename=new_name, flags=new_flags, keywords=new_kws)
            if self._state is not None and self._state.get(uid) not in (None, new_info):
                self._state = self._state._with(new_info)
            return new_info
        raise StorageError(f"UID {uid} in {self.name}: file keeps changing under us")

    # ------------------------------------------------------------------ expunge

    def expunge(self, uids: Iterable[int]) -> list[int]:
        """Remove messages; returns the UIDs this call removed (others' removals are skipped)."""
        wanted = set(uids)
        if not wanted:
            return []
        removed: list[MessageInfo] = []
        with self._lock:
            state = self._sync_locked()
            pending = [m for m in state.messages if m.uid in wanted]
            for _ in range(3):
                retry: list[MessageInfo] = []
                for info in pending:
                    try:
                        os.unlink(self.cur / info.filename)
                        removed.append(info)
                    except FileNotFoundError:
                        retry.append(info)
                if not retry:
                    break
                by_base = self._scan_cur()
                pending = [replace(m, filename=by_base[m.base]) for m in retry if m.base in by_base]
            if removed:
                fsync_dir(self.cur)
                self._sync_locked()
        if removed:
            quota.update(self.maildir.root, -sum(m.size for m in removed), -len(removed))
            hooks.changed(self.path)
        return sorted(m.uid for m in removed)

    # ------------------------------------------------------------------ adding

    def _assign_locked(self, bases: Sequence[str], guids: Mapping[str, str] | None = None) -> dict[str, int]:
        """Give UIDs to base names already in cur/ (must hold the lock); ``guids``: the
        message GUID to keep in the new record's `G` field, by base name (copies)."""
        ul = self._load_uidlist()
        if ul is None:
            state = self._sync_locked()
            return {m.base: m.uid for m in state.messages if m.base in set(bases)}
        self._ul_key = None  # changed in place below: re-read it if the write fails
        existing = {r.base: r.uid for r in ul.records}
        out: dict[str, int] = {}
        for base in bases:
            uid = existing.get(base)
            if uid is None:
                uid = ul.nextuid
                ul.nextuid += 1
                guid = (guids or {}).get(base)
                ul.records.append(UidRecord(uid, base, {"G": guid} if guid else {}))
                existing[base] = uid
            out[base] = uid
        self._write_uidlist(ul)
        return out

    def _new_tmp(self, data: bytes, size: int, vsize: int, mtime: float | None) -> str:
        for _ in range(100):
            base = new_basename(size, vsize)
            try:
                create_exclusive(self.tmp / base, data)
            except FileExistsError:
                continue
            if mtime is not None:
                # INTERNALDATE is the mtime; atime stays "now" so that the tmp/ cleaner
                # (storage.tmpclean) never takes this file for a crashed writer's.
                os.utime(self.tmp / base, (time.time(), mtime))
            return base
        raise StorageError(f"cannot create a unique file in {self.tmp}")

    def append(
        self,
        data: bytes,
        flags: Iterable[str] = (),
        internaldate: datetime | float | None = None,
        keywords: Iterable[str] = (),
    ) -> int:
        """Store a message (CRLF or LF in, LF on disk) with flags; returns its UID."""
        lf, vsize = lf_and_vsize(data)
        letters = flag_letters(flags)
        base = self._new_tmp(lf, len(lf), vsize, _timestamp(internaldate))
        try:
            with self._lock:
                kw_letters = self._keyword_letters(keywords, locked=True)
                os.rename(self.tmp / base, self.cur / with_flags(base, None, letters, kw_letters))
                fsync_dir(self.cur)
                uid = self._assign_locked([base])[base]
        except BaseException:
            try:
                os.unlink(self.tmp / base)
            except OSError:
                pass
            raise
        quota.update(self.maildir.root, len(lf), 1)
        hooks.stored(self.path, base, lf)
        return uid

    def _place_copy(self, info: MessageInfo, other: Folder) -> str | None:
        """Hard-link (or copy) a message into other's tmp/; returns the new base name."""
        for _ in range(3):
            src = self.cur / info.filename
            for _ in range(100):
                base = new_basename(info.size, info.vsize)
                dst = other.tmp / base
                try:
                    os.link(src, dst)
                    return base
                except FileExistsError:
                    continue
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno not in _LINK_FALLBACK_ERRNOS:
                        raise
                    try:
                        with open(src, "rb") as f:
                            content = f.read()
                        mtime = os.stat(src).st_mtime
                    except FileNotFoundError:
                        break
                    try:
                        create_exclusive(dst, content)
                    except FileExistsError:
                        continue
                    os.utime(dst, (time.time(), mtime))  # atime now: see _new_tmp
                    return base
            # source renamed or removed by another session: look again
            try:
                info = self._lookup(info.uid, fresh=True)
            except MessageNotFound:
                return None
        return None

    def copy_to(self, uids: Iterable[int], other: Folder) -> list[tuple[int, int]]:
        """Copy messages (with flags and keywords) into other; returns [(old uid, new uid)]."""
        state = self.state
        wanted = sorted(set(uids))
        if any(state.get(u) is None for u in wanted):
            state = self.sync()
        placed: list[tuple[MessageInfo, str]] = []
        guids: dict[str, str] = {}  # RFC 8474 §5.1: a copy keeps the EMAILID (the message GUID)
        try:
            for uid in wanted:
                info = state.get(uid)
                if info is None:
                    continue  # expunged meanwhile: IMAP COPY skips it
                base = self._place_copy(info, other)
                if base is not None:
                    placed.append((info, base))
                    guid = state.message_guid(info)
                    if guid and not any(c.isspace() for c in guid):
                        guids[base] = guid
            if not placed:
                return []
            with other._lock:
                for info, base in placed:
                    _, old_letters = split_name(info.filename)
                    kw = other._keyword_letters(sorted(info.keywords), locked=True)
                    sys_letters = "".join(c for c in (old_letters or "") if c in "DFRST")
                    os.rename(other.tmp / base, other.cur / with_flags(base, None, sys_letters, kw))
                fsync_dir(other.cur)
                new_uids = other._assign_locked([b for _, b in placed], guids)
        except BaseException:
            for _, base in placed:
                try:
                    os.unlink(other.tmp / base)
                except OSError:
                    pass
            raise
        quota.update(other.maildir.root, sum(i.size for i, _ in placed), len(placed))
        hooks.changed(other.path)
        return [(info.uid, new_uids[base]) for info, base in placed]

    def move_to(self, uids: Iterable[int], other: Folder) -> list[tuple[int, int]]:
        """copy_to, then expunge the originals (RFC 6851 MOVE semantics)."""
        pairs = self.copy_to(uids, other)
        if pairs:
            self.expunge([old for old, _ in pairs])
        return pairs

    # ------------------------------------------------------------------ housekeeping

    def clean_tmp(self, older_than: float = tmpclean.TMP_MAX_AGE) -> int:
        """Remove what crashed writers left in tmp/ (see storage.tmpclean); how many went."""
        return tmpclean.clean_dir(self.tmp, older_than)
