"""The RFC 3501 §9 grammar of one complete IMAP command, as bytes.

``parse_command(data)`` takes one command exactly as framed by ``parser.CommandReader``:
its lines end in CRLF and every literal ``{n}`` / ``{n+}`` header is followed by CRLF and
its n octets. It returns a ``types.Command`` or raises ``GrammarError``, which carries the
response it becomes (BAD by default, ``NO [BADCHARSET ...]`` for an unknown SEARCH charset).

Invariants: nothing here raises anything but ``GrammarError`` on any input; 8-bit octets
are refused outside literals (RFC 3501 §9: quoted strings and atoms are 7-bit); mailbox
names come out decoded from modified UTF-7 (RFC 3501 §5.1.3) with INBOX upper-cased
(RFC 3501 §5.1); a well-formed command whose mailbox name is not valid modified UTF-7 is
``NO`` (it names no mailbox), never BAD, and such a LIST/LSUB pattern matches nothing.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import date, datetime

from mailstack.storage import mutf7

from .dates import DateError, parse_date, parse_datetime
from .types import (
    FETCH_MACROS, AppendArgs, AppendMessage, AuthenticateArgs, CancelUpdateArgs, CatenatePart, Command,
    CommandArgs, CompressArgs, CopyArgs, CreateArgs,
    EnableArgs,
    ExpungeArgs, FetchArgs, FetchAttribute, IdArgs, ListArgs, LoginArgs, MailboxArgs, NoArgs,
    QresyncParams, QuotaRootArgs, RenameArgs, SearchArgs, SearchKey, Section, SelectArgs, SequenceSet,
    SetQuotaArgs, StatusArgs, StoreArgs,
)

MailboxDecoder = Callable[[str], str]


class GrammarError(Exception):
    """A command the grammar refuses; knows its tagged response (status, code, text)."""

    def __init__(self, message: str, status: str = "BAD", code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


# RFC 3501 §9: ATOM-CHAR = <any CHAR except atom-specials>;
# atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0x20)) | {0x7F}
ATOM_CHARS = frozenset(c for c in range(1, 0x80) if c not in _ATOM_SPECIALS)
ASTRING_CHARS = ATOM_CHARS | {ord("]")}  # ASTRING-CHAR = ATOM-CHAR / resp-specials
LIST_CHARS = ASTRING_CHARS | {ord("%"), ord("*")}  # list-char
TAG_CHARS = ASTRING_CHARS - {ord("+")}  # tag = 1*<any ASTRING-CHAR except "+">
_DIGITS = frozenset(b"0123456789")

SYSTEM_FLAGS = {f.lower(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")}
STATUS_ITEMS = frozenset({"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE",
                          "MAILBOXID", "DELETED"})  # RFC 8474 §4.4, RFC 9051 §6.3.11
SEARCH_CHARSETS = ("US-ASCII", "UTF-8")
MAX_NUMBER = 2**32 - 1  # RFC 3501 §9 number: 32-bit unsigned
MAX_NUMBER64 = 2**63 - 1  # RFC 7162 §7 mod-sequence-value
MAX_ID_PAIRS = 30  # RFC 2971 §3.3
MAX_LIST_PATTERNS = 100  # RFC 5258 sets none; each pattern is matched against every folder
MAX_SEARCH_KEYS = 1000  # RFC 3501 sets none; every key may be evaluated on every message


class _Reader:
    """Recursive-descent reader over one framed command."""

    def __init__(self, data: bytes, decode_mailbox: MailboxDecoder, utf8: bool = False) -> None:
        self.d = data
        self.i = 0
        self.decode_mailbox = decode_mailbox
        # RFC 9051 §5.1, §9 (IMAP4rev2 enabled): quoted strings may hold UTF-8 and mailbox
        # names are UTF-8, not modified UTF-7
        self.utf8 = utf8
        self.keys = 0  # search keys read so far (MAX_SEARCH_KEYS)
        # A mailbox argument that is not valid modified UTF-7: the command is well-formed
        # (BAD is only for malformed commands, RFC 3501 §7.1.3), so ``parse_command`` answers
        # NO with this code once the whole command has parsed (RFC 5530 response code).
        self.bad_name_code: str | None = None

    # -- low level --------------------------------------------------------------------
    def peek(self) -> int:
        return self.d[self.i] if self.i < len(self.d) else -1

    def at(self, token: bytes) -> bool:
        return self.d[self.i : self.i + len(token)].upper() == token

    def take(self, token: bytes) -> bool:
        if self.at(token):
            self.i += len(token)
            return True
        return False

    def expect(self, token: bytes, what: str | None = None) -> None:
        if not self.take(token):
            raise GrammarError(f"Expected {what or token.decode()}")

    def sp(self) -> None:
        if self.peek() != 0x20:
            raise GrammarError("Expected space")
        self.i += 1

    def at_end(self) -> bool:
        # O(1): slicing the rest made every loop over arguments quadratic in the command
        return self.i + 2 == len(self.d) and self.d.endswith(b"\r\n")

    def end(self) -> None:
        if not self.at_end():
            raise GrammarError("Unexpected extra arguments")

    def run(self, allowed: frozenset[int]) -> bytes:
        start = self.i
        d = self.d
        while self.i < len(d) and d[self.i] in allowed:
            self.i += 1
        return d[start : self.i]

    def atom(self, what: str = "atom") -> str:
        raw = self.run(ATOM_CHARS)
        if not raw:
            raise GrammarError(f"Expected {what}")
        return raw.decode("ascii")

    def number(self, limit: int = MAX_NUMBER, nonzero: bool = False) -> int:
        raw = self.run(_DIGITS)
        if not raw:
            raise GrammarError("Expected number")
        if len(raw.lstrip(b"0")) > 20:  # int() refuses > 4300 digits with ValueError; none fits anyway
            raise GrammarError("Number out of range")
        n = int(raw)
        if n > limit or (nonzero and n == 0):
            raise GrammarError("Number out of range")
        return n

    # -- strings ----------------------------------------------------------------------
    def quoted(self) -> bytes:
        # RFC 3501 §9: quoted = DQUOTE *QUOTED-CHAR DQUOTE; QUOTED-CHAR = <any TEXT-CHAR
        # except quoted-specials> / "\" quoted-specials. TEXT-CHAR is 7-bit without CR/LF.
        self.expect(b'"')
        out = bytearray()
        d = self.d
        while True:
            if self.i >= len(d):
                raise GrammarError("Unterminated quoted string")
            c = d[self.i]
            self.i += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.i < len(d) and d[self.i] in (0x22, 0x5C):
                    out.append(d[self.i])
                    self.i += 1
                    continue
                raise GrammarError("Bad escape in quoted string")
            if c in (0x0A, 0x0D):
                raise GrammarError("Unterminated quoted string")
            if c == 0 or (c >= 0x80 and not self.utf8):
                raise GrammarError("Invalid character in quoted string")
            out.append(c)

    def literal(self, binary: bool = False) -> bytes:
        # RFC 3501 §9 literal = "{" number "}" CRLF *CHAR8; RFC 7888 adds "{" number "+}";
        # RFC 3516 §4.4 literal8 = "~{" number "}" CRLF *OCTET (NUL allowed).
        if binary:
            self.expect(b"~")
        self.expect(b"{")
        n = self.number(limit=MAX_NUMBER64)
        self.take(b"+")
        self.expect(b"}\r\n", "literal header")
        if self.i + n > len(self.d):
            raise GrammarError("Truncated literal")
        data = self.d[self.i : self.i + n]
        self.i += n
        if 0 in data and not binary:  # RFC 3501 §9: CHAR8 excludes NUL
            raise GrammarError("NUL in literal")
        return data

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()
        raise GrammarError("Expected string")

    def astring(self, what: str = "string") -> bytes:
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        raw = self.run(ASTRING_CHARS)
        if not raw:
            raise GrammarError(f"Expected {what}")
        return raw

    def nstring(self) -> bytes | None:
        if self.at(b"NIL") and self._atom_ends(3):
            self.i += 3
            return None
        return self.string()

    def _atom_ends(self, n: int) -> bool:
        nxt = self.d[self.i + n] if self.i + n < len(self.d) else -1
        return nxt not in ATOM_CHARS

    def text(self, raw: bytes, what: str = "string") -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GrammarError(f"Invalid UTF-8 in {what}") from exc

    def astr(self, what: str = "string") -> str:
        return self.text(self.astring(what), what)

    # -- IMAP values ------------------------------------------------------------------
    def mailbox(self, code: str = "NONEXISTENT") -> str:
        """A mailbox argument. A name that is not valid modified UTF-7 names no mailbox
        that exists or could be made: it is noted (``code``: NONEXISTENT for a mailbox
        the command uses, CANNOT for one it would create) and answered NO at the end,
        as Dovecot does ("Mailbox name is not valid mUTF-7")."""
        name = self._mailbox_name(self.astring("mailbox name"))
        if name is None:
            if self.bad_name_code is None:
                self.bad_name_code = code
            return ""
        return name

    def _mailbox_name(self, raw: bytes) -> str | None:
        # RFC 3501 §5.1: INBOX is case-insensitive; §5.1.3: names are modified UTF-7
        # (RFC 9051 §5.1: UTF-8 once IMAP4rev2 is enabled).
        try:
            name = raw.decode("utf-8") if self.utf8 else self.decode_mailbox(raw.decode("ascii"))
        except (UnicodeError, ValueError):
            return None
        return "INBOX" if name.upper() == "INBOX" else name

    def list_mailbox(self) -> str | None:
        """A LIST pattern (or reference); None when it is not valid modified UTF-7: it then
        matches no mailbox, and LIST answers OK with nothing for it (as Dovecot does)."""
        c = self.peek()
        if c in (0x22, 0x7B):
            raw = self.string()
        else:
            raw = self.run(LIST_CHARS)
            if not raw:
                raise GrammarError("Expected mailbox pattern")
        return self._mailbox_name(raw)

    def sequence_set(self) -> SequenceSet:
        # RFC 3501 §9 sequence-set; RFC 5182 "$"
        if self.take(b"$"):
            return SequenceSet((), saved=True)
        ranges: list[tuple[int | None, int | None]] = []
        while True:
            a = self._seq_number()
            b = a
            if self.take(b":"):
                b = self._seq_number()
            ranges.append((a, b))
            if not self.take(b","):
                break
        return SequenceSet(tuple(ranges))

    def _seq_number(self) -> int | None:
        if self.take(b"*"):
            return None
        return self.number(nonzero=True)

    def flag(self) -> str:
        # RFC 3501 §9 flag = "\Answered" / ... / flag-keyword / flag-extension
        if self.take(b"\\"):
            name = "\\" + self.atom("flag")
            return SYSTEM_FLAGS.get(name.lower(), name)
        # An atom spelled NIL is taken as the keyword "NIL", as Dovecot 2.3 does (checked:
        # STORE 1 +FLAGS (NIL) answers OK, announces NIL in FLAGS, then FETCH (FLAGS (NIL));
        # imaptest's "nil" group expects exactly that).
        return self.atom("flag")

    def flag_list(self) -> tuple[str, ...]:
        self.expect(b"(")
        flags: list[str] = []
        while not self.take(b")"):
            if flags:
                self.sp()
            flags.append(self.flag())
        return tuple(flags)

    def date(self) -> date:
        # RFC 3501 §9 date = date-text / DQUOTE date-text DQUOTE
        raw = self.quoted() if self.peek() == 0x22 else self.run(ATOM_CHARS)
        try:
            return parse_date(raw.decode("ascii"))
        except (DateError, UnicodeDecodeError) as exc:
            raise GrammarError("Invalid date") from exc

    def paren_atoms(self) -> list[str]:
        self.expect(b"(")
        out: list[str] = []
        while not self.take(b")"):
            if out:
                self.sp()
            out.append(self.atom().upper())
        return out


# ------------------------------------------------------------------------------- commands


def _no_args(r: _Reader) -> NoArgs:
    r.end()
    return NoArgs()


def _login(r: _Reader) -> LoginArgs:
    r.sp()
    user = r.astr("user name")
    r.sp()
    password = r.astr("password")
    r.end()
    return LoginArgs(user, password)


def _authenticate(r: _Reader) -> AuthenticateArgs:
    r.sp()
    mech = r.atom("SASL mechanism").upper()
    initial: bytes | None = None
    if not r.at_end():
        r.sp()
        initial = decode_base64(r.run(ATOM_CHARS | {ord("=")}))  # RFC 4959 §3
    r.end()
    return AuthenticateArgs(mech, initial)


def decode_base64(raw: bytes) -> bytes:
    """A SASL response line: ``=`` is the empty response (RFC 4959 §3); else base64."""
    if raw == b"=":
        return b""
    if not raw:
        raise GrammarError("Expected base64 data")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GrammarError("Invalid base64") from exc


def _select(r: _Reader) -> SelectArgs:
    # RFC 4466 §2.1 select-params; RFC 7162 §3.1.8 CONDSTORE, §3.2.5 QRESYNC (...)
    r.sp()
    mailbox = r.mailbox()
    condstore = False
    qresync: QresyncParams | None = None
    if not r.at_end():
        r.sp()
        r.expect(b"(")
        seen: set[str] = set()
        while not r.take(b")"):
            if seen:
                r.sp()
            param = r.atom("SELECT parameter").upper()
            if param in seen:
                raise GrammarError(f"Duplicate SELECT parameter {param}")
            seen.add(param)
            if param == "CONDSTORE":
                condstore = True
            elif param == "QRESYNC":
                r.sp()
                qresync = _qresync(r)
            else:
                raise GrammarError(f"Unknown SELECT parameter {param}")
    r.end()
    return SelectArgs(mailbox, condstore, qresync)


def _known_set(r: _Reader, what: str) -> SequenceSet:
    """A sequence-set of QRESYNC (RFC 7162 §7: known-uids and the seq-match sets): no ``*``."""
    seqs = r.sequence_set()
    if seqs.saved or any(a is None or b is None for a, b in seqs.ranges):
        raise GrammarError(f"Invalid QRESYNC {what}")
    return seqs


def _set_size(seqs: SequenceSet) -> int:
    return sum(hi - lo + 1 for lo, hi in seqs.spans(0))


def _qresync(r: _Reader) -> QresyncParams:
    # RFC 7162 §7: "QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids]
    #   [SP seq-match-data] ")"; seq-match-data = "(" known-sequence-set SP known-uid-set ")"
    # (mod-sequence-value 0 is taken, as Dovecot does: everything changed since)
    r.expect(b"(", "QRESYNC parameters")
    try:
        uidvalidity = r.number(nonzero=True)
        r.sp()
        modseq = r.number(limit=MAX_NUMBER64)
    except GrammarError:
        raise GrammarError("Invalid QRESYNC parameters") from None
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if r.take(b" "):
        if r.peek() != 0x28:
            known = _known_set(r, "known-uids")
            if r.take(b" "):
                match = _seq_match(r)
        else:
            match = _seq_match(r)
    r.expect(b")", "end of QRESYNC parameters")
    return QresyncParams(uidvalidity, modseq, known, match)


def _seq_match(r: _Reader) -> tuple[SequenceSet, SequenceSet]:
    r.expect(b"(")
    seqs = _known_set(r, "known-sequence-set")
    r.sp()
    uids = _known_set(r, "known-uid-set")
    r.expect(b")")
    if _set_size(seqs) != _set_size(uids):  # RFC 7162 §3.2.5.2: pairs, one to one
        raise GrammarError("Invalid QRESYNC sets")
    return seqs, uids


def _mailbox(r: _Reader) -> MailboxArgs:
    r.sp()
    mailbox = r.mailbox()
    r.end()
    return MailboxArgs(mailbox)


def _create(r: _Reader) -> CreateArgs:
    # RFC 4466 §2.2 create = "CREATE" SP mailbox [create-params];
    # RFC 6154 §6 create-param =/ "USE" SP "(" [use-attr *(SP use-attr)] ")"
    r.sp()
    mailbox = r.mailbox("CANNOT")
    uses: list[str] = []
    if not r.at_end():
        r.sp()
        r.expect(b"(")
        while True:
            param = r.atom("create parameter").upper()
            if param != "USE":  # RFC 4466 §2.2: an unknown parameter is BAD
                raise GrammarError(f"Unknown CREATE parameter {param}")
            r.sp()
            r.expect(b"(")
            while not r.take(b")"):
                if r.d[r.i - 1] != 0x28:
                    r.sp()
                flag = r.flag()
                if not flag.startswith("\\"):
                    raise GrammarError("A special use is a \\-attribute")
                uses.append(flag)
            if r.take(b")"):
                break
            r.sp()
    r.end()
    return CreateArgs(mailbox, tuple(dict.fromkeys(uses)))


def _rename(r: _Reader) -> RenameArgs:
    r.sp()
    old = r.mailbox()
    r.sp()
    new = r.mailbox("CANNOT")
    r.end()
    return RenameArgs(old, new)


_LIST_SELECTION = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


def _list(r: _Reader) -> ListArgs:
    # RFC 5258 §6: list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
    #                     [SP list-return-opts]
    r.sp()
    selection: set[str] = set()
    extended = False
    if r.peek() == 0x28:
        extended = True
        selection = set(r.paren_atoms())
        unknown = selection - _LIST_SELECTION
        if unknown:
            raise GrammarError(f"Unknown LIST selection option {sorted(unknown)[0]}")
        # RFC 5258 §3.1: RECURSIVEMATCH never alone nor with only REMOTE; it needs a
        # selection whose matches can have children that match (as Dovecot: BAD without
        # SUBSCRIBED or SPECIAL-USE).
        if "RECURSIVEMATCH" in selection and not selection & {"SUBSCRIBED", "SPECIAL-USE"}:
            raise GrammarError("RECURSIVEMATCH needs SUBSCRIBED")
        r.sp()
    reference = r._mailbox_name(r.astring("mailbox name"))
    r.sp()
    # Patterns (or a reference) that are not valid modified UTF-7 match nothing: dropped.
    patterns: list[str | None] = []
    if r.peek() == 0x28:
        extended = True
        r.i += 1
        while not r.take(b")"):
            if patterns:
                r.sp()
            patterns.append(r.list_mailbox())
            if len(patterns) > MAX_LIST_PATTERNS:
                raise GrammarError("Too many LIST patterns")
        if not patterns:
            raise GrammarError("Empty pattern list")
    else:
        patterns.append(r.list_mailbox())
    returns: set[str] = set()
    status_items: tuple[str, ...] = ()
    if not r.at_end():
        r.sp()
        r.expect(b"RETURN")
        r.sp()
        extended = True
        r.expect(b"(")
        while not r.take(b")"):
            if returns:
                r.sp()
            opt = r.atom("return option").upper()
            if opt not in _LIST_RETURN:
                raise GrammarError(f"Unknown LIST return option {opt}")
            if opt == "STATUS":  # RFC 5819 §2
                r.sp()
                status_items = _status_items(r)
            returns.add(opt)
    r.end()
    valid = tuple(p for p in patterns if p is not None) if reference is not None else ()
    return ListArgs(reference or "", valid, frozenset(selection), frozenset(returns), status_items, extended)


def _lsub(r: _Reader) -> ListArgs:
    r.sp()
    reference = r._mailbox_name(r.astring("mailbox name"))
    r.sp()
    pattern = r.list_mailbox()
    r.end()
    return ListArgs(reference or "", (pattern,) if pattern is not None and reference is not None else ())


def _status_items(r: _Reader) -> tuple[str, ...]:
    items = r.paren_atoms()
    if not items:
        raise GrammarError("Empty STATUS item list")
    for item in items:
        if item not in STATUS_ITEMS:
            raise GrammarError(f"Unknown STATUS item {item}")
    return tuple(items)


def _status(r: _Reader) -> StatusArgs:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    items = _status_items(r)
    r.end()
    return StatusArgs(mailbox, items)


def _append(r: _Reader) -> AppendArgs:
    # RFC 3501 §9 append = "APPEND" SP mailbox [SP flag-list] [SP date-time] SP literal
    r.sp()
    mailbox = r.mailbox("CANNOT")  # not TRYCREATE: CREATE of that name would fail too
    r.sp()
    flags, when = _append_opts(r)
    first = _append_message(r, flags, when)
    # RFC 3502 §6.3.11 append = "APPEND" SP mailbox 1*append-message
    more: list[AppendMessage] = []
    while not r.at_end():
        r.sp()
        flags, when = _append_opts(r)
        more.append(_append_message(r, flags, when))
    return AppendArgs(mailbox, first.flags, first.internaldate, first.message, first.binary, tuple(more),
                      first.parts)


def _append_opts(r: _Reader) -> tuple[tuple[str, ...], datetime | None]:
    # RFC 3502 §6.3.11 append-opts = [SP flag-list] [SP date-time]
    flags: tuple[str, ...] = ()
    when: datetime | None = None
    if r.peek() == 0x28:
        flags = r.flag_list()
        r.sp()
    if r.peek() == 0x22:
        raw = r.quoted()
        try:
            when = parse_datetime(raw.decode("ascii"))
        except DateError as exc:
            raise GrammarError("Invalid date-time") from exc
        r.sp()
    return flags, when


def _append_message(r: _Reader, flags: tuple[str, ...], when: datetime | None) -> AppendMessage:
    # append-data = literal / literal8 (RFC 3516 §4.4) / catenate (RFC 4469 §5)
    if r.take(b"CATENATE "):
        return AppendMessage(flags, when, b"", parts=_catenate(r))
    if r.peek() == 0x7E:
        return AppendMessage(flags, when, r.literal(binary=True), binary=True)
    if r.peek() != 0x7B:
        raise GrammarError("Expected message literal")
    return AppendMessage(flags, when, r.literal())


MAX_CATENATE_PARTS = 256  # RFC 4469 sets none; each URL part may read a message file


def _catenate(r: _Reader) -> tuple[CatenatePart, ...]:
    # RFC 4469 §5 catenate = "CATENATE" SP "(" cat-part *(SP cat-part) ")"
    #   cat-part = text-literal / url; text-literal = "TEXT" SP literal; url = "URL" SP astring
    #   A literal8 TEXT (RFC 3516 §4.4) is taken too; a NUL in it cannot be stored: NO [CANNOT].
    r.expect(b"(")
    parts: list[CatenatePart] = []
    while True:
        if r.take(b"TEXT "):
            if r.peek() == 0x7E:
                data = r.literal(binary=True)
                if 0 in data:
                    raise GrammarError("NUL in CATENATE TEXT", "NO", "CANNOT")
            else:
                data = r.literal()
            parts.append(CatenatePart(text=data))
        elif r.take(b"URL "):
            raw = r.astring("URL")
            try:
                url = raw.decode("ascii")
            except UnicodeDecodeError:  # RFC 5092: an IMAP URL is 7-bit (%-encoded)
                raise GrammarError("URL is not ASCII") from None
            parts.append(CatenatePart(url=url))
        else:
            raise GrammarError("Expected TEXT or URL")
        if len(parts) > MAX_CATENATE_PARTS:
            raise GrammarError("Too many CATENATE parts")
        if r.take(b")"):
            return tuple(parts)
        r.sp()


def parse_section(spec: bytes) -> Section:
    """A section-spec as in ``BODY[spec]`` (RFC 3501 §9), for IMAP URLs' ``;SECTION=``
    (RFC 5092 §6: the same grammar, %-decoded by the caller). Raises ``GrammarError``."""
    r = _Reader(spec + b"]\r\n", mutf7.decode)
    section = _section(r)
    if r.i != len(spec) + 1:
        raise GrammarError("Bad section")
    return section


def _copy(r: _Reader) -> CopyArgs:
    r.sp()
    seqs = r.sequence_set()
    r.sp()
    mailbox = r.mailbox("CANNOT")  # not TRYCREATE: CREATE of that name would fail too
    r.end()
    return CopyArgs(seqs, mailbox)


def _uid_expunge(r: _Reader) -> ExpungeArgs:
    r.sp()
    seqs = r.sequence_set()
    r.end()
    return ExpungeArgs(seqs)


def _store(r: _Reader) -> StoreArgs:
    # RFC 3501 §9 store; RFC 7162 §3.1.3 UNCHANGEDSINCE store-modifier
    r.sp()
    seqs = r.sequence_set()
    r.sp()
    unchanged: int | None = None
    if r.peek() == 0x28:
        r.i += 1
        r.expect(b"UNCHANGEDSINCE")
        r.sp()
        unchanged = r.number(limit=MAX_NUMBER64)
        r.expect(b")")
        r.sp()
    mode = ""
    if r.peek() in (0x2B, 0x2D):
        mode = chr(r.peek())
        r.i += 1
    r.expect(b"FLAGS")
    silent = r.take(b".SILENT")
    r.sp()
    if r.peek() == 0x28:
        flags = r.flag_list()
    else:
        out = [r.flag()]
        while not r.at_end():
            r.sp()
            out.append(r.flag())
        flags = tuple(out)
    r.end()
    return StoreArgs(seqs, mode, silent, flags, unchanged)


_SIMPLE_FETCH = {
    "ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
    "RFC822.TEXT", "BODYSTRUCTURE", "UID", "MODSEQ",
    "EMAILID", "THREADID", "SAVEDATE",  # RFC 8474 §5, RFC 8514 §4.1
}
_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")


def _fetch_att(r: _Reader) -> FetchAttribute:
    name = r.run(_NAME_CHARS).decode("ascii").upper()
    if name in ("BODY", "BODY.PEEK") and r.peek() == 0x5B:
        r.i += 1
        section = _section(r)
        partial: tuple[int, int] | None = None
        if r.take(b"<"):
            origin = r.number()
            r.expect(b".")
            count = r.number(nonzero=True)
            r.expect(b">")
            partial = (origin, count)
        return FetchAttribute("BODY", section, partial, peek=name == "BODY.PEEK")
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE") and r.take(b"["):
        # RFC 3516 §4.4 section-binary = "[" [section-part] "]"; BINARY.SIZE has no partial
        part: list[int] = []
        while not r.take(b"]"):
            if part:
                r.expect(b".")
            part.append(r.number(nonzero=True))
        partial = None
        if name != "BINARY.SIZE" and r.take(b"<"):
            origin = r.number()
            r.expect(b".")
            count = r.number(nonzero=True)
            r.expect(b">")
            partial = (origin, count)
        return FetchAttribute("BINARY.SIZE" if name == "BINARY.SIZE" else "BINARY", Section(tuple(part)),
                              partial, peek=name != "BINARY")
    if name in _SIMPLE_FETCH or name == "BODY":
        return FetchAttribute(name)
    raise GrammarError(f"Unknown FETCH attribute {name or chr(max(r.peek(), 0))!r}")


def _section(r: _Reader) -> Section:
    # RFC 3501 §9 section = "[" [section-spec] "]"
    part: list[int] = []
    text: str | None = None
    fields: list[str] = []
    if r.take(b"]"):
        return Section()
    while r.peek() in _DIGITS:
        part.append(r.number(nonzero=True))
        if not r.take(b"."):
            break
    if r.peek() != 0x5D:
        if part and r.d[r.i - 1] != 0x2E:
            raise GrammarError("Bad section")
        word = r.run(_NAME_CHARS).decode("ascii").upper()
        allowed = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT") + (("MIME",) if part else ())
        if word not in allowed:
            raise GrammarError(f"Bad section {word!r}")
        text = word
        if word.startswith("HEADER.FIELDS"):
            r.sp()
            r.expect(b"(")
            while not r.take(b")"):
                if fields:
                    r.sp()
                fields.append(r.astr("header field name"))
            if not fields:
                raise GrammarError("Empty header list")
    elif part and r.d[r.i - 1] == 0x2E:
        raise GrammarError("Bad section")
    r.expect(b"]")
    return Section(tuple(part), text, tuple(fields))


def _fetch(r: _Reader) -> FetchArgs:
    r.sp()
    seqs = r.sequence_set()
    r.sp()
    atts: list[FetchAttribute] = []
    if r.take(b"("):
        while not r.take(b")"):
            if atts:
                r.sp()
            atts.append(_fetch_att(r))
        if not atts:
            raise GrammarError("Empty FETCH attribute list")
    else:
        for macro, expansion in FETCH_MACROS.items():
            if r.at(macro.encode()) and r._atom_ends(len(macro)):
                r.i += len(macro)
                atts.extend(expansion)
                break
        else:
            atts.append(_fetch_att(r))
    changedsince: int | None = None
    vanished = False
    if not r.at_end():  # RFC 4466 §2.4 fetch-modifiers
        r.sp()
        r.expect(b"(")
        while True:
            if r.take(b"CHANGEDSINCE"):  # RFC 7162 §3.1.4.1
                r.sp()
                changedsince = r.number(limit=MAX_NUMBER64)
            elif r.take(b"VANISHED"):  # RFC 7162 §3.2.6 (UID FETCH only: the handler checks)
                vanished = True
            else:
                raise GrammarError("Unknown FETCH modifier")
            if r.take(b")"):
                break
            r.sp()
    r.end()
    return FetchArgs(seqs, tuple(atts), changedsince, vanished)


_SEARCH_FLAGS = frozenset({
    "ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN",
    "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN",
    "SAVEDATESUPPORTED",  # RFC 8514 §4.2
})
_SEARCH_STRINGS = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_SEARCH_DATES = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
_SEARCH_SAVED = frozenset({"SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"})  # RFC 8514 §4.2
_SEARCH_OBJECTIDS = frozenset({"EMAILID", "THREADID"})  # RFC 8474 §6
_SEARCH_WITH_ARGS = _SEARCH_STRINGS | _SEARCH_DATES | _SEARCH_SAVED | _SEARCH_OBJECTIDS | {
    "KEYWORD", "UNKEYWORD", "LARGER", "SMALLER", "UID", "HEADER", "NOT", "OR", "MODSEQ",
}
MAX_SEARCH_DEPTH = 64
_OBJECTID = re.compile(r"[A-Za-z0-9_-]{1,255}")  # RFC 8474 §7


SEARCH_RETURNS = frozenset({  # RFC 4731 §3.1, RFC 5182 §2.1, RFC 5267 §4.2-4.4
    "MIN", "MAX", "ALL", "COUNT", "SAVE", "UPDATE", "CONTEXT", "PARTIAL",
})
SORT_KEYS = frozenset({  # RFC 5256 §3, RFC 5957 §3 (DISPLAYFROM / DISPLAYTO)
    "ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO",
})


def _partial_range(r: _Reader) -> tuple[int, int]:
    # RFC 5267 §4.4 partial-range = nz-number ":" nz-number (either order; "*" is not one)
    low = r.number(nonzero=True)
    r.expect(b":", "partial range")
    high = r.number(nonzero=True)
    return (low, high) if low <= high else (high, low)


def _return_opts(r: _Reader) -> tuple[tuple[str, ...] | None, tuple[int, int] | None]:
    """``SP "RETURN" SP "(" [opt *(SP opt)] ")"`` (RFC 4731 §7, RFC 5267 §4.4 PARTIAL),
    (None, None) when absent. An empty list means ALL (RFC 4731 §3.1); an unknown option
    is BAD (Dovecot); CONTEXT is a hint (RFC 5267 §4.2) and kept as given."""
    if not r.at(b"RETURN "):
        return None, None
    r.i += 7
    r.expect(b"(")
    opts: list[str] = []
    partial: tuple[int, int] | None = None
    while not r.take(b")"):
        if opts:
            r.sp()
        o = r.atom("RETURN option").upper()
        if o not in SEARCH_RETURNS:
            raise GrammarError(f"Unknown SEARCH RETURN option {o}")
        if o == "PARTIAL":
            if partial is not None:
                raise GrammarError("PARTIAL given twice")
            r.sp()
            partial = _partial_range(r)
        opts.append(o)
    r.sp()
    return tuple(dict.fromkeys(opts)) or ("ALL",), partial


def _search_program(r: _Reader, charset: str | None) -> SearchKey:
    if charset is not None and charset not in SEARCH_CHARSETS:  # RFC 3501 §6.4.4
        raise GrammarError(
            "Unsupported charset", status="NO", code="BADCHARSET (" + " ".join(SEARCH_CHARSETS) + ")"
        )
    keys = [_search_key(r, 0)]
    while not r.at_end():
        r.sp()
        keys.append(_search_key(r, 0))
    r.end()
    return keys[0] if len(keys) == 1 else SearchKey("AND", children=tuple(keys))


def _search(r: _Reader) -> SearchArgs:
    # RFC 3501 §9 search = "SEARCH" [SP "CHARSET" SP astring] 1*(SP search-key)
    # RFC 4731 §7 search =/ "SEARCH" [search-return-opts] SP search-program
    r.sp()
    returns, partial = _return_opts(r)
    charset: str | None = None
    if r.at(b"CHARSET "):
        r.i += 8
        charset = r.astr("charset").upper()
        r.sp()
    return SearchArgs(charset, _search_program(r, charset), returns, partial=partial)


def _sort(r: _Reader) -> SearchArgs:
    # RFC 5256 §5 sort = ["UID" SP] "SORT" SP sort-criteria SP search-criteria
    #   sort-criteria = "(" sort-criterion *(SP sort-criterion) ")"
    #   sort-criterion = ["REVERSE" SP] sort-key; search-criteria = charset 1*(SP search-key)
    # RFC 5267 §3.2 adds [sort-return-opts] after SORT (the same options as SEARCH's).
    r.sp()
    returns, partial = _return_opts(r)
    words = r.paren_atoms()
    criteria: list[tuple[bool, str]] = []
    reverse = False
    for w in words:
        if w == "REVERSE" and not reverse:
            reverse = True
            continue
        if w not in SORT_KEYS:
            raise GrammarError(f"Unknown sort key {w}")
        criteria.append((reverse, w))
        reverse = False
    if reverse or not criteria:
        raise GrammarError("Invalid sort criteria")
    r.sp()
    charset = r.astr("charset").upper()
    r.sp()
    return SearchArgs(charset, _search_program(r, charset), returns, tuple(criteria), partial=partial)


THREAD_ALGORITHMS = frozenset({"ORDEREDSUBJECT", "REFERENCES"})  # RFC 5256 §4


def _thread(r: _Reader) -> SearchArgs:
    # RFC 5256 §5 thread = ["UID" SP] "THREAD" SP thread-alg SP search-criteria
    #   search-criteria = charset 1*(SP search-key)
    r.sp()
    algorithm = r.atom("thread algorithm").upper()
    if algorithm not in THREAD_ALGORITHMS:
        raise GrammarError(f"Unknown thread algorithm {algorithm}")
    r.sp()
    charset = r.astr("charset").upper()
    r.sp()
    return SearchArgs(charset, _search_program(r, charset), thread=algorithm)


def _search_key(r: _Reader, depth: int) -> SearchKey:
    if depth > MAX_SEARCH_DEPTH:
        raise GrammarError("Search program nested too deeply")
    r.keys += 1
    if r.keys > MAX_SEARCH_KEYS:
        raise GrammarError("Search program too long")
    c = r.peek()
    if c == 0x28:
        r.i += 1
        keys = [_search_key(r, depth + 1)]
        while not r.take(b")"):
            r.sp()
            keys.append(_search_key(r, depth + 1))
        return SearchKey("AND", children=tuple(keys))
    if c in _DIGITS or c in (0x2A, 0x24):
        return SearchKey("SEQ", r.sequence_set())
    word = r.atom("search key").upper()
    if word in _SEARCH_FLAGS:
        return SearchKey(word)
    if word not in _SEARCH_WITH_ARGS:
        raise GrammarError(f"Unknown search key {word}")
    r.sp()
    if word in _SEARCH_STRINGS:
        return SearchKey(word, r.astr())
    if word in ("KEYWORD", "UNKEYWORD"):
        return SearchKey(word, r.atom("keyword"))
    if word in _SEARCH_DATES or word in _SEARCH_SAVED:
        return SearchKey(word, r.date())
    if word in _SEARCH_OBJECTIDS:  # RFC 8474 §7: objectid = 1*255(ALPHA / DIGIT / "_" / "-")
        oid = r.astr("object id")
        if not _OBJECTID.fullmatch(oid):
            raise GrammarError(f"Invalid {word}")
        return SearchKey(word, oid)
    if word in ("LARGER", "SMALLER"):
        return SearchKey(word, r.number())
    if word == "UID":
        return SearchKey(word, r.sequence_set())
    if word == "HEADER":
        name = r.astr("header field name")
        r.sp()
        return SearchKey(word, (name, r.astr()))
    if word == "NOT":
        return SearchKey(word, children=(_search_key(r, depth + 1),))
    if word == "OR":
        first = _search_key(r, depth + 1)
        r.sp()
        return SearchKey(word, children=(first, _search_key(r, depth + 1)))
    if word == "MODSEQ":
        # RFC 7162 §3.1.5: MODSEQ [SP entry-name SP entry-type-req] SP mod-sequence-valzer
        if r.peek() == 0x22:
            r.quoted()
            r.sp()
            if r.atom("entry type").lower() not in ("priv", "shared", "all"):
                raise GrammarError("Bad MODSEQ entry type")
            r.sp()
        return SearchKey(word, r.number(limit=MAX_NUMBER64))
    raise GrammarError(f"Unknown search key {word}")


def _id(r: _Reader) -> IdArgs:
    # RFC 2971 §4: id = "ID" SP id-params-list; id-params-list = "(" ... ")" / nil
    r.sp()
    if r.take(b"NIL"):
        r.end()
        return IdArgs(None)
    r.expect(b"(")
    pairs: list[tuple[str, str | None]] = []
    while not r.take(b")"):
        if pairs:
            r.sp()
        key = r.text(r.string())
        r.sp()
        value = r.nstring()
        pairs.append((key, None if value is None else r.text(value)))
        if len(pairs) > MAX_ID_PAIRS:
            raise GrammarError("Too many ID fields")
    r.end()
    return IdArgs(tuple(pairs))


def _enable(r: _Reader) -> EnableArgs:
    caps: list[str] = []
    while not r.at_end():
        r.sp()
        caps.append(r.atom("capability").upper())
    if not caps:
        raise GrammarError("Expected capability")
    return EnableArgs(tuple(caps))


MAX_CANCEL_TAGS = 100  # RFC 5267 sets none


def _cancelupdate(r: _Reader) -> CancelUpdateArgs:
    # RFC 5267 §5 cancelupdate = "CANCELUPDATE" 1*(SP quoted)
    tags: list[str] = []
    while not r.at_end() or not tags:
        r.sp()
        tags.append(r.text(r.quoted(), "tag"))
        if len(tags) > MAX_CANCEL_TAGS:
            raise GrammarError("Too many tags")
    return CancelUpdateArgs(tuple(tags))


def _getquota(r: _Reader) -> QuotaRootArgs:
    r.sp()
    root = r.astr("quota root")
    r.end()
    return QuotaRootArgs(root)


def _setquota(r: _Reader) -> SetQuotaArgs:
    # RFC 9208 §4.3: setquota = "SETQUOTA" SP quota-root-name SP setquota-list
    r.sp()
    root = r.astr("quota root")
    r.sp()
    r.expect(b"(")
    limits: list[tuple[str, int]] = []
    while not r.take(b")"):
        if limits:
            r.sp()
        resource = r.atom("resource").upper()
        r.sp()
        limits.append((resource, r.number(limit=MAX_NUMBER64)))
    r.end()
    return SetQuotaArgs(root, tuple(limits))


def _compress(r: _Reader) -> CompressArgs:
    # RFC 4978 §5: compress = "COMPRESS" SP algorithm; algorithm = "DEFLATE" (others: NO)
    r.sp()
    mechanism = r.atom("compression mechanism").upper()
    r.end()
    return CompressArgs(mechanism)


_COMMANDS: dict[str, Callable[[_Reader], CommandArgs]] = {
    "CAPABILITY": _no_args, "NOOP": _no_args, "LOGOUT": _no_args, "STARTTLS": _no_args,
    "AUTHENTICATE": _authenticate, "LOGIN": _login,
    "SELECT": _select, "EXAMINE": _select,
    "CREATE": _create, "DELETE": _mailbox, "SUBSCRIBE": _mailbox, "UNSUBSCRIBE": _mailbox,
    "RENAME": _rename, "LIST": _list, "LSUB": _lsub, "STATUS": _status, "APPEND": _append,
    "CHECK": _no_args, "CLOSE": _no_args, "EXPUNGE": _no_args, "UNSELECT": _no_args,
    "SEARCH": _search, "SORT": _sort, "FETCH": _fetch, "STORE": _store, "COPY": _copy, "MOVE": _copy,
    "THREAD": _thread, "CANCELUPDATE": _cancelupdate,
    "IDLE": _no_args, "NAMESPACE": _no_args, "ID": _id, "ENABLE": _enable,
    "GETQUOTA": _getquota, "GETQUOTAROOT": _mailbox, "SETQUOTA": _setquota,
    "COMPRESS": _compress,
}
_UID_COMMANDS: dict[str, Callable[[_Reader], CommandArgs]] = {
    "FETCH": _fetch, "STORE": _store, "COPY": _copy, "MOVE": _copy, "SEARCH": _search,
    "SORT": _sort, "THREAD": _thread, "EXPUNGE": _uid_expunge,
}
KNOWN_COMMANDS = frozenset(_COMMANDS)


def parse_tag(data: bytes, complete: bool = True) -> str | None:
    """The tag at the start of a (possibly bad) command line, or None if there is none.

    With ``complete`` False, ``data`` is only the start of a line: the tag must end in a space.
    """
    end = 0
    while end < len(data) and data[end] in TAG_CHARS:
        end += 1
    if end == 0 or (end < len(data) and data[end] != 0x20) or (end == len(data) and not complete):
        return None
    return data[:end].decode("ascii")


def parse_command(data: bytes, decode_mailbox: MailboxDecoder = mutf7.decode, utf8: bool = False) -> Command:
    """Parse one framed command (ending in CRLF). Raises ``GrammarError``. ``utf8``: the
    session enabled IMAP4rev2 (UTF-8 in quoted strings and mailbox names, RFC 9051 §5.1)."""
    r = _Reader(data, decode_mailbox, utf8)
    tag_raw = r.run(TAG_CHARS)
    if not tag_raw:
        raise GrammarError("Missing tag")
    tag = tag_raw.decode("ascii")
    r.sp()
    name = r.atom("command").upper()
    uid = False
    table = _COMMANDS
    if name == "UID":  # RFC 3501 §6.4.8
        uid = True
        r.sp()
        name = r.atom("command").upper()
        table = _UID_COMMANDS
    handler = table.get(name)
    if handler is None:
        raise GrammarError(f"Unknown command {'UID ' if uid else ''}{name}")
    args = handler(r)
    if r.bad_name_code is not None:
        raise GrammarError("Mailbox name is not valid mUTF-7", "NO", r.bad_name_code)
    return Command(tag, name, args, uid)
