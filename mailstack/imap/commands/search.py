"""IMAP SEARCH (RFC 3501 §6.4.4; MODSEQ search key RFC 7162 §3.1.5).

The search program is evaluated by ``imap.search.matches`` over each message of the
selected mailbox; headers come from the folder index, so a SEARCH FROM over a big
mailbox reads each file at most once, ever. BODY and TEXT read the file.

Invariants:
- A message expunged by another process meanwhile matches as if empty; it never fails
  the command.
- A program with MODSEQ turns CONDSTORE on (RFC 7162 §3.1) and the response ends with
  ``(MODSEQ n)``, the highest modseq of what was found (§3.1.5).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from mailstack.storage import MessageInfo
from mailstack.storage.errors import MessageNotFound

from ..effects import Output
from ..index import Entry
from ..message import ParsedMessage
from ..search import SearchContext, body_text_of, matches
from ..types import Command, SearchArgs, SearchKey

if TYPE_CHECKING:
    from . import Handler
    from ..session import Session

__all__ = ["HANDLERS"]


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



def search(s: Session, cmd: Command) -> Iterator[Output]:
    args = cmd.args
    assert isinstance(args, SearchArgs)
    view = s.selected
    folder = view.folder
    idx = s.index.get(folder.path)
    ctx = SearchContext(view.exists, view.max_uid)
    found: list[int] = []
    key = args.key
    with_modseq = _has_modseq(key)
    if with_modseq:
        s.condstore_on()  # RFC 7162 §3.1
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
    yield from s.done(cmd, "SEARCH completed")


HANDLERS: Mapping[str, Handler] = {"SEARCH": search}
