#!/usr/bin/env python3
"""SEARCH BODY on a big folder: with the full-text index (``[imap] full_text_index``) and without.

Builds one INBOX of ``--messages`` messages (default 100,000) written straight into
``cur/`` (Maildir names with ``,S=``/``,W=``, as our MDA writes them; bodies of
``--size`` bytes of English-like words from a fixed seed, one rare word planted in
every 10,000th message, every 7th message quoted-printable), starts mailstack's IMAP
service in a child process on a free loopback port, and times with imaplib:

- with the index: the first ``UID SEARCH BODY`` (reads every file and builds the index),
  then the same and other needles once the index is current;
- without (a second server on the same folder with ``full_text_index = false``): the
  same searches, which read every file each time (the page cache is warm by then, the
  kindest case for the scan).

It prints each time, the answer sizes (both servers must agree) and the size of the
index next to the size of the mail and of its decoded text.

    python benchmarks/fts_bench.py --messages 100000 --size 2000
"""

from __future__ import annotations

import argparse
import imaplib
import os
import quopri
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = ("the of and to in is was for on that with as by at from his her an be this which or had are not but "
         "have were one all their there been has when who will more no if out so said what up its about into than "
         "them can only other new some could time these two may then do first any my now such like our over man me "
         "even most made after also did many before must through back years where much your way well down should "
         "because each just those people how too little state good very make world still own see men work long get "
         "here between both life being under never day same another know while last might us great old year off "
         "come since against go came right used take three meeting invoice delivery schedule report budget").split()
RARE = "xylophonist"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(workdir: Path, messages: int, size: int) -> tuple[int, int]:
    """The user and its INBOX; returns (bytes of mail on disk, bytes of decoded body text)."""
    from mailstack.directory import Directory, Passwords
    from mailstack.storage import Maildir

    directory = Directory(f"sqlite:///{workdir / 'mailstack.db'}", passwords=Passwords.fast())
    directory.migrate()
    directory.add_domain("example.test")
    directory.add_user("user1@example.test", "pass")
    directory.close()
    md = Maildir.for_user(workdir / "mailboxes", "example.test", "user1")
    md.ensure()
    rnd = random.Random(1)
    mail = text = 0
    for i in range(messages):
        words = [rnd.choice(WORDS) for _ in range(size // 5)]
        if i % 10_000 == 5:
            words[len(words) // 2] = RARE
        lines = [" ".join(words[j : j + 12]) for j in range(0, len(words), 12)]
        body = ("\n".join(lines) + "\n").encode()
        text += len(body)
        head = (f"From: sender{i % 97}@example.org\nTo: user1@example.test\nSubject: report {i}\n"
                f"Date: Mon, 7 Feb 2022 21:52:25 -0800\nMessage-ID: <{i}@bench.example.org>\n")
        if i % 7 == 0:
            head += "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n"
            body = quopri.encodestring(body)
        data = head.encode() + b"\n" + body
        mail += len(data)
        crlf = len(data) + data.count(b"\n")
        name = f"{1_600_000_000 + i}.M{i}P1Q1.bench,S={len(data)},W={crlf}:2,S"
        (md.root / "cur" / name).write_bytes(data)
    return mail, text


def serve(workdir: Path, port: int, full_text: bool) -> None:
    import asyncio

    from mailstack import net
    from mailstack.config import config_from_dict
    from mailstack.directory import Directory, Passwords
    from mailstack.imap.server import start
    from mailstack.service import ServiceContext

    config = config_from_dict(
        {
            "hostname": "mx.example.test",
            "database": {"url": f"sqlite:///{workdir / 'mailstack.db'}"},
            "storage": {"maildir_root": str(workdir / "mailboxes")},
            "tls": {"cert_file": str(workdir / "cert.pem"), "key_file": str(workdir / "key.pem")},
            "imap": {"listen": [f"127.0.0.1:{port}"], "full_text_index": full_text},
        },
        workdir / "mailstack.toml",
    )
    net.ensure_certificate(config.tls, config.hostname)
    directory = Directory(config.database.url, passwords=Passwords.fast())

    async def main() -> None:
        ctx = ServiceContext(config, directory, net.load_tls_contexts(config.tls), net.ConnectionLimits(100, 100))
        service = await start(ctx)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await service.stop(1.0)

    asyncio.run(main())


def timed_searches(port: int, searches: list[tuple[str, list[str]]]) -> list[tuple[str, float, int]]:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=3600)
    c.login("user1@example.test", "pass")
    c.select("INBOX", readonly=True)
    out = []
    for label, criteria in searches:
        t0 = time.monotonic()
        typ, data = c.uid("SEARCH", *criteria)
        elapsed = time.monotonic() - t0
        assert typ == "OK", data
        out.append((label, elapsed, len(data[0].split())))
    c.logout()
    return out


def with_server(workdir: Path, full_text: bool, searches: list[tuple[str, list[str]]]) -> list[tuple[str, float, int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(workdir), str(port), "1" if full_text else "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return timed_searches(port, searches)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1")
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=2000, help="body bytes per message")
    ap.add_argument("--workdir", type=Path, help="keep the built store here (default: a temp dir, removed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        mail, text = build(workdir, args.messages, args.size)
        print(f"built {args.messages} messages ({mail / 1e6:.1f} MB, body text {text / 1e6:.1f} MB) "
              f"in {time.monotonic() - t0:.1f}s")
        needles = [("rare word", ["BODY", RARE]), ("common word", ["BODY", "invoice"]),
                   ("phrase", ["BODY", '"meeting invoice"']), ("2 letters", ["BODY", "zq"]),
                   ("TEXT", ["TEXT", RARE])]
        header_cache = ("first header search (header cache)", ["HEADER", "Subject", "report 99999"])
        indexed = with_server(workdir, True, [("first search: builds the index", ["BODY", RARE]), header_cache]
                              + needles)
        scanned = with_server(workdir, False, needles)
        print(f"{header_cache[0]}: {indexed[1][1]:.2f}s (the folder index, once for both servers)")
        del indexed[1]
        print(f"{'search':34} {'with index':>12} {'without':>12} {'found':>8}")
        print(f"{indexed[0][0]:34} {indexed[0][1]:11.2f}s {'':>12} {indexed[0][2]:8d}")
        for (label, t_idx, n_idx), (_, t_scan, n_scan) in zip(indexed[1:], scanned):
            assert n_idx == n_scan, (label, n_idx, n_scan)
            print(f"{label:34} {t_idx:11.3f}s {t_scan:11.2f}s {n_idx:8d}   x{t_scan / max(t_idx, 1e-6):.0f}")
        root = workdir / "mailboxes" / "example.test" / "user1"
        fts_size = sum(os.path.getsize(p) for p in root.glob("mailstack-fts.sqlite*"))
        print(f"index {fts_size / 1e6:.1f} MB = {fts_size / mail:.2f} x the mail, {fts_size / text:.2f} x its body text")


if __name__ == "__main__":
    main()
