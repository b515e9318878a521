"""The http service on loopback: autoconfig, Autodiscover, MTA-STS, and its refusals."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mailstack.http import documents as docs
from tests.http.conftest import HTTPServer

AUTOCONFIG_PATHS = ["/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"]
AUTODISCOVER_PATHS = ["/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"]
FIELDS = ("hostname", "port", "socketType", "authentication", "username")


def port_of(server: HTTPServer, service: str, tls: bool) -> int:
    section = getattr(server.config, service)
    return int((section.tls_listen if tls else section.listen)[0].port)


def expected_servers(server: HTTPServer) -> list[tuple[str, str, str, str, str, str]]:
    out = []
    for kind, service in (("imap", "imap"), ("pop3", "pop3"), ("smtp", "submission")):
        for tls, sock in ((True, "SSL"), (False, "STARTTLS")):
            out.append((kind, "mx.example.test", str(port_of(server, service, tls)), sock, "password-cleartext",
                        "%EMAILADDRESS%"))
    return out


# -- Thunderbird autoconfig --------------------------------------------------------------


@pytest.mark.parametrize("path", AUTOCONFIG_PATHS)
def test_autoconfig(http_server: HTTPServer, path: str) -> None:
    status, headers, body = http_server.get(f"{path}?emailaddress=alice%40example.test")
    assert status == 200
    assert headers["content-type"].startswith("text/xml")
    root = ET.fromstring(body)
    assert (root.tag, root.get("version")) == ("clientConfig", "1.1")
    providers = root.findall("emailProvider")
    assert len(providers) == 1
    p = providers[0]
    assert p.get("id") == "mx.example.test"
    assert [d.text for d in p.findall("domain")] == ["example.test"]
    assert p.findtext("displayName") and p.findtext("displayShortName")
    servers = []
    for el in p.findall("incomingServer") + p.findall("outgoingServer"):
        # every field Thunderbird reads, each exactly once and non-empty
        for f in FIELDS:
            assert len(el.findall(f)) == 1 and (el.findtext(f) or "").strip(), (el.get("type"), f)
        assert int(el.findtext("port") or "0") > 0
        servers.append((el.get("type") or "", *((el.findtext(f) or "") for f in FIELDS)))
    assert servers == expected_servers(http_server)
    assert [el.get("type") for el in p.findall("incomingServer")] == ["imap", "imap", "pop3", "pop3"]
    assert [el.get("type") for el in p.findall("outgoingServer")] == ["smtp", "smtp"]


def test_autoconfig_without_address_uses_host(http_server: HTTPServer) -> None:
    status, _, body = http_server.get("/mail/config-v1.1.xml", host="autoconfig.example.test")
    assert status == 200 and b"<domain>example.test</domain>" in body
    assert http_server.get("/mail/config-v1.1.xml", host="autoconfig.other.test")[0] == 404
    assert http_server.get("/mail/config-v1.1.xml", host="[::1]:80")[0] == 404


def test_autoconfig_unknown_domain_is_404(http_server: HTTPServer) -> None:
    assert http_server.get("/mail/config-v1.1.xml?emailaddress=bob%40elsewhere.test")[0] == 404


def test_autoconfig_does_not_tell_whether_a_user_exists(http_server: HTTPServer) -> None:
    a = http_server.get("/mail/config-v1.1.xml?emailaddress=alice%40example.test")
    b = http_server.get("/mail/config-v1.1.xml?emailaddress=nobody%40example.test")
    assert a[0] == b[0] == 200 and a[2] == b[2]


@pytest.mark.parametrize("address", ["not-an-address", "a@", "@example.test", "a%20b@example.test%0d%0aX:%20y"])
def test_autoconfig_bad_address_is_400(http_server: HTTPServer, address: str) -> None:
    status, _, body = http_server.get(f"/mail/config-v1.1.xml?emailaddress={address}")
    assert status == 400 and b"Traceback" not in body


def test_autoconfig_over_tls(http_server: HTTPServer) -> None:
    status, _, body = http_server.get("/mail/config-v1.1.xml?emailaddress=alice@example.test", tls=True)
    assert status == 200 and b"clientConfig" in body


# -- Outlook Autodiscover ------------------------------------------------------------------


def ad_request(email: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Autodiscover xmlns="{docs.REQUEST_NS}">\n'
        f"  <Request>\n    <EMailAddress>{email}</EMailAddress>\n"
        f"    <AcceptableResponseSchema>{docs.OUTLOOK_NS}</AcceptableResponseSchema>\n"
        "  </Request>\n</Autodiscover>\n"
    ).encode()


@pytest.mark.parametrize("path", AUTODISCOVER_PATHS)
def test_autodiscover(http_server: HTTPServer, path: str) -> None:
    status, headers, body = http_server.post(path, ad_request("Alice@Example.Test"))
    assert status == 200, body
    assert headers["content-type"].startswith("text/xml")
    ns = {"r": docs.RESPONSE_NS, "o": docs.OUTLOOK_NS}
    root = ET.fromstring(body)
    assert root.tag == f"{{{docs.RESPONSE_NS}}}Autodiscover"
    account = root.find("o:Response/o:Account", ns)
    assert account is not None
    assert account.findtext("o:AccountType", namespaces=ns) == "email"
    assert account.findtext("o:Action", namespaces=ns) == "settings"
    protos = {}
    for p in account.findall("o:Protocol", ns):
        def get(tag: str, p: ET.Element = p) -> str | None:
            return p.findtext(f"o:{tag}", namespaces=ns)

        protos[get("Type")] = (get("Server"), get("Port"), get("LoginName"), get("SSL"), get("Encryption"),
                               get("AuthRequired"), get("SPA"), get("DomainRequired"))
    assert set(protos) == {"IMAP", "POP3", "SMTP"}
    for kind, service in (("IMAP", "imap"), ("POP3", "pop3"), ("SMTP", "submission")):
        assert protos[kind] == ("mx.example.test", str(port_of(http_server, service, True)), "Alice@example.test",
                                "on", "SSL", "on", "off", "off")


def test_autodiscover_unknown_domain(http_server: HTTPServer) -> None:
    assert http_server.post(AUTODISCOVER_PATHS[0], ad_request("x@elsewhere.test"))[0] == 404


@pytest.mark.parametrize("body", [
    b"",
    b"not xml at all",
    b"<Autodiscover><Request></Request></Autodiscover>",  # no EMailAddress
    b"<Other><EMailAddress>alice@example.test</EMailAddress></Other>",
    b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "alice@example.test">]>'
    b"<Autodiscover><Request><EMailAddress>&e;</EMailAddress></Request></Autodiscover>",
    b"<Autodiscover><Request><EMailAddress>nonsense</EMailAddress></Request></Autodiscover>",
])
def test_autodiscover_malformed_is_400(http_server: HTTPServer, body: bytes) -> None:
    status, _, out = http_server.post(AUTODISCOVER_PATHS[1], body)
    assert status == 400 and b"Traceback" not in out


def test_autodiscover_oversized_is_400(http_server: HTTPServer) -> None:
    body = ad_request("alice@example.test").replace(b"<Request>", b"<Request>" + b" " * 5000)
    assert http_server.post(AUTODISCOVER_PATHS[0], body)[0] == 400
    chunked = http_server.raw(
        b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"400\r\n" + b" " * 0x400 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 400")


def test_autodiscover_get_is_refused(http_server: HTTPServer) -> None:
    assert http_server.get(AUTODISCOVER_PATHS[0])[0] == 405


# -- MTA-STS ------------------------------------------------------------------------------


def test_mta_sts_policy(http_server: HTTPServer) -> None:
    status, headers, body = http_server.get("/.well-known/mta-sts.txt", host="mta-sts.example.test", tls=True)
    assert status == 200
    assert headers["server"] == "mailstack"
    assert headers["content-type"].startswith("text/plain")
    assert body == (b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmx: *.backup.example.test\r\n"
                    b"max_age: 604800\r\n")


def test_mta_sts_defaults() -> None:
    from mailstack.config import config_from_dict

    cfg = config_from_dict({"hostname": "mail.example.org"}, None)
    assert cfg.http.mta_sts_mode == "testing" and cfg.http.mta_sts_mx == ()
    assert docs.mta_sts_policy(cfg.http.mta_sts_mode, [cfg.hostname], cfg.http.mta_sts_max_age) == (
        b"version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\nmax_age: 604800\r\n")


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/index.html", "/mail/config-v1.1.xml/extra", "/.well-known/other",
                                  "/../etc/passwd", "/AUTODISCOVER/AUTODISCOVER.XML"])
def test_unknown_paths_404(http_server: HTTPServer, path: str) -> None:
    method = "POST" if "AUTODISCOVER" in path else "GET"
    assert http_server.request(method, path)[0] == 404


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /mail/config-v1.1.xml HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
    b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(300)) + b"\r\n",
])
def test_malformed_requests_400_without_traceback(http_server: HTTPServer, data: bytes) -> None:
    out = http_server.raw(data)
    assert out.startswith(b"HTTP/1.") and out.split(b" ", 2)[1] == b"400", out[:200]
    assert b"Traceback" not in out and b".py" not in out


def test_internal_error_is_a_bare_500() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from mailstack.config import config_from_dict
    from mailstack.http.server import make_app

    def boom(domain: str) -> bool:
        raise RuntimeError("secret internals /srv/x.py")

    async def go() -> tuple[int, str]:
        app = make_app(config_from_dict({"hostname": "mx.example.test"}, None), boom)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/mail/config-v1.1.xml?emailaddress=a@example.test")
            return resp.status, await resp.text()

    status, text = asyncio.run(go())
    assert status == 500 and "secret" not in text and "Traceback" not in text


def test_directory_down_is_503() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from mailstack.config import config_from_dict
    from mailstack.directory.errors import DirectoryUnavailable
    from mailstack.http.server import make_app

    def down(domain: str) -> bool:
        raise DirectoryUnavailable("database unreachable")

    async def go() -> int:
        app = make_app(config_from_dict({"hostname": "mx.example.test"}, None), down)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/mail/config-v1.1.xml?emailaddress=a@example.test")
            return resp.status

    assert asyncio.run(go()) == 503


def test_registered_as_a_service() -> None:
    from mailstack.serve import SERVICES, load_start
    from mailstack.http import server

    assert load_start("http", SERVICES["http"]) is server.start


def test_mailstack_serve_http(tmp_path: Path) -> None:
    """``mailstack serve http`` as a process: answers, then stops cleanly on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.helpers import free_port

    port = free_port()
    (tmp_path / "mailstack.toml").write_text(
        'hostname = "mx.example.test"\n'
        '[database]\nurl = "sqlite:///var/mailstack.db"\n'
        '[storage]\nmaildir_root = "mailboxes"\n'
        '[queue]\ndir = "var/queue"\n'
        '[tls]\ncert_file = "var/tls/cert.pem"\nkey_file = "var/tls/key.pem"\n'
        '[imap]\ntls_listen = ["127.0.0.1:2993"]\n'
        f'[http]\nlisten = ["127.0.0.1:{port}"]\n'
    )
    env = {**os.environ, "MAILSTACK_CONFIG": str(tmp_path / "mailstack.toml")}
    subprocess.run([sys.executable, "-m", "mailstack", "domain", "add", "example.test"], env=env, check=True,
                   capture_output=True, timeout=60)
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "serve", "http"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        body = b""
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{port}/mail/config-v1.1.xml?emailaddress=a@example.test"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    body = resp.read()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        assert proc.stderr is not None
        assert b"<port>2993</port>" in body, proc.stderr.read().decode() if proc.poll() is not None else body
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err


def test_connections_per_ip_are_capped(http_limited: HTTPServer) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", http_limited.port), timeout=10) as first:
        first.sendall(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\n\r\n")
        assert first.recv(100).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", http_limited.port), timeout=10) as second:
            second.sendall(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.example.test\r\n\r\n")
            try:
                assert second.recv(100) == b""  # closed at once
            except ConnectionResetError:
                pass
    # the first one ended: a new connection is admitted
    assert http_limited.get("/.well-known/mta-sts.txt", host="mta-sts.example.test")[0] == 200


def test_connection_age_is_bounded(http_server: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    from mailstack.http import server as http_mod

    assert http_mod.MAX_CONNECTION_AGE <= 300
    # a client that dribbles its request is cut off once the age is reached (shortened here)
    monkeypatch.setattr(http_mod, "MAX_CONNECTION_AGE", 0.5)
    with socket.create_connection(("127.0.0.1", http_server.port), timeout=10) as s:
        s.sendall(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
        start = time.monotonic()
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - start
    assert data == b""  # aborted, no answer to half a request
    assert 0.3 < elapsed < 10
