"""MIME structure of a stored message for FETCH: ENVELOPE, BODY[STRUCTURE], BODY[section].

``ParsedMessage(raw)`` takes the message as stored (LF or CRLF line ends), normalises it
to CRLF (the form IMAP sizes and sections are defined on, RFC 3501 §2.3.4 / §6.4.5), and
parses its MIME tree with its own offset-keeping parser (the stdlib ``email`` package does
not give byte offsets), modelled on Dovecot's: a stack of multipart boundaries where any
enclosing boundary also ends the inner parts, boundary lines matched by prefix, the CRLF
before a boundary line belonging to the boundary (RFC 2046 §5.1.1).

Invariants:
- Sections are exact slices of the CRLF-normalised bytes; nothing is re-encoded.
- Nothing here raises on a broken message: a bad Content-Type is text/plain (RFC 2045
  §5.2), a multipart without boundary or without parts degrades as Dovecot does, nesting
  deeper than ``MAX_DEPTH`` is treated as a leaf.
- Bounded like Dovecot's message-parser (``max_nested_mime_parts = 100``,
  ``max_total_mime_parts = 10000``, boundaries of at most 80 characters): past
  ``MAX_PARTS`` parts the remaining parts of a multipart stay in the body of its last
  part, and a longer boundary is no boundary (the part is text/plain, RFC 2045 §5.2).
  Parsing is linear in the message: header fields are unfolded without re-copying, and
  boundary lines are found by one compiled alternation per boundary stack, in C.
- Content-* fields of a message (top level or message/rfc822) without Mime-Version and
  without Content-Type are ignored, as Dovecot does; parts of a multipart are always MIME.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
from dataclasses import dataclass, field

from .addresses import Address, parse_address_list
from .types import FetchAttribute, Section

MAX_DEPTH = 100  # Dovecot: max_nested_mime_parts
MAX_PARTS = 10_000  # Dovecot: max_total_mime_parts
MAX_BOUNDARY = 80  # Dovecot: BOUNDARY_STRING_MAX_LEN (RFC 2046 §5.1.1 allows 70)
_COMPILE_BUDGET = 64 * 1024  # pattern bytes compiled per message (~0.1 s)
_TSPECIALS = set('()<>@,;:\\"/[]?=')


class UnknownCTE(ValueError):
    """A Content-Transfer-Encoding that BINARY cannot decode (RFC 3516 §4.3 UNKNOWN-CTE)."""


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


def _decode_base64(body: bytes) -> bytes:
    """RFC 2045 §6.8 base64, leniently as Dovecot: characters outside the alphabet are
    ignored, missing padding is supplied, decoding stops at the first "="."""
    clean = _NOT_BASE64.sub(b"", body.split(b"=", 1)[0])
    clean = clean[: len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean + b"=" * (-len(clean) % 4)
    return binascii.a2b_base64(clean)


_QP_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")


def _decode_qp(body: bytes) -> bytes:
    """RFC 2045 §6.7 quoted-printable: trailing blanks dropped (rule 3), "=" ending a line
    (after those blanks) is a soft line break (rule 5), "=XX" an octet; a malformed "="
    is kept as it is (as Dovecot does)."""
    out: list[bytes] = []
    lines = body.split(b"\r\n")
    for i, line in enumerate(lines):
        line = line.rstrip(b" \t")
        soft = line.endswith(b"=")
        if soft:
            line = line[:-1]
        out.append(_QP_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), line))
        if not soft and i < len(lines) - 1:
            out.append(b"\r\n")
    return b"".join(out)


def encode_binary_parts(raw: bytes) -> bytes:
    """A message APPENDed as a literal8 (RFC 3516 §4.4), with each MIME leaf part whose
    body holds a NUL, or is declared ``binary``, re-encoded as base64 (as Dovecot does), so
    that BODY[] stays a plain literal and BINARY[] gives back the octets exactly (its bare
    LFs and CRs included: the part is encoded from the raw octets, not the CRLF form)."""
    p = ParsedMessage(raw)
    inserted: list[int] = []  # positions in p.data of the CRs that to_crlf added
    for m in re.finditer(rb"(?<!\r)\n", raw):
        inserted.append(m.start() + len(inserted))

    def raw_at(n: int) -> int:
        return n - bisect.bisect_left(inserted, n)

    edits: list[tuple[int, int, bytes]] = []
    for leaf in p.leaves():
        if not leaf.is_mime:
            continue
        start, end = raw_at(leaf.body_start), raw_at(leaf.body_end)
        body = raw[start:end]
        field_ = next((f for f in leaf.fields if f.name == "content-transfer-encoding"), None)
        cte = (_single_token(field_.value) or "") if field_ is not None else ""
        if b"\0" not in body and cte.lower() != "binary":
            continue
        new_field = b"Content-Transfer-Encoding: base64\r\n"
        if field_ is not None:
            edits.append((raw_at(field_.start), raw_at(field_.end), new_field))
        else:
            at = raw_at(leaf.header_start)
            edits.append((at, at, new_field))
        edits.append((start, end, base64.encodebytes(body).replace(b"\n", b"\r\n")))
    out = raw
    for a, b, data in sorted(edits, reverse=True):
        out = out[:a] + data + out[b:]
    return out


def to_crlf(data: bytes) -> bytes:
    """LF or CRLF line ends to CRLF (bare CRs are kept)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@dataclass(frozen=True)
class Envelope:
    """RFC 3501 §7.4.2 ENVELOPE; strings are raw header values (encoded words kept)."""

    date: str | None = None
    subject: str | None = None
    from_: tuple[Address, ...] = ()
    sender: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    in_reply_to: str | None = None
    message_id: str | None = None


@dataclass(frozen=True)
class BodyStructure:
    """One node of BODY / BODYSTRUCTURE (RFC 3501 §7.4.2).

    A multipart has ``children`` (and ``subtype``, ``params``, disposition...); a
    message/rfc822 has ``envelope`` and ``message``; ``lines`` counts text and
    message/rfc822 bodies.
    """

    type: str
    subtype: str
    params: tuple[tuple[str, str], ...] = ()
    id: str | None = None
    description: str | None = None
    encoding: str = "7bit"
    size: int = 0
    lines: int = 0
    md5: str | None = None
    disposition: str | None = None
    disposition_params: tuple[tuple[str, str], ...] = ()
    language: tuple[str, ...] = ()
    location: str | None = None
    children: tuple[BodyStructure, ...] = ()
    envelope: Envelope | None = None
    message: BodyStructure | None = None


@dataclass
class HeaderField:
    """One header field: lower-case name, unfolded value, raw byte range (incl. CRLF)."""

    name: str
    value: str
    start: int
    end: int


@dataclass
class MimePart:
    """A parsed part with its byte ranges in the CRLF-normalised message."""

    header_start: int
    header_end: int
    body_start: int
    body_end: int
    fields: list[HeaderField]
    type: str = "text"
    subtype: str = "plain"
    params: list[tuple[str, str]] = field(default_factory=list)
    is_mime: bool = False
    children: list[MimePart] = field(default_factory=list)
    message: MimePart | None = None  # message/rfc822: the encapsulated message

    def get(self, name: str) -> str | None:
        """The first value of header field ``name`` (case-insensitive)."""
        name = name.lower()
        for f in self.fields:
            if f.name == name:
                return f.value
        return None

    def content(self, name: str) -> str | None:
        """A Content-* field, or None if this part is not MIME (Dovecot's rule)."""
        return self.get(name) if self.is_mime else None

    @property
    def is_multipart(self) -> bool:
        return bool(self.children)

    @property
    def is_message(self) -> bool:
        return self.message is not None

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k.lower() == name:
                return v
        return None


@dataclass(frozen=True)
class _Stop:
    """A boundary line found: which boundary (index in the stack), closing or not, where."""

    index: int
    closing: bool
    line_start: int
    next_start: int


# ------------------------------------------------------------------------- MIME tokens


def _mime_tokens(value: str) -> list[tuple[str, str]]:
    """RFC 2045 §5.1 tokens: ("t", token), ("q", quoted), ("s", tspecial); comments dropped."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth = 1
            i += 1
            while i < n and depth:
                if value[i] == "\\":
                    i += 1
                elif value[i] == "(":
                    depth += 1
                elif value[i] == ")":
                    depth -= 1
                i += 1
        elif c == '"':
            j, buf = i + 1, []
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(value[j])
                j += 1
            out.append(("q", "".join(buf)))
            i = j + 1
        elif c in _TSPECIALS:
            out.append(("s", c))
            i += 1
        else:
            j = i
            while j < n and value[j] not in _TSPECIALS and value[j] not in " \t\r\n" and ord(value[j]) > 0x1F:
                j += 1
            if j == i:  # a control character: skip it
                j += 1
            else:
                out.append(("t", value[i:j]))
            i = j
    return out


_SECTION_PARAM = re.compile(r"^(.*?)\*(\d{1,4})(\*?)$")  # RFC 2231 §3: name*0, name*1*; int() bounded


def _params(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``; name=value`` pairs; RFC 2231 continuations joined (values left encoded)."""
    raw: list[tuple[str, str]] = []
    i = 0
    while i + 3 < len(tokens) + 0 and tokens[i] == ("s", ";"):
        if tokens[i + 1][0] != "t" or tokens[i + 2] != ("s", "="):
            break
        if tokens[i + 3][0] not in ("t", "q"):
            break
        raw.append((tokens[i + 1][1], tokens[i + 3][1]))
        i += 4
        while i < len(tokens) and tokens[i] == ("s", ";") and (i + 1 == len(tokens) or tokens[i + 1] == ("s", ";")):
            i += 1  # stray ";;"
    out: list[tuple[str, str]] = []
    joined: dict[str, list[tuple[int, str]]] = {}
    extended: set[str] = set()
    for name, value in raw:
        m = _SECTION_PARAM.match(name)
        if m:  # RFC 2231 §3 name*0, name*1* ...
            base = m.group(1)
            if base.lower() not in joined:
                joined[base.lower()] = []
                out.append((base, ""))  # placeholder keeps the order
            joined[base.lower()].append((int(m.group(2)), value))
            if m.group(3):
                extended.add(base.lower())
        else:
            out.append((name, value))
    result = []
    for name, value in out:
        pieces = joined.get(name.lower())
        if pieces is not None and value == "":
            text = "".join(v for _, v in sorted(pieces))
            result.append((name + "*" if name.lower() in extended else name, text))
        else:
            result.append((name, value))
    return result


def _content_type(value: str) -> tuple[str, str, list[tuple[str, str]]] | None:
    tokens = _mime_tokens(value)
    if len(tokens) < 3 or tokens[0][0] != "t" or tokens[1] != ("s", "/") or tokens[2][0] != "t":
        return None
    return tokens[0][1], tokens[2][1], _params(tokens[3:])


def _single_token(value: str | None) -> str | None:
    if value is None:
        return None
    tokens = _mime_tokens(value)
    if len(tokens) == 1 and tokens[0][0] == "t":
        return tokens[0][1]
    return None


# ------------------------------------------------------------------------- the parser


class ParsedMessage:
    """One message's MIME tree and everything FETCH needs from its content."""

    def __init__(self, raw: bytes) -> None:
        self.data = to_crlf(raw)
        self._regexes: dict[tuple[bytes, ...], re.Pattern[bytes]] = {}
        self._stacks: dict[tuple[bytes, ...], tuple[dict[bytes, int], tuple[int, ...]]] = {}
        self._budget = _COMPILE_BUDGET
        self.parts = 0  # parts made so far (MAX_PARTS)
        self.root, _ = self._parse_part(0, [], ("text", "plain"), False, 0)

    @property
    def size(self) -> int:
        """RFC822.SIZE: octets with CRLF line ends (RFC 3501 §2.3.4)."""
        return len(self.data)

    # -- parsing ------------------------------------------------------------------------
    def _stack(self, boundaries: list[bytes]) -> tuple[dict[bytes, int], tuple[int, ...]]:
        """For a boundary stack: boundary -> innermost index, and the distinct lengths."""
        key = tuple(boundaries)
        info = self._stacks.get(key)
        if info is None:
            index = {b: i for i, b in enumerate(boundaries)}  # later (inner) ones win
            info = self._stacks[key] = (index, tuple(sorted({len(b) for b in boundaries})))
        return info

    def _boundary_regex(self, boundaries: list[bytes]) -> re.Pattern[bytes] | None:
        """``--`` and one of ``boundaries`` at a line start, innermost first (one group each).

        Compiling costs ~1.5 us per pattern byte; past ``_COMPILE_BUDGET`` bytes in one
        message (only a hostile one gets there) boundary lines are found by ``_scan``."""
        key = tuple(boundaries)
        regex = self._regexes.get(key)
        if regex is None:
            size = sum(len(b) + 3 for b in boundaries)
            if size > self._budget:
                return None
            self._budget -= size
            alternatives = b"|".join(b"(" + re.escape(b) + b")" for b in reversed(boundaries))
            regex = self._regexes[key] = re.compile(rb"(?:\A|(?<=\r\n))--(?:" + alternatives + rb")")
        return regex

    def _find_boundary(self, pos: int, boundaries: list[bytes]) -> _Stop | None:
        """The first boundary line at or after line start ``pos`` (RFC 2046 §5.1.1)."""
        if not boundaries:
            return None
        regex = self._boundary_regex(boundaries)
        if regex is None:
            return self._scan(pos, boundaries)
        m = regex.search(self.data, pos)
        if m is None:
            return None
        assert m.lastindex is not None
        return self._stop(len(boundaries) - m.lastindex, m.start(), m.end())  # groups: innermost first

    def _scan(self, pos: int, boundaries: list[bytes]) -> _Stop | None:
        d = self.data
        if d.startswith(b"--", pos):
            stop = self._match_boundary(pos, boundaries)
            if stop is not None:
                return stop
        search = pos
        while True:
            j = d.find(b"\r\n--", search)
            if j < 0:
                return None
            stop = self._match_boundary(j + 2, boundaries)
            if stop is not None:
                return stop
            search = j + 2

    def _match_boundary(self, line_start: int, boundaries: list[bytes]) -> _Stop | None:
        """The boundary line at ``line_start``, if it is one: the innermost boundary that
        the line starts with wins (RFC 2046 §5.1.2; Dovecot matches by prefix too)."""
        d = self.data
        if not d.startswith(b"--", line_start):
            return None
        index, lengths = self._stack(boundaries)
        start = line_start + 2
        best = -1
        for n in lengths:  # at most MAX_BOUNDARY distinct lengths
            i = index.get(d[start : start + n], -1)
            if i > best:
                best = i
        if best < 0:
            return None
        return self._stop(best, line_start, start + len(boundaries[best]))

    def _stop(self, index: int, line_start: int, after: int) -> _Stop:
        d = self.data
        closing = d.startswith(b"--", after)
        nl = d.find(b"\r\n", after)
        return _Stop(index, closing, line_start, len(d) if nl < 0 else nl + 2)

    def _parse_header(self, pos: int, boundaries: list[bytes]) -> tuple[list[HeaderField], int, int, _Stop | None]:
        """Fields, header end, body start, and a boundary met inside the header (if any)."""
        d, n = self.data, len(self.data)
        fields: list[HeaderField] = []
        pieces: list[list[str]] = []  # each field's value lines, joined once at the end
        stop: _Stop | None = None
        end = body = n
        i = pos
        while i < n:
            le = d.find(b"\r\n", i)
            line_end, nxt = (n, n) if le < 0 else (le, le + 2)
            if line_end == i:
                end = body = nxt
                break
            if boundaries and d.startswith(b"--", i):
                stop = self._match_boundary(i, boundaries)
                if stop is not None:
                    end = body = i
                    break
            if d[i] in (0x20, 0x09):
                if fields:
                    pieces[-1].append(d[i:line_end].decode("utf-8", "surrogateescape"))
                    fields[-1].end = nxt
            else:
                colon = d.find(b":", i, line_end)
                if colon > i:
                    name = d[i:colon].decode("utf-8", "surrogateescape").strip().lower()
                    fields.append(HeaderField(name, "", i, nxt))
                    pieces.append([d[colon + 1 : line_end].decode("utf-8", "surrogateescape")])
            i = nxt
        for f, values in zip(fields, pieces):
            f.value = "".join(values)
        return fields, end, body, stop

    def _parse_part(
        self, pos: int, boundaries: list[bytes], default: tuple[str, str], in_multipart: bool, depth: int
    ) -> tuple[MimePart, _Stop | None]:
        self.parts += 1
        fields, header_end, body_start, stop = self._parse_header(pos, boundaries)
        for f in fields:
            f.value = f.value.strip()
        part = MimePart(pos, header_end, body_start, body_start, fields)
        names = {f.name for f in fields}
        part.is_mime = in_multipart or "mime-version" in names or "content-type" in names
        part.type, part.subtype = default
        ct = part.content("content-type")
        parsed = _content_type(ct) if ct is not None else None
        if parsed is not None:
            part.type, part.subtype, part.params = parsed
        if stop is not None:  # a boundary inside the header: empty body
            return part, stop
        kind = (part.type.lower(), part.subtype.lower())
        boundary = part.param("boundary")
        if boundary is not None and len(boundary) > MAX_BOUNDARY:
            boundary = None
        room = depth < MAX_DEPTH and self.parts < MAX_PARTS
        if kind[0] == "multipart" and boundary and room:
            stack = boundaries + [boundary.encode("utf-8", "surrogateescape")]
            own = len(stack) - 1
            child_default = ("message", "rfc822") if kind[1] == "digest" else ("text", "plain")
            stop = self._find_boundary(body_start, stack)
            while stop is not None and stop.index == own and not stop.closing:
                if part.children and self.parts >= MAX_PARTS:
                    # no more parts: the rest of this multipart stays in its last part's body
                    while stop is not None and stop.index == own and not stop.closing:
                        stop = self._find_boundary(stop.next_start, stack)
                    last = part.children[-1]
                    last.body_end = max(last.body_end, self._body_end(last.body_start, stop))
                    break
                child, stop = self._parse_part(stop.next_start, stack, child_default, True, depth + 1)
                part.children.append(child)
            if stop is not None and stop.index == own:  # closing: the epilogue follows
                stop = self._find_boundary(stop.next_start, boundaries)
            if not part.children:  # no parts: one empty text/plain, as Dovecot shows it
                at = self._body_end(body_start, stop)
                part.children.append(MimePart(at, at, at, at, [], is_mime=True))
        elif kind == ("message", "rfc822") and room:
            part.message, stop = self._parse_part(body_start, boundaries, ("text", "plain"), False, depth + 1)
        else:
            if kind[0] == "multipart":  # no boundary: RFC 2045 §5.2 default
                part.type, part.subtype, part.params = "text", "plain", []
            stop = self._find_boundary(body_start, boundaries)
        part.body_end = self._body_end(body_start, stop)
        return part, stop

    def _body_end(self, body_start: int, stop: _Stop | None) -> int:
        if stop is None:
            return len(self.data)
        # RFC 2046 §5.1.1: the CRLF before the boundary line belongs to the boundary
        return max(body_start, stop.line_start - 2)

    # -- BODY / BODYSTRUCTURE -----------------------------------------------------------
    def envelope(self) -> Envelope:
        return envelope_of(self.root)

    def body_structure(self) -> BodyStructure:
        return self._structure(self.root)

    def _structure(self, part: MimePart) -> BodyStructure:
        disposition_value = part.content("content-disposition")
        disposition: str | None = None
        disposition_params: list[tuple[str, str]] = []
        if disposition_value is not None:
            tokens = _mime_tokens(disposition_value)
            if tokens and tokens[0][0] == "t":
                disposition = tokens[0][1]
                disposition_params = _params(tokens[1:])
        language: list[str] = []
        lang_value = part.content("content-language")
        if lang_value:
            for piece in lang_value.split(","):
                tok = _single_token(piece)
                if tok is None:
                    break
                language.append(tok)
        common = dict(
            disposition=disposition,
            disposition_params=tuple(disposition_params),
            language=tuple(language),
            location=part.content("content-location"),
        )
        if part.children:
            return BodyStructure(
                "multipart", part.subtype, tuple(part.params),
                children=tuple(self._structure(c) for c in part.children), **common,  # type: ignore[arg-type]
            )
        params = list(part.params)
        is_text = part.type.lower() == "text"
        if is_text and not any(k.lower() == "charset" for k, _ in params):
            params.append(("charset", "us-ascii"))  # RFC 2045 §5.2 default, written out like Dovecot
        body = self.data[part.body_start : part.body_end]
        return BodyStructure(
            part.type, part.subtype, tuple(params),
            id=part.content("content-id"),
            description=part.content("content-description"),
            encoding=_single_token(part.content("content-transfer-encoding")) or "7bit",
            size=len(body),
            lines=body.count(b"\n"),
            md5=part.content("content-md5"),
            envelope=envelope_of(part.message) if part.message is not None else None,
            message=self._structure(part.message) if part.message is not None else None,
            **common,  # type: ignore[arg-type]
        )

    # -- BODY[section] ------------------------------------------------------------------
    def _numbered(self, part: MimePart, as_root: bool) -> list[tuple[MimePart, bool]]:
        """The parts numbered 1, 2, ... under ``part`` (RFC 3501 §6.4.5)."""
        if part.children:
            return [(c, False) for c in part.children]
        if as_root:  # a non-multipart message has just part 1: itself
            return [(part, False)]
        if part.message is not None:
            return self._numbered(part.message, True)
        return []

    def resolve(self, path: tuple[int, ...]) -> MimePart | None:
        """The part a numeric section path names, or None if it does not exist."""
        part, as_root = self.root, True
        for n in path:
            kids = self._numbered(part, as_root)
            if not 1 <= n <= len(kids):
                return None
            part, as_root = kids[n - 1]
        return part

    def section(self, section: Section) -> bytes | None:
        """The bytes of BODY[section] (before any partial), or None for a missing part."""
        d = self.data
        part = self.resolve(section.part)
        if part is None:
            return None
        if section.text is None:
            if not section.part:
                return d
            return d[part.body_start : part.body_end]
        if section.text == "MIME":  # RFC 3501 §6.4.5: the MIME header of the part
            return d[part.header_start : part.header_end]
        if section.part:  # HEADER/TEXT after a part number: it must be message/rfc822
            if part.message is None:
                return None
            part = part.message
        if section.text == "TEXT":
            return d[part.body_start : part.body_end]
        if section.text == "HEADER":
            return d[part.header_start : part.header_end]
        wanted = {f.lower() for f in section.fields}
        keep_matching = section.text == "HEADER.FIELDS"
        out = b"".join(
            d[f.start : f.end] for f in part.fields if (f.name in wanted) == keep_matching
        )
        return out + b"\r\n"

    def fetch_section(self, att: FetchAttribute) -> bytes | None:
        """BODY[...]<partial>, RFC822, RFC822.HEADER, RFC822.TEXT (RFC 3501 §6.4.5)."""
        if att.name == "RFC822":
            return self.data
        if att.name == "RFC822.HEADER":
            return self.section(Section(text="HEADER"))
        if att.name == "RFC822.TEXT":
            return self.section(Section(text="TEXT"))
        if att.section is None:
            raise ValueError(f"{att.name} is not a body section")
        data = self.section(att.section)
        if data is not None and att.partial is not None:
            origin, count = att.partial
            data = data[origin : origin + count]
        return data

    def binary_section(self, path: tuple[int, ...]) -> bytes | None:
        """The content of BINARY[path] (RFC 3516 §4.2): the part's body with its
        Content-Transfer-Encoding undone; BINARY[] is the whole message as it is. None
        for a missing part; ``UnknownCTE`` for an encoding this server cannot undo."""
        if not path:
            return self.data
        part = self.resolve(path)
        if part is None:
            return None
        body = self.data[part.body_start : part.body_end]
        if part.children or part.message is not None:  # RFC 2045 §6.4: never encoded
            return body
        raw = part.content("content-transfer-encoding")
        cte = "7bit" if raw is None else (_single_token(raw) or raw.strip()).lower()
        if cte in ("7bit", "8bit", "binary"):
            return body
        if cte == "base64":
            return _decode_base64(body)
        if cte == "quoted-printable":
            return _decode_qp(body)
        raise UnknownCTE(cte)

    def leaves(self) -> list[MimePart]:
        """All non-multipart parts, depth first, entering message/rfc822 (for SEARCH)."""
        out: list[MimePart] = []

        def walk(part: MimePart) -> None:
            if part.children:
                for c in part.children:
                    walk(c)
            elif part.message is not None:
                walk(part.message)
            else:
                out.append(part)

        walk(self.root)
        return out


def envelope_of(part: MimePart) -> Envelope:
    """ENVELOPE from a message header (RFC 3501 §7.4.2)."""

    def addrs(name: str) -> tuple[Address, ...]:
        value = part.get(name)
        return tuple(parse_address_list(value)) if value else ()

    from_ = addrs("from")
    # RFC 3501 §7.4.2: absent or empty Sender / Reply-To take the From value
    return Envelope(
        date=part.get("date"),
        subject=part.get("subject"),
        from_=from_,
        sender=addrs("sender") or from_,
        reply_to=addrs("reply-to") or from_,
        to=addrs("to"),
        cc=addrs("cc"),
        bcc=addrs("bcc"),
        in_reply_to=part.get("in-reply-to"),
        message_id=part.get("message-id"),
    )
