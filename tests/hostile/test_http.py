"""Hostile HTTP clients against the real ``mailstack serve http`` process, over raw sockets.

- Autodiscover bodies with a DTD (internal entities, billion laughs, external entities,
  external DTD) in UTF-8, UTF-16 (both byte orders, with BOM), and UTF-32 are refused
  with 400, and nothing declared in them is ever expanded: the byte search for
  "<!DOCTYPE" the service used to do could not see it in UTF-16.
- The MTA-STS policy exists only at ``mta-sts.<one of our domains>`` (RFC 8461 §3.2).
- Every answer, aiohttp's own pages for requests it cannot parse included, says
  ``Server: mailstack`` and nothing about Python or aiohttp.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_listening

ROOT = Path(__file__).resolve().parents[2]
NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
AD_PATH = "/autodiscover/autodiscover.xml"


@dataclass
class Served:
    port: int
    proc: subprocess.Popen[bytes]

    def raw(self, data: bytes) -> bytes:
        """Send bytes, read until the server closes (or 10 s)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(data)
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    return out
                if not chunk:
                    return out
                out += chunk

    def request(self, method: str, path: str, host: str | None, body: bytes = b"",
                content_type: str = "text/xml") -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\n"
        if host is not None:
            head += f"Host: {host}\r\n"
        if body or method == "POST":
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        head += "Connection: close\r\n\r\n"
        return parse(self.raw(head.encode("latin-1") + body))


def parse(out: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1."), out[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hostile-http")
    port = free_port()
    config = tmp / "mailstack.toml"
    config.write_text(
        'hostname = "mx.example.test"\n'
        '[database]\nurl = "sqlite:///var/mailstack.db"\n'
        '[storage]\nmaildir_root = "mailboxes"\n'
        '[queue]\ndir = "var/queue"\n'
        '[tls]\ncert_file = "var/tls/cert.pem"\nkey_file = "var/tls/key.pem"\n'
        '[imap]\ntls_listen = ["127.0.0.1:2993"]\n'
        f'[http]\nlisten = ["127.0.0.1:{port}"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")}
    env |= {"MAILSTACK_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    for args in (["domain", "add", "example.test"], ["user", "add", "alice@example.test", "--password-stdin"]):
        subprocess.run([sys.executable, "-m", "mailstack", *args], env=env, input=b"secret\n", check=True,
                       capture_output=True, timeout=60)
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "serve", "http"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    served = Served(port, proc)
    wait_listening(port, proc)
    yield served
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err, err.decode()


def ad_text(email_xml: str, doctype: str = "", encoding: str = "utf-8") -> str:
    return (f'<?xml version="1.0" encoding="{encoding}"?>{doctype}'
            f'<Autodiscover xmlns="{NS}"><Request><EMailAddress>{email_xml}</EMailAddress>'
            '<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/'
            'responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>')


def ad_request(email_xml: str, doctype: str = "", encoding: str = "utf-8") -> bytes:
    return ad_text(email_xml, doctype, encoding).encode(encoding)


# -- Autodiscover: DTDs in every encoding ---------------------------------------------------

INTERNAL = '<!DOCTYPE Autodiscover [<!ENTITY who "alice">]>'
LAUGHS = ('<!DOCTYPE Autodiscover [<!ENTITY l0 "lol">'
          + "".join(f'<!ENTITY l{i} "{("&l%d;" % (i - 1)) * 10}">' for i in range(1, 10)) + "]>")
EXTERNAL = '<!DOCTYPE Autodiscover [<!ENTITY who SYSTEM "file:///etc/hostname">]>'
EXTERNAL_DTD = '<!DOCTYPE Autodiscover SYSTEM "http://127.0.0.1:9/evil.dtd">'
PARAMETER = '<!DOCTYPE Autodiscover [<!ENTITY % p "<!ENTITY who \'alice\'>"> %p;]>'

# UTF-16 with a BOM is what expat reads by itself; "utf-16" in Python writes the BOM.
ENCODINGS = ["utf-8", "utf-16", "utf-16-be-bom", "utf-32"]


def encode(email_xml: str, doctype: str, encoding: str) -> bytes:
    if encoding == "utf-16-be-bom":  # Python's "utf-16" writes the machine's order (LE here)
        return b"\xfe\xff" + ad_text(email_xml, doctype, "utf-16").encode("utf-16-be")
    return ad_request(email_xml, doctype, encoding)


def test_a_plain_request_still_works_in_utf8_and_utf16(served: Served) -> None:
    for enc in ("utf-8", "utf-16", "utf-16-be-bom"):
        status, headers, body = served.request("POST", AD_PATH, "autodiscover.example.test",
                                               encode("alice@example.test", "", enc))
        assert status == 200, (enc, body)
        assert b"<LoginName>alice@example.test</LoginName>" in body
        assert headers["server"] == "mailstack"


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("doctype,email", [
    (INTERNAL, "&who;@example.test"),          # would resolve to alice@example.test: 200 if expanded
    (LAUGHS, "&l9;@example.test"),             # billion laughs: 10^9 "lol"s
    (EXTERNAL, "&who;@example.test"),          # XXE
    (EXTERNAL_DTD, "alice@example.test"),      # an external DTD to fetch
    (PARAMETER, "&who;@example.test"),         # parameter entities
], ids=["internal", "laughs", "external", "external-dtd", "parameter"])
def test_a_dtd_is_refused_in_any_encoding(served: Served, encoding: str, doctype: str, email: str) -> None:
    started = time.monotonic()
    status, headers, body = served.request("POST", AD_PATH, "autodiscover.example.test",
                                           encode(email, doctype, encoding))
    assert status == 400, body[:300]
    assert headers["server"] == "mailstack"
    assert b"alice@example.test" not in body and b"lol" not in body  # nothing was expanded
    assert b"Traceback" not in body
    assert time.monotonic() - started < 10  # refused, not chewed on
    # and the service is still there for everyone else
    assert served.request("POST", AD_PATH, "autodiscover.example.test", ad_request("alice@example.test"))[0] == 200


@pytest.mark.parametrize("body", [
    '<?xml version="1.0" encoding="utf-16le"?><Autodiscover/>'.encode("utf-16-le"),  # no BOM: expat cannot
    b'<?xml version="1.0" encoding="x-no-such-charset"?><Autodiscover/>',
    b"\xff\xfe\x00",
    "<Autodiscover>\u00e9</Autodiscover>".encode("utf-32"),
])
def test_unreadable_encodings_are_400_not_500(served: Served, body: bytes) -> None:
    status, headers, out = served.request("POST", AD_PATH, "autodiscover.example.test", body)
    assert status == 400, out[:300]
    assert headers["server"] == "mailstack"


# -- MTA-STS only at mta-sts.<our domain> -----------------------------------------------------

@pytest.mark.parametrize("host", ["mta-sts.example.test", "MTA-STS.Example.Test", "mta-sts.example.test:443",
                                  "mta-sts.example.test."])
def test_mta_sts_is_served_for_our_policy_host(served: Served, host: str) -> None:
    status, headers, body = served.request("GET", "/.well-known/mta-sts.txt", host)
    assert status == 200, body
    assert body.startswith(b"version: STSv1\r\n")
    assert headers["server"] == "mailstack"


@pytest.mark.parametrize("host", ["mx.example.test", "example.test", "mta-sts.elsewhere.test",
                                  "autoconfig.example.test", "mta-sts.mta-sts.example.test", "127.0.0.1",
                                  "[::1]", "mta-sts.", "", None])
def test_mta_sts_for_any_other_host_is_404(served: Served, host: str | None) -> None:
    status, headers, body = served.request("GET", "/.well-known/mta-sts.txt", host)
    assert status == (400 if host is None else 404), (host, body)  # RFC 9112 §3.2: no Host is a 400
    assert b"STSv1" not in body
    assert headers["server"] == "mailstack"


# -- aiohttp's own error pages ------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS hello on the plain port
    b"GET /mail/config-v1.1.xml HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\xff\r\n\r\n",
    b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
    b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed_requests_do_not_name_python_or_aiohttp(served: Served, data: bytes) -> None:
    out = served.raw(data)
    status, headers, _ = parse(out)
    assert status == 400, out[:300]
    assert headers.get("server") == "mailstack", out[:300]
    assert b"python" not in out.lower() and b"aiohttp" not in out.lower(), out[:300]


@pytest.mark.parametrize("method,path,host,expected", [
    ("GET", "/nowhere", "example.test", 404),
    ("GET", AD_PATH, "autodiscover.example.test", 405),
    ("GET", "/mail/config-v1.1.xml?emailaddress=alice@example.test", "autoconfig.example.test", 200),
])
def test_ordinary_answers_say_mailstack_too(served: Served, method: str, path: str, host: str,
                                            expected: int) -> None:
    status, headers, body = served.request(method, path, host)
    assert status == expected
    assert headers["server"] == "mailstack"
    assert b"aiohttp" not in body.lower()
