"""IMAP SEARCH (RFC 3501 §6.4.4; MODSEQ search key RFC 7162 §3.1.5), its RETURN options
(ESEARCH, RFC 4731; SAVE and ``$``, RFC 5182), SORT (RFC 5256; RFC 5957 SORT=DISPLAY) and
THREAD (RFC 5256 §4, the algorithms in ``imap.thread``).

The search program is evaluated by ``imap.search.matches`` over each message of the
selected mailbox; headers come from the folder index, so a SEARCH FROM over a big
mailbox reads each file at most once, ever. BODY and TEXT ask the folder's full-text
index (``imap.fts``) and read only the files it does not know yet (which it then learns).

Invariants:
- A message expunged by another process meanwhile matches as if empty; it never fails
  the command.
- ``$`` (RFC 5182) is the selected view's ``saved`` UIDs: set by RETURN (SAVE), emptied
  by a SAVE that fails, forgotten with the selection; expunged UIDs drop out by themselves.
- SORT asks the index for headers only when a key needs them (ARRIVAL and SIZE do not).
- A program with MODSEQ turns CONDSTORE on (RFC 7162 §3.1) and the response ends with
  ``(MODSEQ n)``, the highest modseq of what was found (§3.1.5).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from mailstack.storage import MessageInfo
from mailstack.storage.errors import MessageNotFound

from ..contexts import MAX_CONTEXTS, UpdateContext, partial_window, updatable
from ..effects import Output
from ..fts import BodySearch
from ..index import Entry, FolderIndex
from ..mailbox import MailboxView
from ..message import ParsedMessage
from ..objectid import email_id, save_date
from ..responses import ImapError, uid_set
from ..search import SearchContext, body_text_of, matches
from ..sort import SortItem, sort_items
from ..thread import ALGORITHMS, render_threads
from ..types import CancelUpdateArgs, Command, SearchArgs, SearchKey

if TYPE_CHECKING:
    from . import Handler
    from ..session import Session

__all__ = ["HANDLERS"]


def _has_modseq(key: SearchKey) -> bool:
    return key.kind == "MODSEQ" or any(_has_modseq(c) for c in key.children)


def _has_body(key: SearchKey) -> bool:
    return key.kind in ("BODY", "TEXT") or any(_has_body(c) for c in key.children)


def _required_body(key: SearchKey) -> str | None:
    """A BODY string every match must hold (the program is that key, or an AND of it and
    more), case-folded; None when there is none."""
    for k in (key, *key.children) if key.kind == "AND" else (key,):
        if k.kind == "BODY" and isinstance(k.value, str) and k.value:
            return k.value.casefold()
    return None


class _Searchable:
    """A ``search.SearchableMessage`` whose headers come from the index."""

    __slots__ = ("seq", "uid", "flags", "internaldate", "size", "modseq", "_entry", "_load", "_info", "_view",
                 "_idx", "_base", "_fts")

    def __init__(self, seq: int, uid: int, flags: frozenset[str], info: MessageInfo,
                 entry: Callable[[], Entry], load: Callable[[], bytes], modseq: int = 0,
                 view: MailboxView | None = None, idx: FolderIndex | None = None,
                 fts: BodySearch | None = None) -> None:
        self.seq, self.uid, self.flags = seq, uid, flags
        self.internaldate, self.size, self.modseq = info.internaldate, info.vsize, modseq
        self._entry = entry
        self._load = load
        self._info, self._view, self._idx = info, view, idx
        self._base = info.base
        self._fts = fts

    def save_date(self) -> datetime | None:  # RFC 8514
        assert self._view is not None and self._idx is not None
        return save_date(self._view.folder, self._info, self._idx)

    def email_id(self) -> str:  # RFC 8474
        assert self._view is not None
        return email_id(self._view.folder.state, self._info)

    def headers(self) -> Sequence[tuple[str, str]]:
        return self._entry().headers

    def body_text(self) -> str:
        return body_text_of(ParsedMessage(self._load()))

    def body_contains(self, needle: str) -> bool | None:
        if self._fts is None:
            return None
        return self._fts.contains(self._base, needle, self._load_or_none)

    def _load_or_none(self) -> bytes | None:
        data = self._load()
        return data if data else None  # gone (or empty): matched as empty, not indexed


def _searchable(s: Session, idx: FolderIndex, seq: int, uid: int, with_modseq: bool,
                fts: BodySearch | None = None) -> _Searchable:
    """Message ``uid`` of the selected mailbox as SEARCH sees it (headers from the index)."""
    view = s.selected
    folder = view.folder
    info = view.info(uid)

    def load() -> bytes:
        try:
            return folder.read(uid)
        except MessageNotFound:
            return b""

    def entry() -> Entry:
        return idx.entry(info.base, load)

    return _Searchable(seq, uid, view.flags_for(uid), info, entry, load, idx.modseq(uid) if with_modseq else 0,
                       view, idx, fts)


def _find(s: Session, cmd: Command, args: SearchArgs) -> tuple[list[_Searchable], bool]:
    """The messages of the selected mailbox that match ``args.key``, in sequence order, and
    whether the program has MODSEQ (then each carries its modseq)."""
    view = s.selected
    idx = s.index.get(view.folder.path)
    ctx = SearchContext(view.exists, view.max_uid, view.saved)
    found: list[_Searchable] = []
    key = args.key
    with_modseq = _has_modseq(key)
    if with_modseq:
        s.condstore_on()  # RFC 7162 §3.1
    fts = BodySearch(view.folder.path, {view.info(u).base for u in view.uids}) \
        if s.index.full_text and _has_body(key) else None
    try:
        _scan(s, view.uids, key, ctx, idx, fts, with_modseq, found)
    finally:
        if fts is not None:
            fts.close()
    return found, with_modseq


def _scan(s: Session, uids: Sequence[int], key: SearchKey, ctx: SearchContext, idx: FolderIndex,
          fts: BodySearch | None, with_modseq: bool, found: list[_Searchable]) -> None:
    view = s.selected
    needle = _required_body(key) if fts is not None else None
    for i, uid in enumerate(uids):
        if needle is not None and fts is not None and not fts.may_contain(view.info(uid).base, needle):
            continue  # the full-text index rules it out: BODY is false, so is the whole AND
        m = _searchable(s, idx, i + 1, uid, with_modseq, fts)
        if matches(key, m, ctx):
            found.append(m)


def _esearch(s: Session, cmd: Command, returns: tuple[str, ...], found: Sequence[_Searchable],
             with_modseq: bool, ordered: bool = False, partial: tuple[int, int] | None = None) -> Iterator[Output]:
    """RFC 4731 §3.1 ESEARCH response, RFC 5182 §2.1 SAVE, RFC 5267 §3.2 for SORT
    (``ordered``: MIN/MAX/ALL follow the sort order). Parts in Dovecot's order:
    MIN MAX ALL COUNT MODSEQ; MIN/MAX/ALL left out when nothing matched (RFC 4731 §3.1)."""
    ids = [m.uid if cmd.uid else m.seq for m in found]
    first = found[0] if found else None
    last = found[-1] if found else None
    if not ordered and found:
        first = min(found, key=lambda m: m.seq)
        last = max(found, key=lambda m: m.seq)
    if "SAVE" in returns:
        # RFC 5182 §2.1: with MIN and/or MAX but neither ALL nor COUNT, only those are saved
        if ("MIN" in returns or "MAX" in returns) and not ("ALL" in returns or "COUNT" in returns):
            keep = {m.uid for m in (first if "MIN" in returns else None,
                                    last if "MAX" in returns else None) if m is not None}
        else:
            keep = {m.uid for m in found}
        s.selected.saved = frozenset(keep)
        if returns == ("SAVE",):  # RFC 5182 §2.1: SAVE alone: no ESEARCH response
            return
    parts = [f'* ESEARCH (TAG "{cmd.tag}")']
    if cmd.uid:
        parts.append("UID")
    modseqs: list[int] = []
    if first is not None and last is not None:
        if "MIN" in returns:
            parts.append(f"MIN {first.uid if cmd.uid else first.seq}")
            modseqs.append(first.modseq)
        if "MAX" in returns:
            parts.append(f"MAX {last.uid if cmd.uid else last.seq}")
            modseqs.append(last.modseq)
        if "ALL" in returns:
            # in sort order for SORT (RFC 5267 §3.2): only ascending runs become ranges
            parts.append("ALL " + uid_set(ids))
            modseqs.extend(m.modseq for m in found)
    if partial is not None:  # RFC 5267 §4.4: the results at these positions, in result order
        window = partial_window(ids, *partial)
        parts.append(f"PARTIAL ({partial[0]}:{partial[1]} {uid_set(window) if window else 'NIL'})")
    if "COUNT" in returns:
        parts.append(f"COUNT {len(found)}")
        modseqs.extend(m.modseq for m in found)
    # RFC 7162 §3.1.5 / RFC 4731 §3.2: the highest modseq of the messages returned
    if with_modseq and modseqs and max(modseqs):
        parts.append(f"MODSEQ {max(modseqs)}")
    yield (" ".join(parts) + "\r\n").encode("ascii")


def _run(s: Session, cmd: Command, ordered: Callable[[list[_Searchable]], list[_Searchable]] | None,
         plain: str) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, SearchArgs)
    try:
        found, with_modseq = _find(s, cmd, args)
        if ordered is not None:
            found = ordered(found)
    except Exception:  # ImapError, StorageError: re-raised for Session.run
        if args.returns is not None and "SAVE" in args.returns:
            s.selected.saved = frozenset()  # RFC 5182 §2.1: a failed SAVE leaves $ empty
        raise
    returns = args.returns
    if returns is None and s.rev2 and ordered is None:  # RFC 9051 §6.4.4: SEARCH answers ESEARCH (ALL)
        returns = ("ALL",)
    if returns is not None and "UPDATE" in returns:
        yield from _start_update(s, cmd, args, found)
    if returns is not None:
        yield from _esearch(s, cmd, returns, found, with_modseq, ordered is not None, args.partial)
    else:
        ids = [m.uid if cmd.uid else m.seq for m in found]
        # RFC 7162 §3.1.5: with MODSEQ in the program, the highest modseq of what was found
        tail = f" (MODSEQ {max(m.modseq for m in found)})" if with_modseq and found else ""
        yield (f"* {plain}" + "".join(f" {n}" for n in ids) + tail + "\r\n").encode("ascii")
    yield from s.done(cmd, f"{plain} completed")


def _start_update(s: Session, cmd: Command, args: SearchArgs, found: Sequence[_Searchable]) -> Iterator[Output]:
    """RFC 5267 §4.3: keep this SEARCH's result up to date, or say why not (§4.3.1 NOUPDATE)."""
    view = s.selected
    why = None
    if args.sort:
        why = "Updates of SORT results are not supported"  # CONTEXT=SORT is not offered
    elif args.partial is not None:
        why = "Updates of PARTIAL results are not supported"
    elif not updatable(args.key):
        why = "Search depends on sequence numbers"
    elif cmd.tag not in view.contexts and len(view.contexts) >= MAX_CONTEXTS:
        why = "Too many contexts"
    if why is not None:
        yield f'* NO [NOUPDATE "{cmd.tag}"] {why}\r\n'.encode()  # a tag never needs escaping
        return
    view.contexts[cmd.tag] = UpdateContext(cmd.tag, args.key, cmd.uid, {m.uid for m in found},
                                           {u: view.flags_for(u) for u in view.uids})


def context_updates(s: Session, before: Sequence[int]) -> tuple[list[bytes], list[bytes]]:
    """What entered and left each update context (RFC 5267 §4.3.3-4) since it was last
    looked at; ``before`` is the view's UIDs before this round of changes. Returns the
    ESEARCH responses for expunged results (to go before the EXPUNGE responses, with the
    sequence numbers they had) and those for the rest (to go after EXISTS)."""
    view = s.selected
    present = set(view.uids)
    gone = [u for u in before if u not in present]
    idx = s.index.get(view.folder.path)
    first: list[bytes] = []
    last: list[bytes] = []
    for ctx in view.contexts.values():
        head = f'* ESEARCH (TAG "{ctx.tag}")' + (" UID" if ctx.uid else "")
        left = [u for u in gone if u in ctx.results]
        for u in gone:
            ctx.seen.pop(u, None)
        if left:
            ctx.results.difference_update(left)
            ids = left if ctx.uid else [bisect_left(before, u) + 1 for u in left]
            first.append(f"{head} REMOVEFROM (0 {uid_set(sorted(ids))})\r\n".encode())
        added: list[int] = []
        removed: list[int] = []
        search_ctx = SearchContext(view.exists, view.max_uid, view.saved)
        modseq = _has_modseq(ctx.key)
        for seq, uid in enumerate(view.uids, 1):
            flags = view.flags_for(uid)
            if ctx.seen.get(uid) == flags:
                continue
            ctx.seen[uid] = flags
            hit = matches(ctx.key, _searchable(s, idx, seq, uid, modseq), search_ctx)
            if hit and uid not in ctx.results:
                ctx.results.add(uid)
                added.append(uid if ctx.uid else seq)
            elif not hit and uid in ctx.results:
                ctx.results.discard(uid)
                removed.append(uid if ctx.uid else seq)
        tail = ""
        if removed:
            tail += f" REMOVEFROM (0 {uid_set(removed)})"
        if added:
            tail += f" ADDTO (0 {uid_set(added)})"
        if tail:
            last.append(f"{head}{tail}\r\n".encode())
    return first, last


def cancelupdate(s: Session, cmd: Command) -> Iterator[Output]:
    """CANCELUPDATE (RFC 5267 §4.3.5): no more updates for these searches."""
    args = cmd.args
    assert isinstance(args, CancelUpdateArgs)
    contexts = s.selected.contexts
    unknown = [t for t in args.tags if t not in contexts]
    if unknown:
        raise ImapError("NO", f"Unknown search update tag {unknown[0]!r}")
    for t in args.tags:
        del contexts[t]
    yield from s.done(cmd, "CANCELUPDATE completed")


def search(s: Session, cmd: Command) -> Iterator[Output]:
    """SEARCH (RFC 3501 §6.4.4) and its RETURN options (RFC 4731, RFC 5182)."""
    return _run(s, cmd, None, "SEARCH")


def sort(s: Session, cmd: Command) -> Iterator[Output]:
    """SORT (RFC 5256 §3; RFC 5957 DISPLAYFROM/DISPLAYTO): the search's result in the
    order of the sort criteria, keys from the folder index (``imap.sort``)."""
    args = cmd.args
    assert isinstance(args, SearchArgs)

    def order(found: list[_Searchable]) -> list[_Searchable]:
        items = [SortItem(m.seq, m.uid, m.internaldate, m.size, m.headers() if _needs_headers(args) else ())
                 for m in found]
        by_seq = {m.seq: m for m in found}
        return [by_seq[i.seq] for i in sort_items(items, args.sort)]

    return _run(s, cmd, order, "SORT")


def _needs_headers(args: SearchArgs) -> bool:
    return any(k not in ("ARRIVAL", "SIZE") for _, k in args.sort)


def thread(s: Session, cmd: Command) -> Iterator[Output]:
    """THREAD (RFC 5256 §4-5): the messages the search finds, threaded by the algorithm
    from what the folder index holds (Message-ID, References, In-Reply-To, Subject, Date);
    ``* THREAD`` lists sequence numbers, or UIDs for UID THREAD."""
    args = cmd.args
    assert isinstance(args, SearchArgs)
    found, _ = _find(s, cmd, args)
    items = [SortItem(m.seq, m.uid, m.internaldate, m.size, m.headers()) for m in found]
    roots = ALGORITHMS[args.thread](items)
    lists = render_threads(roots, (lambda i: i.uid) if cmd.uid else (lambda i: i.seq))
    yield (f"* THREAD {lists}\r\n" if lists else "* THREAD\r\n").encode("ascii")
    yield from s.done(cmd, "THREAD completed")


HANDLERS: Mapping[str, Handler] = {"SEARCH": search, "SORT": sort, "THREAD": thread,
                                   "CANCELUPDATE": cancelupdate}
