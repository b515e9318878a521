"""Sieve: a stranger's message through a script that looks at everything, and any script text
through the parser. The interpreter's ``run`` must never raise, and always ends with at least
one place for the message (or a decision made by the script); the parser raises only
``SieveSyntaxError``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailstack.sieve import Context, Envelope, Interpreter, SieveSyntaxError, compile_script
from tests.hostile.bounds import SETTINGS, bounded

EVERYTHING = Interpreter.compile("""
require ["fileinto", "envelope", "body", "variables", "relational", "comparator-i;ascii-numeric",
         "subaddress", "date", "index", "regex", "imap4flags", "encoded-character"];
if anyof (address :detail :matches ["from", "to", "cc"] "*",
          header :regex "subject" "^(.*)[[:space:]]+(.*)$",
          header :count "gt" :comparator "i;ascii-numeric" "received" "3",
          date :originalzone "date" "weekday" "0",
          date :index 2 :last "received" "year" "2020",
          body :text :contains "${hex:41}",
          body :content "text/html" :matches "*<*>*",
          envelope :user "to" "x") {
  set "s" "${1}";
  addflag "${s}";
  fileinto "F.${s}";
}
""")

HEADERS = st.sampled_from([
    b"From: =?utf-8?q?=FF?= <a+b@c>\r\n", b"To: ,,,<>,\"a\" <@>, (x\r\n", b"Cc: a@b, c@d, e@f\r\n",
    b"Subject: =?bogus?x?y?=\r\n", b"Subject: a b\r\n", b"Date: Mon, 99 Foo 99999 99:99:99 +9999\r\n",
    b"Date: \r\n", b"Received: x; Tue, 1 Dec 2026 10:00:00 +0100\r\n", b"Received: ;;;\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: text/html; charset=nonexistent\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b" folded\r\n", b"\r\n",
])
LINES = st.sampled_from([b"--b\r\n", b"--b--\r\n", b"A\r\n", b"<p>x</p>\r\n", b"=ZZ\r\n", b"AAAA\r\n"])


@st.composite
def near_messages(draw: st.DrawFn) -> bytes:
    return b"".join(draw(st.lists(st.one_of(HEADERS, LINES), max_size=40)))


def _run(message: bytes) -> None:
    result = EVERYTHING.run(Context(message, Envelope("x+y@example.org", "b+c@example.test")))
    assert result.actions  # a store, always: the script never discards
    assert all(a.kind in ("keep", "fileinto") for a in result.actions)


@SETTINGS
@given(st.binary(max_size=4000))
def test_any_message(message: bytes) -> None:
    bounded(_run, message)


@SETTINGS
@given(near_messages())
def test_near_valid_messages(message: bytes) -> None:
    bounded(_run, message)


def test_amplified_message() -> None:
    message = (b"Received: a; Tue, 1 Dec 2026 10:00:00 +0100\r\n" * 2000 + b"Subject: " + b"a " * 20000
               + b"\r\nTo: " + b"a@b, " * 5000 + b"\r\n\r\n" + b"A" * 200000)
    bounded(_run, message)


TOKENS = st.sampled_from(['if', 'true', 'not', 'anyof', '(', ')', '{', '}', '[', ']', ',', ';', '"x"', ':is',
                          'text:\n.\n', '"\\', '/*', '*/', '#', '\n', '1K', 'header', 'require', '"fileinto"',
                          'fileinto', ' ', '${', '99999999999999999999G'])


def _compile(text: str) -> None:
    try:
        compile_script(text)
    except SieveSyntaxError:
        pass


@SETTINGS
@given(st.lists(TOKENS, max_size=80).map(" ".join))
def test_near_valid_scripts(text: str) -> None:
    bounded(_compile, text)


@SETTINGS
@given(st.binary(max_size=2000))
def test_any_script_bytes(data: bytes) -> None:
    bounded(_compile, data)


def test_amplified_scripts() -> None:
    for text in ("[" + '"a",' * 100000 + '"a"]', "(" * 5000, "not " * 5000 + "true", "/*" * 100000,
                 '"' + "\\" * 200000, "if true {" * 5000):
        bounded(_compile, text)
