"""A user's CPU-heavy IMAP commands must not hold up mail arriving by SMTP (issue: hardening).

SEARCH TEXT over a mailbox of big messages is real work (every body decoded and
case-folded); a dozen sessions doing it at once used to fill the event loop's default
thread pool, the one the MX resolves recipients in, so an MX ``RCPT`` waited behind them.
IMAP commands now run in the IMAP service's own pool: the MX answers while they run.
The bound below is a generous "was not held up" bound for 2 shared cores, not a speed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mailstack.storage import Maildir
from tests.auth.conftest import ALICE, PASSWORD, _close, _open, imap_quote, login_stack, smtp_reply

SEARCHERS = 12
MESSAGES = 160
BODY_LINES = 12_000  # ~0.6 MB a message: one SEARCH TEXT reads ~100 MB


def _fill_mailbox(root: Path) -> None:
    md = Maildir.for_user(root, "example.test", "alice")
    md.ensure()
    body = b"".join(b"line %d of some ordinary text in a long message\n" % i for i in range(BODY_LINES))
    for n in range(MESSAGES):
        md.deliver(b"From: someone@remote.test\nSubject: big %d\n\n" % n + body)


async def _searcher(port: int, n: int, until: float) -> int:
    """Log in as alice and run SEARCH TEXT until ``until``; the number of searches done."""
    reader, writer = await _open(port, f"127.0.{n + 40}.1")
    done = 0
    try:
        await reader.readline()
        writer.write(f"a LOGIN {imap_quote(ALICE)} {imap_quote(PASSWORD)}\r\nb SELECT INBOX\r\n".encode())
        for tag in (b"a ", b"b "):
            while not (line := await reader.readline()).startswith(tag):
                assert line, "connection closed"
            assert b" OK" in line, line
        while time.monotonic() < until:
            writer.write(b"s SEARCH TEXT \"no such words anywhere\"\r\n")
            while not (line := await reader.readline()).startswith(b"s "):
                assert line, "connection closed"
            done += 1
        return done
    finally:
        await _close(writer)


async def _rcpt_delay(port: int, start: asyncio.Event) -> tuple[bytes, float]:
    reader, writer = await _open(port, "127.0.0.9")
    try:
        await smtp_reply(reader)
        writer.write(b"EHLO peer.test\r\n")
        await smtp_reply(reader)
        writer.write(b"MAIL FROM:<someone@remote.test>\r\n")
        await smtp_reply(reader)
        await start.wait()
        t0 = time.monotonic()
        writer.write(f"RCPT TO:<{ALICE}>\r\n".encode())
        reply = await asyncio.wait_for(smtp_reply(reader), 120)
        return reply, time.monotonic() - t0
    finally:
        await _close(writer)


def test_heavy_imap_searches_do_not_hold_up_the_mx(tmp_path: Path) -> None:
    with login_stack(tmp_path, max_inflight_per_client=SEARCHERS) as st:
        _fill_mailbox(st.config.storage.maildir_root)

        async def main() -> tuple[list[int], tuple[bytes, float]]:
            until = time.monotonic() + 12
            start = asyncio.Event()
            mx = asyncio.create_task(_rcpt_delay(st.port("smtp"), start))
            searchers = [asyncio.create_task(_searcher(st.port("imap"), n, until)) for n in range(SEARCHERS)]
            await asyncio.sleep(4)  # every searcher logged in and searching
            start.set()
            rcpt = await mx
            return list(await asyncio.gather(*searchers)), rcpt

        searches, (reply, seconds) = asyncio.run(main())
        assert reply.startswith(b"250"), reply
        assert sum(searches) >= SEARCHERS, searches  # the load was real
        assert seconds < 3, f"RCPT waited {seconds:.1f}s behind IMAP searches"
