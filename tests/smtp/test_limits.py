"""Session limits of the MX on a real server over loopback sockets (issue 10 #6, #8, #10b).

Junk commands, error replies (tarpit, then 421 4.7.0), the DATA deadline that a dribbled
body cannot push back, room for newcomers when every slot is taken, the per-service
connection caps, and NUL refused on every SMTP-family entry point. Short limits and
timeouts are configured so that nothing here waits long.
"""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from mailstack.smtp.server import EVICT_AFTER

from tests.smtp.conftest import MXServer
from tests.smtp.test_mx import MSG, Raw, session


def raw_from(port: int, source_ip: str) -> Raw:
    """A Raw client whose connection comes from ``source_ip`` (any 127.0.0.0/8 address)."""
    r = Raw.__new__(Raw)
    r.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source_ip, 0))
    r.buf = b""
    return r


def read_until_closed(r: Raw) -> list[bytes]:
    """Every reply line until the server closes the connection."""
    out = []
    while True:
        try:
            out.append(r.line())
        except (EOFError, OSError):
            return out


def new_messages(mx: MXServer, user: str = "alice") -> int:
    return len(mx.messages(user))


# ------------------------------------------------------------------ junk commands


def test_noop_flood_is_cut_at_junk_then_error_limit(mx_factory: object) -> None:
    mx = mx_factory(smtp={"junk_command_limit": 5, "soft_error_limit": 2, "hard_error_limit": 4,  # type: ignore[operator]
                          "error_sleep": 0.05})
    r = session(mx.port)  # EHLO is junk number 1
    r.sock.sendall(b"NOOP\r\n" * 200)
    lines = read_until_closed(r)
    # 4 more junk commands free, 4 more each count an error; the 4th error closes
    assert lines[:8] == [b"250 2.0.0 OK"] * 8
    assert lines[8].startswith(b"421 4.7.0")
    assert len(lines) == 9  # the rest of the pipelined NOOPs is never answered
    r.close()


@pytest.mark.parametrize("junk", [b"RSET", b"VRFY alice@example.test", b"HELO x.example.org", b"EHLO x.example.org",
                                  b"HELP"])
def test_every_junk_command_counts(mx_factory: object, junk: bytes) -> None:
    mx = mx_factory(smtp={"junk_command_limit": 3, "soft_error_limit": 0, "hard_error_limit": 2})  # type: ignore[operator]
    r = Raw(mx.port)
    assert r.reply()[0] == 220
    r.sock.sendall((junk + b"\r\n") * 50)
    lines = read_until_closed(r)
    assert lines[-1].startswith(b"421 4.7.0")
    assert len(lines) < 50


def test_delivering_mail_resets_the_counts(mx_factory: object) -> None:
    mx = mx_factory(smtp={"junk_command_limit": 3, "soft_error_limit": 0, "hard_error_limit": 2})  # type: ignore[operator]
    c = mx.client()
    c.ehlo()  # junk 1
    for _ in range(2):
        assert c.noop()[0] == 250
    c.sendmail("s@example.org", ["alice@example.test"], MSG)
    for _ in range(3):  # the counts started again
        assert c.noop()[0] == 250
    assert c.noop()[0] == 250  # junk 4: error 1
    assert c.noop()[0] == 250  # junk 5: error 2 = the hard limit: 421 follows at once
    code, text = c.noop()
    assert (code, text[:5]) == (421, b"4.7.0")
    c.close()
    assert new_messages(mx) == 1


# ------------------------------------------------------------------ errors: address harvesting


def test_unknown_recipients_are_tarpitted_then_421(mx_factory: object) -> None:
    """10,000 RCPT TO for unknown users: slowed from the soft limit, cut at the hard one,
    and meanwhile another session is served without waiting."""
    mx = mx_factory(smtp={"error_sleep": 0.3})  # type: ignore[operator]  # soft 10, hard 20 (defaults)
    r = session(mx.port)
    assert r.cmd(b"MAIL FROM:<harvester@example.org>\r\n")[0] == 250
    t0 = time.monotonic()
    r.sock.sendall(b"".join(b"RCPT TO:<nobody%d@example.test>\r\n" % i for i in range(10_000)))
    first = [r.line() for _ in range(9)]
    assert all(ln.startswith(b"550 5.1.1") for ln in first)
    # while this session is in the tarpit, another client is served at once
    t1 = time.monotonic()
    with mx.client() as c:
        c.sendmail("s@example.org", ["alice@example.test"], MSG)
    assert time.monotonic() - t1 < 5
    rest = read_until_closed(r)
    elapsed = time.monotonic() - t0
    assert [ln[:9] for ln in rest[:-1]] == [b"550 5.1.1"] * 11
    assert rest[-1].startswith(b"421 4.7.0")
    assert elapsed >= 10 * 0.3 * 0.9  # from the 10th error on, each reply waited error_sleep
    assert new_messages(mx) == 1
    r.close()


def test_error_limit_counts_syntax_errors_too(mx_factory: object) -> None:
    mx = mx_factory(smtp={"soft_error_limit": 0, "hard_error_limit": 3})  # type: ignore[operator]
    r = session(mx.port)
    r.sock.sendall(b"MAIL FROM:bad\r\nRCPT TO:<a@example.test>\r\nDATA\r\nMAIL FROM:<>\r\n")
    lines = read_until_closed(r)
    assert [ln[:1] for ln in lines[:3]] == [b"5", b"5", b"5"]
    assert lines[3].startswith(b"421 4.7.0") and len(lines) == 4


# ------------------------------------------------------------------ time limits


def test_data_dribbled_line_by_line_times_out(mx_factory: object) -> None:
    """Each line arrives well within the timeout, but the body as a whole is far below
    min_data_rate: the DATA deadline ends it (421 4.4.2), nothing is delivered."""
    mx = mx_factory(smtp={"command_timeout": 2, "min_data_rate": 500})  # type: ignore[operator]
    r = session(mx.port)
    assert r.cmd(b"MAIL FROM:<s@example.org>\r\n")[0] == 250
    assert r.cmd(b"RCPT TO:<alice@example.test>\r\n")[0] == 250
    assert r.cmd(b"DATA\r\n")[0] == 354
    t0 = time.monotonic()
    closed = False
    while time.monotonic() - t0 < 15:
        try:
            r.sock.sendall(b"x\r\n")
        except OSError:
            closed = True
            break
        r.sock.settimeout(0.2)
        try:
            data = r.sock.recv(4096)
        except socket.timeout:
            continue
        r.buf += data
        closed = True
        break
    assert closed, "a body dribbled line by line held the session for 15 s"
    r.sock.settimeout(5)
    assert read_until_closed(r)[0].startswith(b"421 4.4.2")
    assert new_messages(mx) == 0


def test_fast_data_is_not_cut_by_the_deadline(mx_factory: object) -> None:
    mx = mx_factory(smtp={"command_timeout": 1, "min_data_rate": 500, "max_message_size": 2_000_000})  # type: ignore[operator]
    with mx.client() as c:
        body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 1500  # 1.5 MB, sent in ~1.5 s+
        c.ehlo()
        assert c.mail("s@example.org")[0] == 250
        assert c.rcpt("alice@example.test")[0] == 250
        c.putcmd("DATA")
        assert c.getreply()[0] == 354
        for i in range(0, len(body), 100_000):
            c.send(body[i:i + 100_000])
            time.sleep(0.1)
        c.send(b".\r\n")
        assert c.getreply()[0] == 250
    assert new_messages(mx) == 1


# ------------------------------------------------------------------ room for newcomers


def test_full_server_drops_the_idlest_session_for_a_newcomer(mx_factory: object) -> None:
    mx = mx_factory(smtp={"max_connections": 3, "max_connections_per_ip": 2})  # type: ignore[operator]
    idle = raw_from(mx.port, "127.0.0.2")
    assert idle.reply()[0] == 220
    time.sleep(0.05)
    noop = raw_from(mx.port, "127.0.0.3")
    assert noop.reply()[0] == 220
    busy = raw_from(mx.port, "127.0.0.4")
    assert busy.reply()[0] == 220
    assert busy.cmd(b"EHLO a.example.org\r\n")[0] == 250
    assert busy.cmd(b"MAIL FROM:<s@example.org>\r\n")[0] == 250  # inside a transaction
    assert noop.cmd(b"NOOP\r\n")[0] == 250  # junk is no progress
    time.sleep(EVICT_AFTER + 0.2)  # nobody has made progress for EVICT_AFTER
    new = raw_from(mx.port, "127.0.0.5")
    code, lines = new.reply()
    assert code == 220, lines  # got in
    # the session with the oldest progress and no transaction made room
    assert read_until_closed(idle)[0].startswith(b"421 4.7.0")
    assert noop.cmd(b"NOOP\r\n")[0] == 250
    assert busy.cmd(b"RCPT TO:<alice@example.test>\r\n")[0] == 250
    assert busy.cmd(b"DATA\r\n")[0] == 354
    assert busy.cmd(MSG + b".\r\n")[0] == 250
    assert new.cmd(b"EHLO b.example.org\r\n")[0] == 250
    for r in (noop, busy, new):
        r.close()
    assert new_messages(mx) == 1


def test_sessions_at_work_are_not_evicted(mx_factory: object) -> None:
    """Sessions that made progress within EVICT_AFTER stay: the newcomer gets 421 instead."""
    mx = mx_factory(smtp={"max_connections": 2, "max_connections_per_ip": 2})  # type: ignore[operator]
    held = [raw_from(mx.port, ip) for ip in ("127.0.0.2", "127.0.0.3")]
    for r in held:
        assert r.reply()[0] == 220
        assert r.cmd(b"EHLO a.example.org\r\n")[0] == 250
    new = raw_from(mx.port, "127.0.0.4")
    code, lines = new.reply()
    assert code == 421 and lines[0].startswith(b"421 4.7.0"), lines
    for r in held:
        assert r.cmd(b"NOOP\r\n")[0] == 250  # still there
        r.close()
    new.close()


def test_an_evicted_address_cannot_evict_in_turn(mx_factory: object) -> None:
    """A client closed to make room that reconnects at once finds no room (no chain of
    evictions that could end on a real sender); another address still gets in."""
    mx = mx_factory(smtp={"max_connections": 2, "max_connections_per_ip": 2})  # type: ignore[operator]
    a = raw_from(mx.port, "127.0.0.2")
    assert a.reply()[0] == 220
    time.sleep(0.05)
    b = raw_from(mx.port, "127.0.0.3")
    assert b.reply()[0] == 220
    time.sleep(EVICT_AFTER + 0.2)
    c = raw_from(mx.port, "127.0.0.4")
    assert c.reply()[0] == 220
    assert read_until_closed(a)[0].startswith(b"421 4.7.0")  # the idlest made room
    again = raw_from(mx.port, "127.0.0.2")  # a, back at once
    code, lines = again.reply()
    assert code == 421, lines
    assert b.cmd(b"NOOP\r\n")[0] == 250  # b was not evicted for a
    for r in (b, c, again):
        r.close()


def test_a_delivery_that_just_ended_is_progress(mx_factory: object) -> None:
    """A session whose DATA began before another session connected, but ended after it,
    made progress more recently: the other one makes room (progress counts when a
    command ends, not only when it starts; the NOOP-trickler flood caught a sender
    dropped right after its 250 when its delivery had been slow)."""
    mx = mx_factory(smtp={"max_connections": 2, "max_connections_per_ip": 2})  # type: ignore[operator]
    sender = raw_from(mx.port, "127.0.0.2")
    assert sender.reply()[0] == 220
    assert sender.cmd(b"EHLO a.example.org\r\nMAIL FROM:<s@example.org>\r\n")[0] == 250
    assert sender.reply()[0] == 250
    assert sender.cmd(b"RCPT TO:<alice@example.test>\r\n")[0] == 250
    assert sender.cmd(b"DATA\r\n")[0] == 354
    sender.sock.sendall(MSG)  # a body that takes its time
    time.sleep(0.3)
    idle = raw_from(mx.port, "127.0.0.3")  # connects while the DATA goes on
    assert idle.reply()[0] == 220
    time.sleep(0.3)
    assert sender.cmd(b".\r\n")[0] == 250  # delivered: the latest progress of the two
    time.sleep(EVICT_AFTER + 0.1)  # both idle long enough to be evictable
    new = raw_from(mx.port, "127.0.0.4")
    assert new.reply()[0] == 220
    assert read_until_closed(idle)[0].startswith(b"421 4.7.0")
    assert sender.cmd(b"QUIT\r\n")[0] == 221
    new.close()
    assert new_messages(mx) == 1


def test_per_ip_cap_is_not_bypassed_by_eviction(mx_factory: object) -> None:
    mx = mx_factory(smtp={"max_connections": 3, "max_connections_per_ip": 2})  # type: ignore[operator]
    held = [raw_from(mx.port, ip) for ip in ("127.0.0.2", "127.0.0.2", "127.0.0.3")]
    for r in held:
        assert r.reply()[0] == 220
    third = raw_from(mx.port, "127.0.0.2")
    code, lines = third.reply()
    assert code == 421 and b"from your address" in lines[0]
    for r in held:
        assert r.cmd(b"NOOP\r\n")[0] == 250  # nobody was dropped for it
        r.close()
    third.close()


def test_mx_default_per_ip_cap_is_10(mx_server: MXServer) -> None:
    conns = [raw_from(mx_server.port, "127.0.0.6") for _ in range(10)]
    for r in conns:
        assert r.reply()[0] == 220
    extra = raw_from(mx_server.port, "127.0.0.6")
    code, lines = extra.reply()
    assert code == 421 and lines[0].startswith(b"421 4.7.0")
    other = raw_from(mx_server.port, "127.0.0.7")
    assert other.reply()[0] == 220
    for r in [*conns, extra, other]:
        r.close()


def test_lmtp_has_its_own_connection_caps(mx_factory: object) -> None:
    mx = mx_factory(lmtp={"max_connections_per_ip": 2})  # type: ignore[operator]
    a, b = Raw(mx.lmtp_port), Raw(mx.lmtp_port)
    assert a.reply()[0] == 220 and b.reply()[0] == 220
    c = Raw(mx.lmtp_port)
    code, lines = c.reply()
    assert code == 421 and lines[0].startswith(b"421 4.7.0")
    # no error limits on LMTP: a trusted MTA may name many unknown users
    assert a.cmd(b"LHLO mta.example.org\r\n")[0] == 250
    assert a.cmd(b"MAIL FROM:<s@example.org>\r\n")[0] == 250
    a.sock.sendall(b"".join(b"RCPT TO:<nobody%d@example.test>\r\n" % i for i in range(40)))
    assert [a.reply()[0] for _ in range(40)] == [550] * 40
    assert a.cmd(b"RCPT TO:<alice@example.test>\r\n")[0] == 250
    for r in (a, b, c):
        r.close()


# ------------------------------------------------------------------ NUL


NUL_BODIES = [
    b"Subject: nul\r\n\r\nbefore\x00after\r\n",
    b"Subject: nul\x00\r\n\r\nbody\r\n",
    b"Subject: nul\r\n\r\n\x00\r\n",
]


@pytest.mark.parametrize("body", NUL_BODIES)
def test_mx_refuses_nul(mx_server: MXServer, body: bytes) -> None:
    with mx_server.client() as c:
        with pytest.raises(smtplib.SMTPDataError) as e:
            c.sendmail("s@example.org", ["alice@example.test"], body)
        assert e.value.smtp_code == 554 and e.value.smtp_error.startswith(b"5.6.0")
        # the session goes on, and a clean message is accepted
        c.sendmail("s@example.org", ["alice@example.test"], MSG)
    assert [b"\x00" in m for m in mx_server.messages("alice")] == [False]


def test_lmtp_refuses_nul_for_every_recipient(mx_server: MXServer) -> None:
    with mx_server.lmtp_client() as c:
        c.ehlo_or_helo_if_needed()
        assert c.mail("s@example.org")[0] == 250
        assert c.rcpt("alice@example.test")[0] == 250
        assert c.rcpt("bob@example.test")[0] == 250
        c.putcmd("DATA")
        assert c.getreply()[0] == 354
        c.send(NUL_BODIES[0] + b".\r\n")
        code, text = c.getreply()
        assert code == 554 and text.startswith(b"5.6.0")
    assert mx_server.messages("alice") == [] and mx_server.messages("bob") == []


# ------------------------------------------------------------------ the counter and its config


def test_error_counter_follows_postfix() -> None:
    from mailstack.smtp.limits import ErrorCounter, SessionLimits

    c = ErrorCounter(SessionLimits(junk_command_limit=2, soft_error_limit=2, hard_error_limit=3, error_sleep=0.5))
    for verb in ("NOOP", "RSET"):
        c.command(verb)
    c.command("MAIL")
    assert (c.errors, c.delay, c.exhausted) == (0, 0.0, False)
    c.command("VRFY")  # junk 3 > 2: an error
    c.reply(250)
    c.reply(354)
    c.reply(421)  # the closing 421 is not counted
    assert c.errors == 1 and c.delay == 0.0
    c.reply(550)
    assert c.errors == 2 and c.delay == 0.5 and not c.exhausted
    c.reply(451)
    assert c.exhausted
    c.delivered()
    assert (c.errors, c.junk, c.delay, c.exhausted) == (0, 0, 0.0, False)
    off = ErrorCounter(SessionLimits.off())
    for _ in range(1000):
        off.command("NOOP")
        off.reply(550)
    assert off.delay == 0.0 and not off.exhausted


@pytest.mark.parametrize("section, values, fragment", [
    ("smtp", {"soft_error_limit": 30, "hard_error_limit": 20}, "[smtp] soft_error_limit"),
    ("smtp", {"max_connections_per_ip": 0}, "[smtp] max_connections_per_ip"),
    ("submission", {"max_connections": 0}, "[submission] max_connections"),
    ("lmtp", {"max_connections_per_ip": "x"}, "[lmtp] max_connections_per_ip"),
    ("smtp", {"error_sleep": -1}, "[smtp] error_sleep"),
    ("smtp", {"junk_limit": 5}, "unknown key 'junk_limit'"),
])
def test_limit_keys_are_validated(tmp_path: object, section: str, values: dict[str, object], fragment: str) -> None:
    from mailstack.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as e:
        config_from_dict({section: values}, None)
    assert fragment in str(e.value)


def test_limit_defaults() -> None:
    from mailstack.config import Config

    cfg = Config()
    assert (cfg.smtp.max_connections, cfg.smtp.max_connections_per_ip) == (200, 10)
    assert (cfg.smtp.junk_command_limit, cfg.smtp.soft_error_limit, cfg.smtp.hard_error_limit,
            cfg.smtp.error_sleep, cfg.smtp.min_data_rate) == (100, 10, 20, 1.0, 500)
    assert (cfg.submission.max_connections, cfg.submission.max_connections_per_ip) == (200, 20)
    assert (cfg.lmtp.max_connections, cfg.lmtp.max_connections_per_ip) == (200, 50)
