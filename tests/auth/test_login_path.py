"""The one login path over real sockets: IMAP, POP3 and submission share one throttle and
one bounded hash pool, and a login flood never holds up the MX (issue 10 items 4, 5, 10a;
issue 17 item 2)."""

from __future__ import annotations

import asyncio
import base64
import logging
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from mailstack.directory import Directory

from tests.helpers import free_port

from .conftest import (ALICE, BOB, LOGIN, PASSWORD, imap_login, login_stack, outcome, pop3_login, serve_config,
                       serve_process, smtp_auth, smtp_reply)


def auth_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mailstack.maillog"
            and r.getMessage().startswith("event=auth ")]


# -- item 4: logins have their own bounded pool; the MX never waits behind it -----------


def test_login_flood_does_not_starve_the_mx(tmp_path: Path) -> None:
    """100 wrong logins at once from 100 addresses (each ~0.2 s of argon2) over IMAP, POP3
    and submission: an MX RCPT for a local user is still answered at once, and every
    login gets an answer (failed, or "try later" when the hash queue is full)."""
    with login_stack(tmp_path, slow=True, hash_workers=2, hash_queue=8) as st:

        async def mx_rcpt(started: asyncio.Event) -> tuple[bytes, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", st.port("smtp"))
            try:
                await smtp_reply(reader)
                writer.write(b"EHLO peer.test\r\nMAIL FROM:<someone@remote.test>\r\n")
                await smtp_reply(reader)
                await smtp_reply(reader)
                await started.wait()
                await asyncio.sleep(0.5)  # the logins are queued or hashing by now
                t0 = time.monotonic()
                writer.write(f"RCPT TO:<{ALICE}>\r\n".encode())
                reply = await asyncio.wait_for(smtp_reply(reader), 60)
                return reply, time.monotonic() - t0
            finally:
                writer.close()

        async def main() -> tuple[list[tuple[str, bytes]], tuple[bytes, float]]:
            started = asyncio.Event()
            mx = asyncio.create_task(mx_rcpt(started))
            services = ("imap", "pop3", "submission")

            async def one(i: int) -> tuple[str, bytes]:
                svc = services[i % 3]
                # one /24 each and one unknown account each: the throttle does not cut in,
                # every attempt needs a hash (unknown users cost the same, by design)
                reply = await asyncio.wait_for(
                    LOGIN[svc](st.port(svc), f"127.0.{i + 10}.1", f"nobody{i}@example.test", "wrong"), 60)
                return svc, reply

            logins = [asyncio.create_task(one(i)) for i in range(100)]
            await asyncio.sleep(0.05)
            started.set()
            results = await asyncio.gather(*logins)
            return list(results), await mx

        results, (rcpt, seconds) = asyncio.run(main())
        assert rcpt.startswith(b"250"), rcpt
        assert seconds < 5, f"RCPT waited {seconds:.1f}s behind the login flood"
        kinds = Counter(outcome(svc, reply) for svc, reply in results)
        assert set(kinds) <= {"failed", "busy"}, kinds
        assert kinds["busy"] >= 1 and kinds["failed"] >= 1, kinds
        # the queue cap: far fewer than 100 hashes were started
        assert st.auth.hash_calls == kinds["failed"] < 100


def test_parallel_logins_from_one_client_are_capped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """More than max_inflight_per_client attempts of one address at once: the extra ones get
    "try later" at once (no hash); right passwords: the others log in."""
    caplog.set_level(logging.INFO, logger="mailstack.maillog")
    with login_stack(tmp_path, slow=True, max_inflight_per_client=3) as st:

        async def main() -> list[bytes]:
            go = asyncio.Event()
            tasks = [asyncio.create_task(imap_login(st.port("imap"), "127.0.0.60", ALICE, PASSWORD, go=go))
                     for _ in range(10)]
            await asyncio.sleep(0.3)  # every client has its greeting
            go.set()
            return list(await asyncio.wait_for(asyncio.gather(*tasks), 60))

        kinds = Counter(outcome("imap", r) for r in asyncio.run(main()))
        assert set(kinds) <= {"ok", "busy"} and kinds["busy"] >= 1 and kinds["ok"] >= 1, kinds
        assert st.auth.hash_calls == kinds["ok"]
        assert sum("status=auth_busy" in line and "reason=client_busy" in line
                   for line in auth_lines(caplog)) == kinds["busy"]


# -- item 5: one throttle, keyed right, that blocks instead of sleeping -----------------


def test_throttled_client_is_refused_at_once_without_hashing(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailstack.maillog")
    with login_stack(tmp_path, max_failures=3) as st:
        src = "127.0.3.7"
        for _ in range(3):
            assert outcome("imap", asyncio.run(imap_login(st.port("imap"), src, BOB, "wrong"))) == "failed"
        checks = st.auth.hash_calls

        async def main() -> list[tuple[str, bytes]]:
            services = ("imap", "pop3", "submission")

            async def one(i: int) -> tuple[str, bytes]:
                svc = services[i % 3]  # another account, the right password, same network
                return svc, await LOGIN[svc](st.port(svc), f"127.0.3.{i + 10}", ALICE, PASSWORD)

            return list(await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(50))), 30))

        t0 = time.monotonic()
        results = asyncio.run(main())
        assert time.monotonic() - t0 < 15  # did not hang (the old throttle slept ~17 s for this)
        kinds = Counter(outcome(svc, reply) for svc, reply in results)
        assert set(kinds) <= {"failed", "busy"} and kinds["failed"] >= 1, kinds
        assert st.auth.hash_calls == checks  # nothing was hashed while blocked
        blocked = [line for line in auth_lines(caplog) if "reason=blocked" in line]
        assert len(blocked) == kinds["failed"]
        assert all("status=auth_failed" in line and PASSWORD not in line for line in blocked)
    assert any("net:127.0.3.0/24 blocked" in r.getMessage() for r in caplog.records if r.name == "mailstack.auth")


def test_every_spelling_of_an_address_shares_its_counter(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Quotes, case of the local part and of the domain: all count against alice, whichever
    service and network they come from; the block then holds on every service."""
    caplog.set_level(logging.INFO, logger="mailstack.maillog")
    spellings = [("imap", '"alice"@example.test'), ("pop3", "ALICE@Example.Test"),
                 ("submission", "alice@EXAMPLE.TEST"), ("imap", '"Alice"@Example.test'),
                 ("submission", '"ALICE"@example.TEST')]
    with login_stack(tmp_path, max_failures=5) as st:
        for i, (svc, name) in enumerate(spellings):
            reply = asyncio.run(LOGIN[svc](st.port(svc), f"127.0.{20 + i}.1", name, "wrong"))
            assert outcome(svc, reply) == "failed", reply
        checks = st.auth.hash_calls
        for svc in ("imap", "pop3", "submission"):  # a fresh network, the right password
            reply = asyncio.run(LOGIN[svc](st.port(svc), "127.0.99.1", ALICE, PASSWORD))
            assert outcome(svc, reply) == "failed", (svc, reply)
        assert st.auth.hash_calls == checks
        for svc in ("imap", "pop3", "submission"):  # the network itself is fine
            assert outcome(svc, asyncio.run(LOGIN[svc](st.port(svc), "127.0.99.1", BOB, PASSWORD))) == "ok"
    lines = auth_lines(caplog)
    first = lines[0]
    assert first.startswith("event=auth id=- service=imap client=127.0.20.1 from=- to=- size=- status=auth_failed ")
    assert "reason=password" in first and "wrong" not in " ".join(lines)
    assert sum("status=ok" in line for line in lines) == 3


def test_a_failure_on_imap_counts_on_pop3_and_submission(tmp_path: Path) -> None:
    with login_stack(tmp_path, max_failures=2) as st:
        for src in ("127.0.40.1", "127.0.41.1"):
            assert outcome("imap", asyncio.run(imap_login(st.port("imap"), src, BOB, "nope"))) == "failed"
        checks = st.auth.hash_calls
        assert outcome("pop3", asyncio.run(pop3_login(st.port("pop3"), "127.0.42.1", BOB, PASSWORD))) == "failed"
        assert outcome("submission", asyncio.run(smtp_auth(st.port("submission"), "127.0.42.1", BOB,
                                                           PASSWORD))) == "failed"
        assert st.auth.hash_calls == checks


def test_two_processes_share_the_throttle(tmp_path: Path) -> None:
    """``mailstack serve imap`` and ``mailstack serve pop3`` as two processes: failures in
    one block the account in the other."""
    imap_port, pop3_port = free_port(), free_port()
    conf = serve_config(tmp_path, {"imap": imap_port, "pop3": pop3_port}, {"max_failures": 2})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(serve_process(conf, {"imap": imap_port}))
        procs.append(serve_process(conf, {"pop3": pop3_port}))
        for src in ("127.0.60.1", "127.0.61.1"):
            assert outcome("imap", asyncio.run(imap_login(imap_port, src, ALICE, "wrong"))) == "failed"
        # the other process: alice is blocked there too (from a fresh network), bob is not
        assert outcome("pop3", asyncio.run(pop3_login(pop3_port, "127.0.62.1", ALICE, PASSWORD))) == "failed"
        assert outcome("pop3", asyncio.run(pop3_login(pop3_port, "127.0.62.1", BOB, PASSWORD))) == "ok"
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            assert p.stderr is not None
            err = p.stderr.read().decode()
            p.stderr.close()
            assert "Traceback" not in err, err


# -- item 10a: every SASL continuation line is bounded, cleanly -------------------------


@pytest.mark.parametrize("size", [13_000, 70_000])
def test_overlong_sasl_lines_get_a_clean_error(tmp_path: Path, caplog: pytest.LogCaptureFixture, size: int) -> None:
    caplog.set_level(logging.DEBUG)
    junk = b"A" * size

    async def smtp(port: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        out = [await smtp_reply(reader)]

        async def say(data: bytes) -> None:
            writer.write(data)
            out.append(await asyncio.wait_for(smtp_reply(reader), 10))

        await say(b"EHLO client.test\r\n")
        await say(b"AUTH PLAIN\r\n")  # 334
        await say(junk + b"\r\n")  # the PLAIN response
        await say(b"AUTH LOGIN\r\n")  # 334 Username
        await say(junk + b"\r\n")
        await say(b"AUTH LOGIN " + base64.b64encode(ALICE.encode()) + b"\r\n")  # 334 Password
        await say(junk + b"\r\n")
        await say(b"AUTH PLAIN " + junk + b"\r\n")  # an overlong initial response
        await say(b"NOOP\r\n")
        ir = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
        await say(b"AUTH PLAIN " + ir + b"\r\n")
        writer.close()
        return out

    async def imap(port: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        await reader.readline()
        out = []
        for data in (b"a1 AUTHENTICATE PLAIN\r\n", junk + b"\r\n", b"a2 NOOP\r\n",
                     b"a3 LOGIN alice@example.test secret\r\n"):
            writer.write(data)
            if data.startswith(b"a1"):
                out.append((await reader.readline()).rstrip())
                continue
            while True:
                line = await asyncio.wait_for(reader.readline(), 10)
                if not line.startswith(b"* "):
                    out.append(line.rstrip())
                    break
        writer.close()
        return out

    async def pop3(port: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        await reader.readline()
        out = []
        for data in (b"AUTH PLAIN\r\n", junk + b"\r\n", b"NOOP\r\n", f"USER {ALICE}\r\n".encode(),
                     f"PASS {PASSWORD}\r\n".encode()):
            writer.write(data)
            out.append((await asyncio.wait_for(reader.readline(), 10)).rstrip())
        writer.close()
        return out

    with login_stack(tmp_path) as st:
        s = asyncio.run(smtp(st.port("submission")))
        i = asyncio.run(imap(st.port("imap")))
        p = asyncio.run(pop3(st.port("pop3")))
    too_long = b"500 5.5.6 Authentication Exchange line is too long"
    assert s[2:8] == [b"334", too_long, b"334 VXNlcm5hbWU6", too_long, b"334 UGFzc3dvcmQ6", too_long], s
    # an AUTH command line itself: 5.5.6 up to the reader's 64 KB, beyond it aiosmtpd's
    # own "500 5.5.2 Command line too long" (the line is read and dropped either way)
    assert s[8] == too_long if size < 65536 else s[8].startswith(b"500 5.5.")
    assert s[9:] == [b"250 2.0.0 OK", b"235 2.7.0 Authentication successful"], s
    assert i[0] == b"+" and i[1].startswith(b"a1 BAD ") and i[2].startswith(b"a2 OK") and i[3].startswith(b"a3 OK"), i
    assert p[0] == b"+" and p[1].startswith(b"-ERR") and p[2].startswith(b"-ERR") and p[4] == b"+OK Logged in.", p
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_directory_down_is_a_temporary_failure_not_a_wrong_password(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from mailstack.auth import Authenticator, AuthStatus, MemoryThrottleStore, ThrottlePolicy, account_key

    caplog.set_level(logging.INFO, logger="mailstack.maillog")
    db = tmp_path / "broken.db"
    db.write_bytes(b"this is not a SQLite database" * 100)
    store = MemoryThrottleStore(ThrottlePolicy(max_failures=1))
    auth = Authenticator(Directory(f"sqlite:///{db}"), store=store)
    try:
        result = asyncio.run(auth.authenticate("imap", ALICE, PASSWORD, "192.0.2.7"))
    finally:
        auth.close()
    assert result.status is AuthStatus.UNAVAILABLE and result.temporary
    assert store.blocked([account_key(ALICE)], time.time()) is None  # not counted as a failure
    assert "status=auth_unavailable" in auth_lines(caplog)[0]
