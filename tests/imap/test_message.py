"""BODY / BODYSTRUCTURE / ENVELOPE and BODY[section] of sample messages.

The expected BODYSTRUCTURE strings are what Dovecot returns: the first is Dovecot's own
test vector (src/lib-imap/test-imap-bodystructure.c); the others were written from
RFC 3501 §7.4.2 with Dovecot's conventions (lower-case defaults, ``("charset" "us-ascii")``
added to text parts without one, Content-* ignored without Mime-Version/Content-Type).
"""

from __future__ import annotations

import pytest

from mailstack.imap.message import ParsedMessage, to_crlf
from mailstack.imap.responses import render_body_structure, render_envelope
from mailstack.imap.types import FetchAttribute, Section

DOVECOT_MSG = (
    b"From: user@domain.org\n"
    b"Date: Sat, 24 Mar 2007 23:00:00 +0200\n"
    b"Mime-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="foo\n'
    b' bar"\n'
    b"\n"
    b"Root MIME prologue\n"
    b"\n"
    b"--foo bar\n"
    b'Content-Type: text/x-myown; charset=us-ascii; foo="quoted\\"string"\n'
    b"Content-ID: <foo@example.com>\n"
    b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n"
    b"Content-Disposition: inline; foo=bar\n"
    b"Content-Description: hellodescription\n"
    b"Content-Language: en, fi, se\n"
    b"Content-Location: http://example.com/test.txt\n"
    b"\n"
    b"hello\n"
    b"\n"
    b"--foo bar\n"
    b"Content-Type: message/rfc822\n"
    b"\n"
    b"From: sub@domain.org\n"
    b"To: sub-to1@domain.org, sub-to2@domain.org\n"
    b"Date: Sun, 12 Aug 2012 12:34:56 +0300\n"
    b"Subject: submsg\n"
    b'Content-Type: multipart/alternative; boundary="sub1"\n'
    b"\n"
    b"Sub MIME prologue\n"
    b"--sub1\n"
    b"Content-Type: text/html\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"\n"
    b"<p>Hello world</p>\n"
    b"\n"
    b"--sub1\n"
    b"Content-Type: text/plain\n"
    b"Content-Transfer-Encoding: ?invalid\n"
    b"\n"
    b"Hello another world\n"
    b"\n"
    b"--sub1--\n"
    b"Sub MIME epilogue\n"
    b"\n"
    b"--foo bar--\n"
    b"Root MIME epilogue\n"
)
DOVECOT_BODYSTRUCTURE = (
    b'("text" "x-myown" ("charset" "us-ascii" "foo" "quoted\\"string") "<foo@example.com>" "hellodescription" "7bit" 7 1 '
    b'"Q2hlY2sgSW50ZWdyaXR5IQ==" ("inline" ("foo" "bar")) ("en" "fi" "se") "http://example.com/test.txt")'
    b'("message" "rfc822" NIL NIL NIL "7bit" 412 ("Sun, 12 Aug 2012 12:34:56 +0300" "submsg" ((NIL NIL "sub" "domain.org")) '
    b'((NIL NIL "sub" "domain.org")) ((NIL NIL "sub" "domain.org")) ((NIL NIL "sub-to1" "domain.org")(NIL NIL "sub-to2" "domain.org")) '
    b'NIL NIL NIL NIL) (("text" "html" ("charset" "us-ascii") NIL NIL "8bit" 20 1 NIL NIL NIL NIL)'
    b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 21 1 NIL NIL NIL NIL) "alternative" ("boundary" "sub1") NIL NIL NIL) '
    b'21 NIL NIL NIL NIL) "mixed" ("boundary" "foo bar") NIL NIL NIL'
)
DOVECOT_BODY = (
    b'("text" "x-myown" ("charset" "us-ascii" "foo" "quoted\\"string") "<foo@example.com>" "hellodescription" "7bit" 7 1)'
    b'("message" "rfc822" NIL NIL NIL "7bit" 412 ("Sun, 12 Aug 2012 12:34:56 +0300" "submsg" ((NIL NIL "sub" "domain.org")) '
    b'((NIL NIL "sub" "domain.org")) ((NIL NIL "sub" "domain.org")) ((NIL NIL "sub-to1" "domain.org")(NIL NIL "sub-to2" "domain.org")) '
    b'NIL NIL NIL NIL) (("text" "html" ("charset" "us-ascii") NIL NIL "8bit" 20 1)'
    b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 21 1) "alternative") 21) "mixed"'
)


def structure(raw: bytes, extended: bool = True) -> bytes:
    return render_body_structure(ParsedMessage(raw).body_structure(), extended)


def test_dovecot_vector_bodystructure() -> None:
    assert structure(DOVECOT_MSG) == b"(" + DOVECOT_BODYSTRUCTURE + b")"


def test_dovecot_vector_body() -> None:
    assert structure(DOVECOT_MSG, extended=False) == b"(" + DOVECOT_BODY + b")"


def test_same_structure_from_crlf_input() -> None:
    assert structure(to_crlf(DOVECOT_MSG)) == structure(DOVECOT_MSG)


SAMPLES: list[tuple[str, bytes, bytes]] = [
    (
        "plain message without MIME headers",
        b"From: a@b.example\nSubject: hi\n\nHello\nWorld\n",
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 14 2 NIL NIL NIL NIL)',
    ),
    (
        "empty body",
        b"Subject: x\n\n",
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)',
    ),
    (
        "header only, no blank line",
        b"Subject: x\n",
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)',
    ),
    (
        "last line without line end",
        b"Subject: x\n\nabc",
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL)',
    ),
    (
        "Content-* without Mime-Version or Content-Type are ignored (Dovecot)",
        b"Content-Transfer-Encoding: base64\nContent-ID: <x>\n\naGk=\n",
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1 NIL NIL NIL NIL)',
    ),
    (
        "case kept as written (RFC 3501 §7.4.2 example style)",
        b"MIME-Version: 1.0\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\nContent-Transfer-Encoding: 7BIT\n\nx\n",
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3 1 NIL NIL NIL NIL)',
    ),
    (
        "text parameters get the default charset appended",
        b"Content-Type: text/plain; format=flowed; delsp=yes\n\nx\n",
        b'("text" "plain" ("format" "flowed" "delsp" "yes" "charset" "us-ascii") NIL NIL "7bit" 3 1 NIL NIL NIL NIL)',
    ),
    (
        "broken Content-Type is text/plain (RFC 2045 §5.2)",
        b"Content-Type: garbage\n\nx\n",
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 1 NIL NIL NIL NIL)',
    ),
    (
        "multipart without boundary is text/plain",
        b"Content-Type: multipart/mixed\n\n--x\n\nhi\n--x--\n",
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 18 4 NIL NIL NIL NIL)',
    ),
    (
        "multipart whose boundary never appears: one empty text/plain part",
        b"Content-Type: multipart/mixed; boundary=zz\n\nno parts here\n",
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) "mixed" ("boundary" "zz") NIL NIL NIL)',
    ),
    (
        "attachment: non-text has no line count; RFC 2231 continuations joined",
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"=_b\"\n\n--=_b\n"
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\nh=C3=A9\n--=_b\n"
        b"Content-Type: application/pdf; name*0=\"rep\"; name*1=\"ort.pdf\"\n"
        b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9port.pdf\n"
        b"Content-Transfer-Encoding: base64\n\nJVBERi0=\n--=_b--\n",
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 7 0 NIL NIL NIL NIL)'
        b'("application" "pdf" ("name" "report.pdf") NIL NIL "base64" 8 NIL ("attachment" ("filename*" "utf-8\'\'r%C3%A9port.pdf")) NIL NIL)'
        b' "mixed" ("boundary" "=_b") NIL NIL NIL)',
    ),
    (
        "missing closing boundary: the last part runs to the end",
        b"Content-Type: multipart/alternative; boundary=b\n\n--b\n\none\n--b\nContent-Type: text/html\n\n<b>two</b>\n",
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 12 1 NIL NIL NIL NIL) "alternative" ("boundary" "b") NIL NIL NIL)',
    ),
    (
        "an outer boundary ends an unterminated inner multipart",
        b"Content-Type: multipart/mixed; boundary=out\n\n--out\nContent-Type: multipart/related; boundary=in\n\n"
        b"--in\n\ninner\n--out\n\nsecond\n--out--\n",
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0 NIL NIL NIL NIL) "related" ("boundary" "in") NIL NIL NIL)'
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 0 NIL NIL NIL NIL) "mixed" ("boundary" "out") NIL NIL NIL)',
    ),
    (
        "multipart/digest parts default to message/rfc822",
        b"Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: inner\n\nbody\n--d--\n",
        b'(("message" "rfc822" NIL NIL NIL "7bit" 22 ("NIL" "inner" NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 4 0 NIL NIL NIL NIL) 2 NIL NIL NIL NIL) '
        b'"digest" ("boundary" "d") NIL NIL NIL)',
    ),
    (
        "disposition, single language and location",
        b"Content-Type: image/png\nContent-Disposition: inline\nContent-Language: de\nContent-Location: a.png\n\nxx\n",
        b'("image" "png" NIL NIL NIL "7bit" 4 NIL ("inline" NIL) "de" "a.png")',
    ),
]


@pytest.mark.parametrize(("name", "raw", "expected"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_bodystructure_samples(name: str, raw: bytes, expected: bytes) -> None:
    got = structure(raw)
    if name.startswith("multipart/digest"):
        # the inner message has no Date: NIL, not the string "NIL"
        expected = expected.replace(b'("NIL" "inner"', b'(NIL "inner"')
    assert got == expected


@pytest.mark.parametrize("raw", [
    b"",
    b"\n",
    b"Content-Type: multipart/mixed; boundary=a\n\n" + b"--a\nContent-Type: multipart/mixed; boundary=a\n\n" * 500,
    b"Content-Type: message/rfc822\n\n" * 300,
    b"Content-Type: text/plain; charset=\"unterminated\n\nx",
    b"Content-Type: multipart/mixed; boundary=\"\"\n\n--\n\n",
    b"From: \"unterminated <a@b\nTo: ,,,;:<>@\nCc: (((\n\n",
    b"\xff\xfe\x00garbage:\x80\n\n\x00\x01",
])
def test_broken_messages_never_raise(raw: bytes) -> None:
    m = ParsedMessage(raw)
    render_body_structure(m.body_structure())
    render_envelope(m.envelope())
    for path in ((), (1,), (1, 1), (2,)):
        m.section(Section(path))
        m.section(Section(path, "MIME") if path else Section((), "HEADER"))


# --- ENVELOPE ---------------------------------------------------------------------------------

def envelope(header: bytes) -> bytes:
    return render_envelope(ParsedMessage(header + b"\n\nbody\n").envelope())


def test_envelope_full() -> None:
    got = envelope(
        b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n"
        b"From: Terry Gray <gray@cac.washington.edu>\n"
        b"Subject: IMAP4rev1 WG mtg summary and minutes\n"
        b"To: imap@cac.washington.edu\n"
        b"cc: minutes@CNRI.Reston.VA.US,\n"
        b"   John Klensin <KLENSIN@MIT.EDU>\n"
        b"Message-Id: <B27397-0100000@cac.washington.edu>\n"
        b"In-Reply-To: <x@y>"
    )
    # RFC 3501 §8's example, with Sender and Reply-To copied from From (§7.4.2)
    assert got == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) (("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) ((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL "<x@y>" '
        b'"<B27397-0100000@cac.washington.edu>")'
    )


def test_envelope_absent_headers_are_nil() -> None:
    assert envelope(b"X-Other: 1") == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_envelope_empty_sender_takes_from() -> None:
    got = envelope(b"From: a@b.example\nSender:\nReply-To: r@b.example")
    assert got.count(b'(NIL NIL "a" "b.example")') == 2 and b'"r" "b.example"' in got


ADDRESSES = [
    (b"\"Doe, John\" <john@example.com>", b'(("Doe, John" NIL "john" "example.com"))'),
    (b"john@example.com (John Doe)", b'(("John Doe" NIL "john" "example.com"))'),
    (b"John Q. Public <jqp@x.example>", b'(("John Q. Public" NIL "jqp" "x.example"))'),
    (b"<@relay.example,@r2.example:user@host.example>", b'((NIL "@relay.example,@r2.example" "user" "host.example"))'),
    (b"undisclosed-recipients:;", b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'),
    (
        b"team: a@x.example, B <b@x.example>;, c@y.example",
        b'((NIL NIL "team" NIL)(NIL NIL "a" "x.example")("B" NIL "b" "x.example")(NIL NIL NIL NIL)(NIL NIL "c" "y.example"))',
    ),
    (b"=?utf-8?q?J=C3=B6rg?= <j@x.example>", b'(("=?utf-8?q?J=C3=B6rg?=" NIL "j" "x.example"))'),
    (b"localonly", b'((NIL NIL "localonly" "MISSING_DOMAIN"))'),
    (b"<>", b'((NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN"))'),
    (b"\"quoted local\"@x.example", b'((NIL NIL "quoted local" "x.example"))'),
    (b"J\xc3\xb6rg <j@x.example>", b'(({5}\r\nJ\xc3\xb6rg NIL "j" "x.example"))'),
]


@pytest.mark.parametrize(("value", "expected"), ADDRESSES)
def test_envelope_addresses(value: bytes, expected: bytes) -> None:
    got = envelope(b"To: " + value)
    assert got == b"(NIL NIL NIL NIL NIL " + expected + b" NIL NIL NIL NIL)"


def test_envelope_of_non_ascii_subject_is_a_literal() -> None:
    got = envelope("Subject: Grüße".encode())
    assert got.startswith(b"(NIL {7}\r\nGr\xc3\xbc\xc3\x9fe NIL")


# --- BODY[section] --------------------------------------------------------------------------

NESTED = (
    b"From: a@x.example\n"
    b"Subject: outer\n"
    b"X-Folded: one\n two\n"
    b"Content-Type: multipart/mixed; boundary=B\n"
    b"\n"
    b"preamble\n"
    b"--B\n"
    b"Content-Type: text/plain\n"
    b"\n"
    b"first part\n"
    b"--B\n"
    b"Content-Type: message/rfc822\n"
    b"\n"
    b"Subject: inner\n"
    b"Content-Type: multipart/alternative; boundary=C\n"
    b"\n"
    b"--C\n"
    b"\n"
    b"alt one\n"
    b"--C\n"
    b"Content-Type: text/html\n"
    b"\n"
    b"<p>alt two</p>\n"
    b"--C--\n"
    b"--B--\n"
    b"epilogue\n"
)

SECTIONS = [
    (Section(), to_crlf(NESTED)),
    (Section(text="HEADER"), to_crlf(NESTED.split(b"\n\n")[0] + b"\n\n")),
    (Section(text="HEADER.FIELDS", fields=("SUBJECT", "x-folded")), b"Subject: outer\r\nX-Folded: one\r\n two\r\n\r\n"),
    (Section(text="HEADER.FIELDS", fields=("Nothing",)), b"\r\n"),
    (
        Section(text="HEADER.FIELDS.NOT", fields=("X-Folded", "Content-Type")),
        b"From: a@x.example\r\nSubject: outer\r\n\r\n",
    ),
    (Section((1,)), b"first part"),
    (Section((1,), "MIME"), b"Content-Type: text/plain\r\n\r\n"),
    # the CRLF before "--B--" belongs to that boundary (RFC 2046 §5.1.1)
    (Section((2,)), to_crlf(NESTED[NESTED.index(b"Subject: inner") : NESTED.index(b"--C--\n") + 5])),
    (Section((2,), "HEADER"), b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=C\r\n\r\n"),
    (Section((2,), "HEADER.FIELDS", ("subject",)), b"Subject: inner\r\n\r\n"),
    (Section((2,), "TEXT"), b"--C\r\n\r\nalt one\r\n--C\r\nContent-Type: text/html\r\n\r\n<p>alt two</p>\r\n--C--"),
    (Section((2, 1)), b"alt one"),
    (Section((2, 2)), b"<p>alt two</p>"),
    (Section((2, 2), "MIME"), b"Content-Type: text/html\r\n\r\n"),
    (Section((1,), "HEADER"), None),  # part 1 is not message/rfc822
    (Section((3,)), None),
    (Section((2, 3)), None),
    (Section((1, 1)), None),
]


@pytest.mark.parametrize(("section", "expected"), SECTIONS, ids=[s[0].render() or "[]" for s in SECTIONS])
def test_sections(section: Section, expected: bytes | None) -> None:
    assert ParsedMessage(NESTED).section(section) == expected


def test_single_part_numbering() -> None:
    m = ParsedMessage(b"Subject: s\n\nline1\nline2\n")
    assert m.section(Section((1,))) == b"line1\r\nline2\r\n"
    assert m.section(Section(text="TEXT")) == b"line1\r\nline2\r\n"
    assert m.section(Section((2,))) is None
    assert m.size == len(b"Subject: s\r\n\r\nline1\r\nline2\r\n")


def test_partial_and_rfc822_items() -> None:
    m = ParsedMessage(b"Subject: s\n\n0123456789\n")
    body = FetchAttribute("BODY", Section(text="TEXT"), (2, 3))
    assert m.fetch_section(body) == b"234"
    assert m.fetch_section(FetchAttribute("BODY", Section(), (100, 5))) == b""
    assert m.fetch_section(FetchAttribute("RFC822")) == b"Subject: s\r\n\r\n0123456789\r\n"
    assert m.fetch_section(FetchAttribute("RFC822.HEADER")) == b"Subject: s\r\n\r\n"
    assert m.fetch_section(FetchAttribute("RFC822.TEXT")) == b"0123456789\r\n"


def test_top_level_message_rfc822() -> None:
    m = ParsedMessage(b"Content-Type: message/rfc822\n\nSubject: in\n\nhi\n")
    assert m.section(Section((1,))) == b"Subject: in\r\n\r\nhi\r\n"
    assert m.section(Section((1,), "HEADER")) == b"Subject: in\r\n\r\n"
    assert m.section(Section((1, 1))) == b"hi\r\n"


def test_dash_line_that_is_not_the_boundary_at_body_start() -> None:
    # regression (found by Hypothesis): a "--" line right at the body start that is not a
    # boundary used to loop forever
    m = ParsedMessage(b"Content-Type: multipart/mixed; boundary=b\n\n--x\n--b\n\nhi\n--b--\n")
    assert m.section(Section((1,))) == b"hi"
