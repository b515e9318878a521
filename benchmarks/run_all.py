#!/usr/bin/env python3
"""Every benchmark in one run, printed as the markdown table of the README's "Speed" section.

Rows (ours, the reference's figure when the reference stack is up, and the ratio ours/ref):

- SMTP in, 5 KB messages fsynced into the Maildir, 1 and 20 sessions (msg/s;
  ``smtp_inbound``, Postfix's ``smtp-source``; reference: Postfix on 127.0.0.1:31025);
- IMAP sessions, 1/4/16 clients (ops/s; ``mail_loads.imap_sessions``; Dovecot :31143);
- IMAP STORE+SEARCH, 1/4/16 clients (ops/s; ``imap_bench.store_search_load``);
- POP3 sessions, 1/4/16 clients (ops/s; ``pop3_bench.run_load``; Dovecot :31110);
- submission -> queue -> remote MX with DKIM, 1 and 8 connections (msg/s;
  ``smtp_outbound``; reference: a private Postfix relay to the same sink, needs root);
- memory per IDLE connection at 1,000 connections (``--idle N`` for another count; KB of
  PSS of the server's process tree, supervisor and workers; Dovecot's tree from its
  ``master.pid``);
- imaptest stress, 20 clients, 30 s: logins done (when imaptest is built, where the test
  suite finds it; against the reference only with ``--imaptest-reference``, since its
  stress mode expunges and appends in the reference's mailboxes);
- IMAP and POP3 sessions with real argon2id users (the production policy), 4 clients.

The reference (Postfix :31025, Dovecot IMAP :31143 / POP3 :31110, users
``userN@example.test`` / ``pass``) is detected by its greetings; its Dovecot login mode
(stock, or "performance" = ``DOVECOT_LOGIN_PERF=1``: ``service_count = 0`` for the login
services) is read from the running Dovecot's config when it can be found, else
``--reference-mode`` says it. Progress goes to stderr, the table to stdout.

    python benchmarks/run_all.py                  # the full run (~15 min on 2 cores)
    python benchmarks/run_all.py --quick          # a smoke run with tiny sizes (~1 min)
    python benchmarks/run_all.py --workers 1      # [server] workers of every server (default 0)

Every server is ``python -m mailstack --config <tmp>/mailstack.toml serve <services>`` as
deployed: ``[server] workers`` processes (``--workers``, default 0 = the product's default,
one per CPU core) sharing the listeners; the header line says how many. CPU and memory
figures take the server's whole process tree (supervisor and workers).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import mail_loads  # noqa: E402
from mailstack.service import DEFAULT_MAX_CONNECTIONS  # noqa: E402

REF_HOST = "127.0.0.1"
REF_SMTP, REF_IMAP, REF_POP3 = 31025, 31143, 31110
REF_PASSWORD = "pass"
REF_USERS = [f"user{i}@example.test" for i in range(1, 101)]
LEVELS = (1, 4, 16)


@dataclass(frozen=True)
class Sizes:
    smtp_messages: int
    seconds: float
    users: int
    messages: int
    outbound_messages: int
    idle: int
    imaptest_seconds: int
    argon_users: int

    @classmethod
    def full(cls, idle: int) -> Sizes:
        return cls(2000, 15.0, 100, 100, 400, idle, 30, 8)

    @classmethod
    def quick(cls, idle: int) -> Sizes:
        return cls(20, 1.0, 16, 3, 10, min(idle, 20), 2, 4)  # POP3: a user per client (RFC 1939 §8 locks)


@dataclass
class Row:
    label: str
    ours: str = "-"
    ref: str = "-"
    ratio: str = "-"


@dataclass(frozen=True)
class Reference:
    smtp: bool
    imap: bool
    pop3: bool
    mode: str
    pidfile: str | None

    @property
    def up(self) -> bool:
        return self.smtp or self.imap or self.pop3


# ---------------------------------------------------------------------------- the reference


def greets(port: int, prefix: bytes) -> bool:
    try:
        with socket.create_connection((REF_HOST, port), timeout=2) as s:
            s.settimeout(2)
            return s.recv(200).startswith(prefix)
    except OSError:
        return False


def dovecot_config() -> Path | None:
    """The running reference Dovecot's config: ``dovecot -c FILE`` in /proc, else where
    the reference scripts put it (``$ANCHORS_ROOT/dovecot/dovecot.conf``)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dovecot") and b"-c" in argv[:-1]:
            conf = Path(argv[argv.index(b"-c") + 1].decode(errors="replace"))
            if conf.is_file():
                return conf
    root = Path(os.environ.get("ANCHORS_ROOT") or Path(os.environ.get("TMPDIR", "/tmp")) / "anchors")
    conf = root / "dovecot" / "dovecot.conf"
    return conf if conf.is_file() else None


def login_mode(conf_text: str) -> str:
    """``performance`` when the imap-login service keeps its processes (``service_count = 0``,
    what ``DOVECOT_LOGIN_PERF=1`` writes), else ``stock`` (one login process per connection)."""
    for block in re.finditer(r"^\s*service\s+imap-login\s*\{([^}]*)\}", conf_text, re.M):
        body = "\n".join(line.split("#", 1)[0] for line in block.group(1).splitlines())
        if re.search(r"^\s*service_count\s*=\s*0\s*$", body, re.M):
            return "performance"
    return "stock"


def detect_reference(mode_flag: str | None) -> Reference:
    smtp, imap, pop3 = greets(REF_SMTP, b"220"), greets(REF_IMAP, b"* OK"), greets(REF_POP3, b"+OK")
    conf = dovecot_config() if (imap or pop3) else None
    text = ""
    if conf is not None:
        with contextlib.suppress(OSError):
            text = conf.read_text(errors="replace")
    pidfile = os.environ.get("MAILSTACK_REFERENCE_PIDFILE") or None
    m = re.search(r"^\s*base_dir\s*=\s*(\S+)", text, re.M)
    if pidfile is None and m and Path(m.group(1), "master.pid").is_file():
        pidfile = str(Path(m.group(1), "master.pid"))
    if mode_flag:
        mode = f"{mode_flag} (--reference-mode)"
    elif text:
        mode = (f"performance (DOVECOT_LOGIN_PERF=1), from {conf}" if login_mode(text) == "performance"
                else f"stock (one login process per connection), from {conf}")
    else:
        mode = "unknown (Dovecot's config not found: pass --reference-mode stock|performance)"
    return Reference(smtp, imap, pop3, mode, pidfile)


def ratio(ours: float | None, ref: float | None) -> str:
    return f"{ours / ref:.2f}" if ours and ref else "-"


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- sections


def smtp_in(rows: list[Row], s: Sizes, ref: Reference, workers: int) -> None:
    import smtp_inbound

    labels = {n: f"SMTP in, 5 KB fsynced, {n} session{'s' if n > 1 else ''} (msg/s)" for n in (1, 20)}
    if not os.path.exists(smtp_inbound.SMTP_SOURCE):
        rows += [Row(labels[n], "n/a: smtp-source not installed") for n in (1, 20)]
        return
    with tempfile.TemporaryDirectory(prefix="run-all-smtp-") as t:
        tmp = Path(t)
        port = smtp_inbound.free_port()
        cfg = smtp_inbound.setup_store(tmp, port, f"[server]\nworkers = {workers}\n")
        a = argparse.Namespace(uvloop=False, size=5000, messages=s.smtp_messages, timeout=600.0)
        with contextlib.redirect_stdout(sys.stderr):
            got = smtp_inbound.measure("mailstack", cfg, port, tmp / "mailboxes" / "example.test" / "user1", [1, 20], a)
    for n in (1, 20):
        ours = next(float(r["accepted_per_s"]) for r in got if r["sessions"] == n)
        row = Row(labels[n], fmt(ours), "reference not running")
        if ref.smtp:
            wall = smtp_inbound.run_source(REF_HOST, REF_SMTP, n, s.smtp_messages, 5000, 600.0)
            theirs = s.smtp_messages / wall
            row.ref, row.ratio = fmt(theirs), ratio(ours, theirs)
        rows.append(row)


def mailbox_loads(rows: list[Row], s: Sizes, ref: Reference, imaptest_reference: bool, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="run-all-mail-") as t:
        work = Path(t)
        mail_loads.prepare(work, s.users, s.messages, 5000)
        users = [f"user{i}@example.test" for i in range(1, s.users + 1)]
        # the IMAP cap per process is fixed in code (1000): raised only when the IDLE row holds more
        cap = s.idle + 100 if s.idle + 100 > DEFAULT_MAX_CONNECTIONS else None
        with mail_loads.MailServer(work, workers=workers, max_connections=cap) as srv:
            for c in LEVELS:
                label = f"IMAP sessions, {c} client{'s' if c > 1 else ''} (ops/s)"
                section(rows, [label], lambda: imap_row(rows, label, s, ref, srv, users, c))
            for c in LEVELS:
                label = f"IMAP STORE+SEARCH, {c} client{'s' if c > 1 else ''} (ops/s)"
                section(rows, [label], lambda: store_search_row(rows, label, s, ref, srv, c))
            for c in LEVELS:
                label = f"POP3 sessions, {c} client{'s' if c > 1 else ''} (ops/s)"
                section(rows, [label], lambda: pop3_row(rows, label, s, ref, srv, users, c))
            section(rows, [idle_label(s.idle)], lambda: idle_row(rows, s, ref, srv, users))
            section(rows, [IMAPTEST_LABEL], lambda: imaptest_row(rows, s, ref, srv, imaptest_reference))


def imap_row(rows: list[Row], label: str, s: Sizes, ref: Reference, srv: mail_loads.MailServer, users: list[str],
             c: int) -> None:
    say(label)
    ours = mail_loads.imap_sessions(srv.imap_port, users, "pass", c, s.seconds)
    row = Row(label, fmt(ours["ops_per_s"]), "reference not running")
    if ref.imap:
        theirs = mail_loads.imap_sessions(REF_IMAP, REF_USERS, REF_PASSWORD, c, s.seconds)
        row.ref, row.ratio = fmt(theirs["ops_per_s"]), ratio(ours["ops_per_s"], theirs["ops_per_s"])
    rows.append(row)


def store_search_row(rows: list[Row], label: str, s: Sizes, ref: Reference, srv: mail_loads.MailServer, c: int) -> None:
    import imap_bench

    say(label)
    ours = float(imap_bench.store_search_load(srv.imap_port, c, s.seconds, s.users)["ops_per_s"])  # type: ignore[arg-type]
    row = Row(label, fmt(ours), "reference not running")
    if ref.imap:
        theirs = float(imap_bench.store_search_load(REF_IMAP, c, s.seconds, len(REF_USERS))["ops_per_s"])  # type: ignore[arg-type]
        row.ref, row.ratio = fmt(theirs), ratio(ours, theirs)
    rows.append(row)


def pop3_row(rows: list[Row], label: str, s: Sizes, ref: Reference, srv: mail_loads.MailServer, users: list[str],
             c: int) -> None:
    import pop3_bench

    say(label)
    ours = float(pop3_bench.run_load(srv.pop3_port, users, "pass", c, s.seconds, 3, srv.pid)["ops_per_s"])  # type: ignore[arg-type]
    row = Row(label, fmt(ours), "reference not running")
    if ref.pop3:
        theirs = float(pop3_bench.run_load(REF_POP3, REF_USERS, REF_PASSWORD, c, s.seconds, 3, None)["ops_per_s"])  # type: ignore[arg-type]
        row.ref, row.ratio = fmt(theirs), ratio(ours, theirs)
    rows.append(row)


def idle_label(n: int) -> str:
    return f"memory per IDLE connection at {n:,} conns (KB PSS, lower is better)"


def idle_row(rows: list[Row], s: Sizes, ref: Reference, srv: mail_loads.MailServer, users: list[str]) -> None:
    say(f"IDLE memory, {s.idle} connections")
    ours = mail_loads.idle_memory(srv.imap_port, users, "pass", s.idle, srv.pid)
    text = fmt(ours["kb_per_conn"]) + (f" ({int(ours['failed'])} failed)" if ours["failed"] else "")
    row = Row(idle_label(s.idle), text, "reference not running")
    if ref.imap:
        pid = _pid_of(ref.pidfile)
        if pid is None:
            row.ref = "Dovecot's master.pid not found ($MAILSTACK_REFERENCE_PIDFILE)"
        else:
            theirs = mail_loads.idle_memory(REF_IMAP, REF_USERS, REF_PASSWORD, s.idle, pid)
            row.ref, row.ratio = fmt(theirs["kb_per_conn"]), ratio(ours["kb_per_conn"], theirs["kb_per_conn"])
    rows.append(row)


def _pid_of(pidfile: str | None) -> int | None:
    try:
        return int(Path(pidfile).read_text().split()[0]) if pidfile else None
    except (OSError, ValueError, IndexError):
        return None


IMAPTEST_LABEL = "imaptest stress, 20 clients 30 s (logins)"


def imaptest_row(rows: list[Row], s: Sizes, ref: Reference, srv: mail_loads.MailServer, imaptest_reference: bool) -> None:
    if mail_loads.imaptest_binary() is None:
        rows.append(Row(IMAPTEST_LABEL, "n/a: imaptest not built (.ci/install-system-deps.sh)"))
        return
    say(f"imaptest stress, {s.imaptest_seconds} s")
    # imaptest's users are user1..user20; the quick store has fewer: it logs in as those it has
    ours = mail_loads.imaptest_stress(srv.imap_port, min(20, s.users), "pass", 20, s.imaptest_seconds)
    note = "" if s.imaptest_seconds == 30 else f" in {s.imaptest_seconds} s"
    row = Row(IMAPTEST_LABEL, f"{ours.get('Logi', 0):,}{note}", "reference not running")
    if ref.imap:
        if imaptest_reference:
            theirs = mail_loads.imaptest_stress(REF_IMAP, 20, REF_PASSWORD, 20, s.imaptest_seconds)
            row.ref, row.ratio = f"{theirs.get('Logi', 0):,}", ratio(ours.get("Logi"), theirs.get("Logi"))
        else:
            row.ref = "not run (--imaptest-reference: it changes the reference's mailboxes)"
    rows.append(row)


ARGON_LABELS = ("IMAP sessions, argon2id users, 4 clients (ops/s)", "POP3 sessions, argon2id users, 4 clients (ops/s)")


def argon_rows(rows: list[Row], s: Sizes, ref: Reference, workers: int) -> None:
    import pop3_bench

    with tempfile.TemporaryDirectory(prefix="run-all-argon-") as t:
        work = Path(t)
        say(f"argon2id users: hashing {s.argon_users} passwords with the production policy")
        mail_loads.prepare(work, s.argon_users, min(s.messages, 20), 5000, real_passwords=True)
        users = [f"user{i}@example.test" for i in range(1, s.argon_users + 1)]
        with mail_loads.MailServer(work, real_passwords=True, workers=workers) as srv:
            imap = mail_loads.imap_sessions(srv.imap_port, users, "pass", 4, s.seconds)["ops_per_s"]
            pop3 = float(pop3_bench.run_load(srv.pop3_port, users, "pass", 4, s.seconds, 3, srv.pid)["ops_per_s"])  # type: ignore[arg-type]
    row_i = Row(ARGON_LABELS[0], fmt(imap), "reference not running")
    row_p = Row(ARGON_LABELS[1], fmt(pop3), "reference not running")
    if ref.imap:
        theirs = mail_loads.imap_sessions(REF_IMAP, REF_USERS, REF_PASSWORD, 4, s.seconds)["ops_per_s"]
        row_i.ref, row_i.ratio = f"{fmt(theirs)} (its own password scheme)", ratio(imap, theirs)
    if ref.pop3:
        theirs = float(pop3_bench.run_load(REF_POP3, REF_USERS, REF_PASSWORD, 4, s.seconds, 3, None)["ops_per_s"])  # type: ignore[arg-type]
        row_p.ref, row_p.ratio = f"{fmt(theirs)} (its own password scheme)", ratio(pop3, theirs)
    rows += [row_i, row_p]


def outbound_label(n: int) -> str:
    return f"submission -> queue -> remote MX with DKIM, {n} conn{'s' if n > 1 else ''} (msg/s)"


def outbound_rows(rows: list[Row], s: Sizes, ref: Reference, use_reference: bool, workers: int) -> None:
    import smtp_outbound
    from tests.dnsserver import TestDNS

    with TestDNS() as dns:
        dns.add("remote.test", "MX", "10 mx.remote.test")
        dns.add("mx.remote.test", "A", smtp_outbound.REMOTE_IP)
        remote = smtp_outbound.Remote(smtp_outbound.REMOTE_IP, smtp_outbound.free_port(smtp_outbound.REMOTE_IP))
        remote.start()
        try:
            for conns in (1, 8):
                say(f"outbound, {conns} connections")
                with tempfile.TemporaryDirectory() as t:
                    ours = smtp_outbound.bench_mailstack(Path(t), dns, remote, s.outbound_messages, conns, workers)
                row = Row(outbound_label(conns), fmt(ours), "not run (--no-reference)")
                if use_reference:
                    with tempfile.TemporaryDirectory() as t:
                        theirs = smtp_outbound.bench_postfix(Path(t), remote, s.outbound_messages, conns)
                    row.ref = (f"{fmt(theirs)} (Postfix relay, private instance)" if theirs
                               else "Postfix relay not run (needs root and postfix)")
                    row.ratio = ratio(ours, theirs)
                rows.append(row)
        finally:
            remote.stop()


def section(rows: list[Row], labels: list[str], fn: Callable[[], None]) -> None:
    """Run one part; if it fails, its rows say so and the rest still runs."""
    try:
        fn()
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a broken part must not hide the others
        traceback.print_exc(file=sys.stderr)
        have = {r.label for r in rows}
        rows += [Row(label, f"error: {type(e).__name__}: {str(e)[:80]}") for label in labels if label not in have]


def workers_text(workers: int) -> str:
    """How our servers ran, for the header: ``[server] workers`` and what it came to."""
    if workers == 0:
        from mailstack.config import config_from_dict
        from mailstack.supervisor import worker_count

        n = worker_count(config_from_dict({"server": {"workers": 0}}, HERE / "mailstack.toml"))  # as serve counts
        return f"mailstack: `mailstack serve` with [server] workers = 0 (one per CPU core: {n} worker{'s' if n > 1 else ''})."
    if workers == 1:
        return "mailstack: `mailstack serve` with [server] workers = 1 (one process, no supervisor)."
    return f"mailstack: `mailstack serve` with [server] workers = {workers} ({workers} workers)."


def table(rows: list[Row], ref: Reference, when: str, workers: int = 0) -> str:
    if ref.up:
        up = ", ".join(f"{name} {'up' if ok else 'down'}" for name, ok in
                       ((f"Postfix :{REF_SMTP}", ref.smtp), (f"Dovecot IMAP :{REF_IMAP}", ref.imap),
                        (f"Dovecot POP3 :{REF_POP3}", ref.pop3)))
        head = f"Reference: {up}; Dovecot login mode: {ref.mode}."
    else:
        head = "Reference: not running (Postfix :31025, Dovecot :31143 / :31110): our figures only."
    out = [f"Measured {when}. {head} {workers_text(workers)}", "", "| measurement | mailstack | reference | ratio |", "| --- | --- | --- | --- |"]
    out += [f"| {r.label} | {r.ours} | {r.ref} | {r.ratio} |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes (figures mean nothing)")
    ap.add_argument("--idle", type=int, default=1000, help="IDLE connections for the memory row (e.g. 10000)")
    ap.add_argument("--no-reference", action="store_true", help="our figures only, even when the reference is up")
    ap.add_argument("--reference-mode", choices=("stock", "performance"),
                    help="the reference Dovecot's login mode, when it cannot be read from its config")
    ap.add_argument("--imaptest-reference", action="store_true",
                    help="also run imaptest's stress mode against the reference (it changes its mailboxes)")
    ap.add_argument("--workers", type=int, default=0,
                    help="[server] workers of every mailstack server started (default 0: the product's, one per CPU core)")
    a = ap.parse_args(argv)
    mail_loads.raise_nofile()
    sizes = Sizes.quick(a.idle) if a.quick else Sizes.full(a.idle)
    ref = (Reference(False, False, False, "-", None) if a.no_reference else detect_reference(a.reference_mode))
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + (" (--quick)" if a.quick else "")
    if a.workers < 0:
        ap.error("--workers: 0 (one per CPU core) or more")
    say(f"reference: {'up' if ref.up else 'not running'}; sizes: {sizes}; {workers_text(a.workers)}")
    rows: list[Row] = []
    section(rows, [f"SMTP in, 5 KB fsynced, {n} session{'s' if n > 1 else ''} (msg/s)" for n in (1, 20)],
            lambda: smtp_in(rows, sizes, ref, a.workers))
    mail_labels = ([f"IMAP sessions, {c} client{'s' if c > 1 else ''} (ops/s)" for c in LEVELS]
                   + [f"IMAP STORE+SEARCH, {c} client{'s' if c > 1 else ''} (ops/s)" for c in LEVELS]
                   + [f"POP3 sessions, {c} client{'s' if c > 1 else ''} (ops/s)" for c in LEVELS]
                   + [idle_label(sizes.idle), IMAPTEST_LABEL])
    section(rows, mail_labels, lambda: mailbox_loads(rows, sizes, ref, a.imaptest_reference, a.workers))
    section(rows, [outbound_label(n) for n in (1, 8)], lambda: outbound_rows(rows, sizes, ref, not a.no_reference, a.workers))
    section(rows, list(ARGON_LABELS), lambda: argon_rows(rows, sizes, ref, a.workers))
    print(table(rows, ref, when, a.workers), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
