"""Transcripts of IMAP corners that Dovecot's imaptest tripped over (issue 16).

Each test talks to the real server over a raw socket, so the exact responses and their
order are what is checked: mailbox names that are not modified UTF-7 (imaptest group
``atoms``), keywords announced in FLAGS before a FETCH carries them (RFC 3501 §7.2.6),
SEARCH on address fields in any form (group ``search-addresses``), LIST-EXTENDED and LSUB
(groups ``listext``, ``subscribe``).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator

import pytest

from .conftest import PASSWORD, IMAPServer

ALICE = "alice@example.test"


class Raw:
    """One raw IMAP connection: ``cmd(line)`` sends a tagged command, returns the whole
    response (untagged lines and the tagged one) as text."""

    def __init__(self, imap: IMAPServer, user: str = ALICE) -> None:
        self.sock = socket.create_connection(("127.0.0.1", imap.port), timeout=10)
        self.buf = b""
        self.n = 0
        assert self._until(None).startswith("* OK")
        assert " OK " in self.cmd(f'LOGIN "{user}" "{PASSWORD}"')

    def _until(self, tag: str | None) -> str:
        end = re.compile(rb"(^|\r\n)" + (re.escape(tag.encode()) + rb" [A-Z]+ " if tag else rb"\* OK ")
                         + rb"[^\r\n]*\r\n")
        while True:
            m = end.search(self.buf)
            if m:
                out, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return out.decode()
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed; got {self.buf!r}"
            self.buf += chunk

    def cmd(self, line: str, literal: bytes | None = None) -> str:
        self.n += 1
        tag = f"t{self.n}"
        if literal is None:
            self.sock.sendall(f"{tag} {line}\r\n".encode())
        else:
            self.sock.sendall(f"{tag} {line} {{{len(literal)}+}}\r\n".encode() + literal + b"\r\n")
        return self._until(tag)

    def close(self) -> None:
        self.cmd("LOGOUT")
        self.sock.close()


@pytest.fixture
def connect(imap: IMAPServer) -> Iterator[Callable[[], Raw]]:
    """Opens logged-in raw connections; all are closed at teardown, even after a failure."""
    opened: list[Raw] = []

    def make() -> Raw:
        opened.append(Raw(imap))
        return opened[-1]

    yield make
    for c in opened:
        c.sock.close()


def tagged(resp: str) -> str:
    """The tagged status line of a response, without the tag."""
    return resp.rstrip("\r\n").rsplit("\r\n", 1)[-1].split(" ", 1)[1]


# -- names that are not modified UTF-7 (imaptest "atoms") --------------------------------

ATOMS = "!#$&'+,-.0123456789:;<=>?@^_`|[}"  # every ATOM-CHAR that is not a letter


def test_name_not_modified_utf7_is_no_never_bad(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    c = connect()
    # RFC 3501 §7.1.3: BAD is for a malformed command; such a name just names no mailbox
    assert tagged(c.cmd(f"SELECT {ATOMS}")).startswith("NO [NONEXISTENT]")
    assert tagged(c.cmd(f"EXAMINE {ATOMS}")).startswith("NO [NONEXISTENT]")
    assert tagged(c.cmd(f"STATUS {ATOMS} (MESSAGES)")).startswith("NO [NONEXISTENT]")
    assert tagged(c.cmd("DELETE &Jjo")).startswith("NO [NONEXISTENT]")
    assert tagged(c.cmd("CREATE &Jjo")).startswith("NO [CANNOT]")
    assert tagged(c.cmd("SELECT ~foo")).startswith("NO")
    # a LIST pattern that is not modified UTF-7 matches nothing, and the connection stays
    resp = c.cmd(f'LIST "" {ATOMS}%*')
    assert tagged(resp).startswith("OK") and "* LIST" not in resp
    assert tagged(c.cmd('LIST "" ~foo')).startswith("OK")
    assert tagged(c.cmd('LSUB "" &Jjo*')).startswith("OK")
    # a malformed command is still BAD, before the name is looked at
    assert tagged(c.cmd("SELECT &Jjo (FROB)")).startswith("BAD")
    assert tagged(c.cmd("NOOP")).startswith("OK")
    c.close()


# -- keywords announced before use (RFC 3501 §7.2.6) ------------------------------------

def _flags_line(resp: str) -> str:
    m = re.search(r"^\* FLAGS \(([^)]*)\)\r$", resp, re.M)
    assert m, resp
    return m.group(1)


def _before(resp: str, first: str, then: str) -> bool:
    a, b = resp.find(first), resp.find(then)
    return a != -1 and b != -1 and a < b


def test_keyword_announced_before_any_fetch_carries_it(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    imap.deliver(ALICE, b"Subject: one\r\n\r\nbody\r\n")
    a, b = connect(), connect()
    assert "$hello" not in _flags_line(a.cmd("SELECT INBOX"))
    b.cmd("SELECT INBOX")

    # set by this session's STORE: FLAGS and PERMANENTFLAGS first, then the FETCH
    resp = a.cmd("STORE 1 +FLAGS ($hello)")
    assert "$hello" in _flags_line(resp)
    assert re.search(r"^\* OK \[PERMANENTFLAGS \([^)]*\$hello[^)]*\\\*\)\]", resp, re.M), resp
    assert _before(resp, "* FLAGS", "* 1 FETCH") and _before(resp, "[PERMANENTFLAGS", "* 1 FETCH")
    # announced once: the next STORE of a known keyword sends no FLAGS
    assert "* FLAGS" not in a.cmd("STORE 1 -FLAGS ($hello)")
    assert "* FLAGS" not in a.cmd("STORE 1 +FLAGS ($hello)")

    # seen in another session's change: its NOOP announces before the unsolicited FETCH
    resp = b.cmd("NOOP")
    assert "$hello" in _flags_line(resp) and _before(resp, "* FLAGS", "* 1 FETCH"), resp

    # set by another session (and one never used in this folder before)
    b.cmd("STORE 1 +FLAGS.SILENT ($world)")
    resp = a.cmd("NOOP")
    assert "$world" in _flags_line(resp) and _before(resp, "* FLAGS", "* 1 FETCH"), resp

    # found on disk: a message stored with a keyword by another process (the MDA, a sieve)
    imap.maildir().folder("INBOX").append(b"Subject: two\r\n\r\nbody\r\n", [], None, ["$disk"])
    resp = a.cmd("NOOP")
    assert "$disk" in _flags_line(resp) and "* 2 EXISTS" in resp, resp
    assert "$disk" in a.cmd("FETCH 2 FLAGS")

    # APPEND into the selected mailbox with a new keyword
    resp = a.cmd("APPEND INBOX ($appended)", b"Subject: three\r\n\r\nbody\r\n")
    resp += a.cmd("FETCH 3 FLAGS")
    assert "$appended" in _flags_line(resp) and _before(resp, "* FLAGS", "* 3 FETCH"), resp
    a.close()
    b.close()


def test_store_nil_keyword_as_dovecot_announced_first(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    imap.deliver(ALICE, b"Subject: one\r\n\r\nbody\r\n")
    c = connect()
    c.cmd("SELECT INBOX")
    # Dovecot 2.3.19 (checked) and imaptest's "nil" group: an atom NIL in a flag list is the
    # keyword "NIL"; what must not happen is a FETCH carrying it before FLAGS announced it.
    resp = c.cmd("STORE 1 +FLAGS (NIL)")
    assert tagged(resp).startswith("OK") and "NIL" in _flags_line(resp).split(), resp
    assert _before(resp, "* FLAGS", "* 1 FETCH (FLAGS ("), resp
    assert tagged(c.cmd("STORE 1 +FLAGS nil")).startswith("OK")
    assert re.search(r"^\* 1 FETCH \(FLAGS \((\\Recent )?NIL\)\)", c.cmd("FETCH 1 FLAGS"), re.M)
    c.close()


# -- SEARCH on address fields (imaptest "search-addresses") ------------------------------

ADDRESS_MESSAGES = [
    b"From: user-from@domain.org\r\nTo: user-to@domain.org\r\nCc: user-cc@domain.org\r\n"
    b"Bcc: user-bcc@domain.org\r\n\r\nbody\r\n",
    b"From: RealFrom <user-from@domain.org>\r\nTo: RealTo <user-to@domain.org>\r\n"
    b"Cc: RealCc <user-cc@domain.org>\r\nBcc: RealBcc <user-bcc@domain.org>\r\n\r\nbody2\r\n",
    b"From: <user-from (comment)@ (comment) domain.org>\r\nTo: <user-to@domain.org>\r\n"
    b"Cc: <user-cc@domain.org>\r\nBcc: <user-bcc@domain.org>\r\n\r\nbody3\r\n",
    b"From: user-from@domain.org (RealFrom)\r\nTo: user-to@domain.org (RealTo)\r\n"
    b"Cc: user-cc@domain.org (RealCc)\r\nBcc: user-bcc@domain.org (RealBcc)\r\n\r\nbody4\r\n",
    b"From: user-from1@domain.org, user-from2@domain.org\r\nCc: user-cc@domain.org\r\n\r\nbody5\r\n",
    b"From: RealFrom <user-from@domain.org>\r\nTo: groupname: groupuser1@domain.org, groupuser2@domain.org;,\r\n"
    b"  groupname2: groupuser3@domain.org;\r\n\r\nbody6\r\n",
    b"From: RealFrom <user-from@domain.org>\r\nTo: groupname:;\r\n\r\nbody7\r\n",
    # an encoded-word display name and a quoted local part
    b'From: =?utf-8?q?J=C3=BCrgen_Sch=C3=B6n?= <"user.from"@Domain.ORG>\r\n\r\nbody8\r\n',
]

ADDRESS_SEARCHES = {
    "FROM user-from@domain.org": "1 2 3 4 6 7",
    "TO user-to@domain.org": "1 2 3 4",
    "CC user-cc@domain.org": "1 2 3 4 5",
    "BCC user-bcc@domain.org": "1 2 3 4",
    "FROM realfrom": "2 4 6 7",
    "BCC realbcc": "2 4",
    'HEADER TO ""': "1 2 3 4 6 7",
    "FROM ser-fro": "1 2 3 4 5 6 7",
    "TO ser-t": "1 2 3 4",
    "FROM ealfro": "2 4 6 7",
    "FROM user-from2": "5",
    "TO groupname": "6 7",
    "TO groupname2": "6",
    "TO groupuser3": "6",
    "TO groupuser4": "",
    "FROM comment": "",  # comments are not part of the address
    'CHARSET UTF-8 FROM {7+}\r\nJÜRGEN': "8",
    "FROM user.from@domain.org": "8",
}


def test_search_address_fields_in_any_form(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    for data in ADDRESS_MESSAGES:
        imap.deliver(ALICE, data)
    c = connect()
    c.cmd("SELECT INBOX")
    for key, want in ADDRESS_SEARCHES.items():
        if "{7+}" in key:
            head, lit = key.split("{7+}\r\n")
            resp = c.cmd("SEARCH " + head.rstrip(), lit.encode())
        else:
            resp = c.cmd("SEARCH " + key)
        assert tagged(resp).startswith("OK"), (key, resp)
        got = re.search(r"^\* SEARCH ?([\d ]*)\r$", resp, re.M)
        assert got and got.group(1).strip() == want, (key, resp)
    c.close()


# -- LIST-EXTENDED (RFC 5258) and LSUB (imaptest "listext", "subscribe") -----------------

def _lines(resp: str, kind: str = "LIST") -> dict[str, str]:
    """name -> the rest of each ``* LIST (attrs) "." name [extra]`` line."""
    out = {}
    for m in re.finditer(rf'^\* {kind} \(([^)]*)\) "\." (\S+)(.*)\r$', resp, re.M):
        out[m.group(2)] = f"({m.group(1)}){m.group(3)}"
    return out


def test_list_extended_subscribed_recursivematch_children(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    c = connect()
    for name in ("t.a", "t.b.a", "t.c", "t.d.e", "t.f", "t.g.g", "t.h.h", "t.h.i"):
        assert tagged(c.cmd(f"CREATE {name}")).startswith("OK")
    for name in ("t.a", "t.b.a", "t.f", "t.g.g", "t.h.h", "t.h.i"):
        c.cmd(f"SUBSCRIBE {name}")
    c.cmd("DELETE t.f")

    # RFC 5258 §3.1: RECURSIVEMATCH needs a selection its matches can have children in
    assert tagged(c.cmd('LIST (RECURSIVEMATCH) "" ""')).startswith("BAD")
    assert tagged(c.cmd('LIST (RECURSIVEMATCH REMOTE) "" ""')).startswith("BAD")

    # a subscribed name whose mailbox is gone: listed \NonExistent (RFC 3501 §6.3.6 keeps it)
    got = _lines(c.cmd('LIST (SUBSCRIBED) "" t.*'))
    assert set(got) == {"t.a", "t.b.a", "t.f", "t.g.g", "t.h.h", "t.h.i"}, got
    assert "\\NonExistent" in got["t.f"] and "\\Subscribed" in got["t.f"] and "\\Noselect" not in got["t.f"]

    # RETURN (CHILDREN SUBSCRIBED): parents without a directory still \HasChildren
    got = _lines(c.cmd('LIST "" t.% RETURN (CHILDREN SUBSCRIBED)'))
    for parent in ("t.b", "t.d", "t.g", "t.h"):
        assert "\\HasChildren" in got[parent] and "\\Subscribed" not in got[parent], got
    assert "\\Subscribed" in got["t.a"] and "\\HasChildren" not in got["t.a"]
    assert "\\Subscribed" not in got["t.c"] and "\\HasChildren" not in got["t.c"]

    # CHILDINFO only where a subscribed child is not itself listed
    got = _lines(c.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" t*g'))
    assert set(got) == {"t.g.g"}, got
    got = _lines(c.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" t*h'))
    assert got["t.h"].endswith('("CHILDINFO" ("SUBSCRIBED"))') and "\\Subscribed" not in got["t.h"], got
    assert "CHILDINFO" not in got["t.h.h"]
    got = _lines(c.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" (t.b)'))
    assert got == {"t.b": '(\\NonExistent \\HasChildren) ("CHILDINFO" ("SUBSCRIBED"))'}, got
    got = _lines(c.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" (t.b t.b.a)'))
    assert set(got) == {"t.b.a"}, got
    c.close()


def test_lsub_percent_lists_unsubscribed_parent_noselect(imap: IMAPServer, connect: Callable[[], Raw]) -> None:
    c = connect()
    for name in ("m.test", "m.test2.test", "m.test3.test3"):
        c.cmd(f"CREATE {name}")
        c.cmd(f"SUBSCRIBE {name}")
    c.cmd("CREATE m.test2")
    # RFC 3501 §6.3.9: "%" stops above a subscribed child: the parent comes \Noselect
    got = _lines(c.cmd('LSUB "" m.%'), "LSUB")
    assert got == {"m.test": "()", "m.test2": "(\\Noselect)", "m.test3": "(\\Noselect)"}, got
    got = _lines(c.cmd('LSUB "" *test'), "LSUB")
    assert set(got) == {"m.test", "m.test2.test"}, got
    got = _lines(c.cmd('LSUB "" m.*'), "LSUB")
    assert set(got) == {"m.test", "m.test2.test", "m.test3.test3"}, got
    c.cmd("UNSUBSCRIBE m.test3.test3")
    assert "m.test3" not in _lines(c.cmd('LSUB "" m.%'), "LSUB")
    c.close()
