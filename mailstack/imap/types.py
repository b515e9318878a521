"""Frozen values carried by parsed IMAP commands.

These are the typed arguments of ``Command`` (see ``parser``): sequence sets, FETCH
attributes and body sections, SEARCH keys, STORE actions, LIST options and the argument
records of each command. They are plain data: parsing lives in ``grammar``, evaluation in
``search`` and ``message``, rendering in ``responses``.

Invariants: every value is immutable and hashable; a value that renders itself
(``str(SequenceSet)``, ``Section.render()``) renders the form the grammar accepts back.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Union

# --------------------------------------------------------------------------- sequence sets

_INFINITY = float("inf")


@dataclass(frozen=True)
class SequenceSet:
    """A ``sequence-set`` (RFC 3501 §9): ranges of numbers, ``None`` standing for ``*``.

    ``saved`` is the ``$`` of RFC 5182 (the result of the last SEARCH ... RETURN (SAVE)).
    """

    ranges: tuple[tuple[int | None, int | None], ...]
    saved: bool = False
    _spans: dict[int, list[tuple[int, int]]] = field(default_factory=dict, init=False, repr=False,
                                                     compare=False, hash=False)

    def __str__(self) -> str:
        if self.saved:
            return "$"

        def one(n: int | None) -> str:
            return "*" if n is None else str(n)

        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)

    def _bounds(self, largest: int) -> Iterator[tuple[int, int]]:
        for a, b in self.ranges:
            lo = largest if a is None else a
            hi = largest if b is None else b
            if lo > hi:  # RFC 3501 §9: "2:4" and "4:2" are equivalent
                lo, hi = hi, lo
            yield lo, hi

    def spans(self, largest: int) -> list[tuple[int, int]]:
        """The set as sorted, disjoint, non-adjacent ``(lo, hi)`` spans (cached per ``largest``).

        A client may send thousands of ranges (``1:*,1:*,...``): every use goes through
        these merged spans, so the cost is O(ranges log ranges) once, then a bisection."""
        got = self._spans.get(largest)
        if got is None:
            got = []
            for lo, hi in sorted(self._bounds(largest)):
                if got and lo <= got[-1][1] + 1:
                    if hi > got[-1][1]:
                        got[-1] = (got[-1][0], hi)
                else:
                    got.append((lo, hi))
            if len(self._spans) > 8:
                self._spans.clear()
            self._spans[largest] = got
        return got

    def contains(self, n: int, largest: int) -> bool:
        """Whether ``n`` is in the set, ``*`` being ``largest`` (the highest seq or UID)."""
        spans = self.spans(largest)
        k = bisect_right(spans, (n, _INFINITY)) - 1
        return k >= 0 and n <= spans[k][1]

    def resolve(self, largest: int) -> list[int]:
        """The sorted distinct numbers of the set that are <= ``largest``.

        For UID sets this clips ranges to the existing UIDs, as RFC 3501 §6.4.8 asks
        (``UID FETCH 1:*`` on an empty mailbox is not an error).
        """
        out: list[int] = []
        for lo, hi in self.spans(largest):
            out.extend(range(max(lo, 1), min(hi, largest) + 1))
        return out

    def max_number(self) -> int:
        """The highest explicit number (to check seq numbers against the mailbox size)."""
        return max((n for r in self.ranges for n in r if n is not None), default=0)


# --------------------------------------------------------------------------- FETCH

SECTION_TEXTS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")


@dataclass(frozen=True)
class Section:
    """A ``section`` of BODY[...] (RFC 3501 §6.4.5): part path, then an optional text spec.

    ``text`` is one of ``SECTION_TEXTS`` or None; ``fields`` is the header list of
    HEADER.FIELDS / HEADER.FIELDS.NOT, as the client spelled the names.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def render(self) -> str:
        pieces = [str(n) for n in self.part]
        if self.text is not None:
            pieces.append(self.text)
        out = ".".join(pieces)
        if self.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            out += " (" + " ".join(_render_field_name(f) for f in self.fields) + ")"
        return out


def _render_field_name(name: str) -> str:
    if name and all(0x21 <= ord(c) < 0x7F and c not in '(){%*"\\' for c in name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class FetchAttribute:
    """One ``fetch-att``. ``name`` is upper case: ENVELOPE, FLAGS, INTERNALDATE, RFC822,
    RFC822.HEADER, RFC822.SIZE, RFC822.TEXT, BODY, BODYSTRUCTURE, UID, MODSEQ.

    ``BODY`` with a ``section`` is BODY[section]<partial>; ``peek`` is BODY.PEEK (does not
    set \\Seen, RFC 3501 §6.4.5). ``partial`` is (origin, count). ``BINARY`` and
    ``BINARY.SIZE`` (RFC 3516 §4) carry a section of part numbers only; BINARY.PEEK and
    BINARY.SIZE have ``peek`` set.
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    def response_name(self) -> str:
        """The item name in the FETCH response: ``BODY[HEADER]<0>`` (RFC 3501 §7.4.2)."""
        if self.section is None:
            return self.name
        out = f"{'BODY' if self.name == 'BODY' else self.name}[{self.section.render()}]"
        if self.partial is not None:
            out += f"<{self.partial[0]}>"
        return out

    @property
    def sets_seen(self) -> bool:
        """RFC 3501 §6.4.5: BODY[...] and RFC822 / RFC822.TEXT set \\Seen, PEEK does not."""
        if self.section is not None:
            return not self.peek
        return self.name in ("RFC822", "RFC822.TEXT")


FETCH_MACROS: dict[str, tuple[FetchAttribute, ...]] = {
    # RFC 3501 §6.4.5
    "FAST": (FetchAttribute("FLAGS"), FetchAttribute("INTERNALDATE"), FetchAttribute("RFC822.SIZE")),
    "ALL": (
        FetchAttribute("FLAGS"), FetchAttribute("INTERNALDATE"), FetchAttribute("RFC822.SIZE"),
        FetchAttribute("ENVELOPE"),
    ),
    "FULL": (
        FetchAttribute("FLAGS"), FetchAttribute("INTERNALDATE"), FetchAttribute("RFC822.SIZE"),
        FetchAttribute("ENVELOPE"), FetchAttribute("BODY"),
    ),
}

# --------------------------------------------------------------------------- SEARCH

SearchValue = Union[None, str, int, date, SequenceSet, tuple[str, str]]


@dataclass(frozen=True)
class SearchKey:
    """A node of a SEARCH program (RFC 3501 §6.4.4, RFC 7162 §3.1.5 MODSEQ).

    ``kind`` is the upper-case key name; ``value`` depends on it:

    - no value: ALL ANSWERED DELETED DRAFT FLAGGED NEW OLD RECENT SEEN UNANSWERED
      UNDELETED UNDRAFT UNFLAGGED UNSEEN
    - ``str``: KEYWORD UNKEYWORD BCC BODY CC FROM SUBJECT TEXT TO
    - ``(field, text)``: HEADER
    - ``date``: BEFORE ON SINCE SENTBEFORE SENTON SENTSINCE
    - ``int``: LARGER SMALLER MODSEQ
    - ``SequenceSet``: UID, SEQ (a bare sequence set)
    - ``children``: AND (a parenthesised list, or the whole program), OR (two), NOT (one)
    """

    kind: str
    value: SearchValue = None
    children: tuple[SearchKey, ...] = ()


# --------------------------------------------------------------------------- command arguments


@dataclass(frozen=True)
class NoArgs:
    """Commands without arguments: CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE EXPUNGE
    UNSELECT IDLE NAMESPACE."""


@dataclass(frozen=True)
class LoginArgs:
    userid: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class AuthenticateArgs:
    """AUTHENTICATE; ``initial_response`` is the decoded SASL-IR (RFC 4959), b"" for ``=``."""

    mechanism: str
    initial_response: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class QresyncParams:
    """The QRESYNC parameter of SELECT / EXAMINE (RFC 7162 §3.2.5): what the client knew.

    ``known_uids`` and the two sets of ``seq_match`` (known-sequence-set, known-uid-set:
    equally many numbers, checked by the grammar) never hold ``*`` or ``$``."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class SelectArgs:
    """SELECT / EXAMINE; ``condstore`` is the (CONDSTORE) parameter of RFC 7162 §3.1.8,
    ``qresync`` the QRESYNC one (§3.2.5)."""

    mailbox: str
    condstore: bool = False
    qresync: QresyncParams | None = None


@dataclass(frozen=True)
class MailboxArgs:
    """CREATE DELETE SUBSCRIBE UNSUBSCRIBE GETQUOTAROOT: one mailbox name."""

    mailbox: str


@dataclass(frozen=True)
class CreateArgs:
    """CREATE: the name and the special uses asked for (RFC 6154 §5.2 ``USE (...)``)."""

    mailbox: str
    uses: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenameArgs:
    old: str
    new: str


@dataclass(frozen=True)
class ListArgs:
    """LIST (with LIST-EXTENDED, RFC 5258, and LIST-STATUS, RFC 5819) and LSUB.

    ``selection``: upper-case selection options (SUBSCRIBED, REMOTE, RECURSIVEMATCH,
    SPECIAL-USE). ``returns``: upper-case return options (SUBSCRIBED, CHILDREN,
    SPECIAL-USE, STATUS). ``status_items`` are the items of RETURN (STATUS (...)).
    ``extended`` tells whether the client used the extended syntax (RFC 5258 §3).
    """

    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()
    returns: frozenset[str] = frozenset()
    status_items: tuple[str, ...] = ()
    extended: bool = False


@dataclass(frozen=True)
class StatusArgs:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class CatenatePart:
    """One part of an APPEND CATENATE (RFC 4469 §5): ``TEXT`` literal bytes, or the ``URL``
    of a message or part to copy (``url`` set, ``text`` empty)."""

    text: bytes = field(default=b"", repr=False)
    url: str | None = None


@dataclass(frozen=True)
class AppendMessage:
    """One message of an APPEND: its flags, date and the literal's exact bytes;
    ``binary`` when it came as a literal8 ``~{n}`` (RFC 3516 §4.4). A CATENATE message
    (RFC 4469) has its ``parts`` instead (``message`` is empty until they are put together)."""

    flags: tuple[str, ...]
    internaldate: datetime | None
    message: bytes = field(repr=False)
    binary: bool = False
    parts: tuple[CatenatePart, ...] = ()


@dataclass(frozen=True)
class AppendArgs:
    """APPEND: the message is the literal's exact bytes (RFC 3501 §6.3.11); ``more`` holds
    the further messages of a MULTIAPPEND (RFC 3502 §6.3.11), stored all or none."""

    mailbox: str
    flags: tuple[str, ...]
    internaldate: datetime | None
    message: bytes = field(repr=False)
    binary: bool = False
    more: tuple[AppendMessage, ...] = ()
    parts: tuple[CatenatePart, ...] = ()  # the first message's CATENATE parts (RFC 4469)

    @property
    def messages(self) -> tuple[AppendMessage, ...]:
        return (AppendMessage(self.flags, self.internaldate, self.message, self.binary, self.parts), *self.more)


@dataclass(frozen=True)
class SearchArgs:
    """SEARCH (and SORT); ``charset`` is upper case or None; string values are already decoded.

    ``returns`` is None for a plain SEARCH / SORT (answered ``* SEARCH`` / ``* SORT``), else
    the RETURN options, upper case (RFC 4731 §3.1, RFC 5182 SAVE, RFC 5267 for SORT; an
    empty ``RETURN ()`` is already turned into ``("ALL",)``). ``sort`` holds the SORT
    criteria (RFC 5256 §3: ``(reverse, key)`` pairs), empty for SEARCH. ``thread`` is the
    THREAD algorithm, upper case (RFC 5256 §4: ``REFERENCES``, ``ORDEREDSUBJECT``), empty
    for SEARCH and SORT.
    """

    charset: str | None
    key: SearchKey
    returns: tuple[str, ...] | None = None
    sort: tuple[tuple[bool, str], ...] = ()
    thread: str = ""
    partial: tuple[int, int] | None = None  # RFC 5267 §4.4 RETURN (PARTIAL low:high), low <= high


@dataclass(frozen=True)
class FetchArgs:
    """FETCH; ``changedsince`` is RFC 7162 §3.1.4's modifier, ``vanished`` §3.2.6's."""

    sequence_set: SequenceSet
    attributes: tuple[FetchAttribute, ...]
    changedsince: int | None = None
    vanished: bool = False


@dataclass(frozen=True)
class StoreArgs:
    """STORE; ``mode`` is "" (replace), "+" (add) or "-" (remove)."""

    sequence_set: SequenceSet
    mode: str
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None


@dataclass(frozen=True)
class CopyArgs:
    """COPY and MOVE (RFC 6851)."""

    sequence_set: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class ExpungeArgs:
    """UID EXPUNGE (RFC 4315 §2.1)."""

    sequence_set: SequenceSet


@dataclass(frozen=True)
class IdArgs:
    """ID (RFC 2971): None for NIL, else the field/value pairs."""

    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True)
class EnableArgs:
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class CancelUpdateArgs:
    """CANCELUPDATE (RFC 5267 §4.3.5): the tags of the searches whose updates stop."""

    tags: tuple[str, ...]


@dataclass(frozen=True)
class QuotaRootArgs:
    """GETQUOTA (RFC 9208): a quota root name."""

    root: str


@dataclass(frozen=True)
class SetQuotaArgs:
    root: str
    limits: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class CompressArgs:
    """COMPRESS (RFC 4978 §3): the mechanism, upper case."""

    mechanism: str


CommandArgs = Union[
    NoArgs, LoginArgs, AuthenticateArgs, SelectArgs, MailboxArgs, CreateArgs, RenameArgs, ListArgs,
    StatusArgs, AppendArgs, SearchArgs, FetchArgs, StoreArgs, CopyArgs, ExpungeArgs, IdArgs,
    EnableArgs, QuotaRootArgs, SetQuotaArgs, CancelUpdateArgs, CompressArgs,
]


@dataclass(frozen=True)
class Command:
    """One complete, parsed command: ``tag``, upper-case ``name``, typed ``args``.

    ``uid`` is True for the UID prefix (RFC 3501 §6.4.8): ``UID FETCH`` is
    ``Command(tag, "FETCH", FetchArgs(...), uid=True)``.
    """

    tag: str
    name: str
    args: CommandArgs = NoArgs()
    uid: bool = False
