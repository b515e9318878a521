"""Two hosts, one directory, one mail root, one queue: concurrent load, then kill -9.

Both hosts take mail on their MX, submission and LMTP listeners and serve IMAP (APPEND
and FETCH) for the same two users while each host's queue runner sends to a remote sink.
Half-way, host A is killed with SIGKILL (no shutdown: its dotlocks and queue claims stay
where they were; a dotlock of host A is stale for host B only after 120 s when the two
have their own host names, see conftest: a run whose kill leaves one takes about two
minutes more, the survivor's IMAP waiting on that folder as Dovecot's would). Then:

- every message a host acknowledged (250 after DATA, LMTP 250, APPEND OK) is in its
  recipient's Maildir exactly once, and no message is in one Maildir twice;
- no UID was given twice: every ``dovecot-uidlist`` lists each UID and each file once,
  and every (UIDVALIDITY, UID) pair any IMAP client saw on either host always named the
  same message;
- the queue empties: what the dead host had claimed is taken over by the survivor;
- the sink got every acknowledged remote message, and none twice, except a message the
  dead host was sending when it died (the peer's 250 came within the last moments before
  the kill, so the host could not record it: at-least-once delivery, as in Postfix).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from pathlib import Path

from tests.cluster.conftest import Cluster, Host
from tests.cluster.sink import Copy
from tests.cluster.load import (ALICE, BOB, TIMEOUT, Ledger, imap_session, imap_worker, lmtp_worker, message_id_of, mx_worker, read_uids,
                                submission_worker)

LOAD_BEFORE_KILL = 4.0  # seconds of load on both hosts
LOAD_AFTER_KILL = 3.0  # ... then on the survivor alone
QUEUE_DRAIN = 90.0  # generous bound for "the survivor delivers what is left" (the dead host's dotlocks: 2 s, claims: at once)
IN_FLIGHT = 2.0  # a copy the sink acknowledged this close before the kill may come again


def maildir_message_ids(maildir: Path) -> collections.Counter[str]:
    found: collections.Counter[str] = collections.Counter()
    for sub in ("new", "cur"):
        for p in (maildir / sub).iterdir():
            found[message_id_of(p)] += 1
    return found


def uidlist_problems(maildir: Path) -> list[str]:
    """UIDs or files listed twice in ``dovecot-uidlist``; files in cur/ it does not list."""
    lines = (maildir / "dovecot-uidlist").read_text().splitlines()[1:]
    uids: collections.Counter[int] = collections.Counter()
    bases: collections.Counter[str] = collections.Counter()
    for line in lines:
        head, sep, name = line.partition(" :")
        if not sep:
            head, _, name = line.partition(":")
        uids[int(head.split()[0])] += 1
        bases[name.split(":2,")[0]] += 1
    problems = [f"UID {u} listed {c} times" for u, c in uids.items() if c > 1]
    problems += [f"{b} listed {c} times" for b, c in bases.items() if c > 1]
    on_disk = {p.name.split(":2,")[0] for p in (maildir / "cur").iterdir()}
    problems += [f"{b} in cur/ has no UID" for b in sorted(on_disk - set(bases))]
    return problems


def run_load(cluster: Cluster, ledger: Ledger, victim: Host) -> tuple[float, dict[str, str]]:
    """Load on both hosts, kill -9 ``victim`` half-way; (time of the kill, the victim's queue
    claims at that moment: queue id -> Message-ID)."""
    stop = threading.Event()
    threads = []
    for host in cluster.hosts:
        for n, worker in enumerate((mx_worker, mx_worker, lmtp_worker, submission_worker, imap_worker)):
            t = threading.Thread(target=worker, args=(host, n, ledger, stop), name=f"{host.name}-{worker.__name__}-{n}")
            t.start()
            threads.append(t)
    time.sleep(LOAD_BEFORE_KILL)
    for _ in range(50):  # kill while it holds claims (the sink is slow: it nearly always does)
        claimed = cluster.claims_of(victim)
        if claimed:
            break
        time.sleep(0.05)
    held = {}
    for qid in claimed:
        with contextlib.suppress(FileNotFoundError):
            held[qid] = message_id_of(cluster.queue / f"{qid}.msg")
    killed_at = time.time()
    victim.kill()
    time.sleep(LOAD_AFTER_KILL)
    stop.set()
    for t in threads:
        t.join(TIMEOUT + 30)
        assert not t.is_alive(), f"{t.name} hung"
    return killed_at, held


def test_kill_one_host_mid_load(cluster: Cluster) -> None:
    ledger = Ledger()
    killed_at, held = run_load(cluster, ledger, cluster.a)
    assert held, "host A held no queue claim when it was killed"
    survivor = cluster.b

    # the survivor takes over the dead host's claims and empties the queue
    deadline = time.monotonic() + QUEUE_DRAIN
    while cluster.queued() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cluster.queued() == [], f"queue not drained by the survivor:\n{survivor.log_text()[-3000:]}"

    # the live host never failed a client; the dead one only around its death
    live_errors = [e for e in ledger.errors if e[0] == survivor.name]
    assert live_errors == [], live_errors
    early = [e for e in ledger.errors if e[0] == cluster.a.name and e[1] < killed_at - 0.5]
    assert early == [], early
    assert all(ledger.acked[u] for u in (ALICE, BOB)) and ledger.remote_acked and ledger.fetches > 10, \
        "the load did not run"

    # one last look through the survivor: gives every file a UID, records what it sees
    for user in (ALICE, BOB):
        with imap_session(survivor, user) as m:
            read_uids(m, user, ledger)
    assert ledger.conflicts == []

    for user in (ALICE, BOB):
        maildir = cluster.root / "example.test" / user.split("@")[0]
        found = maildir_message_ids(maildir)
        twice = {mid: c for mid, c in found.items() if c > 1}
        assert twice == {}, f"{user}: stored more than once"
        lost = sorted(mid for mid in ledger.acked[user] if found[mid] != 1)
        assert lost == [], f"{user}: acknowledged but not stored: {lost[:10]}"
        assert uidlist_problems(maildir) == []

    copies = cluster.sink.copies()
    got = collections.Counter(c.message_id for c in copies)
    missing = sorted((ledger.remote_acked | set(held.values())) - set(got))
    assert missing == [], f"acknowledged by submission, never sent: {missing[:10]}"
    first: dict[str, Copy] = {}
    for c in sorted(copies, key=lambda c: c.at):
        first.setdefault(c.message_id, c)
    twice = {mid: n for mid, n in got.items() if n > 1}
    not_in_flight = {mid: n for mid, n in twice.items() if n > 2 or not killed_at - IN_FLIGHT <= first[mid].at <= killed_at}
    assert not_in_flight == {}, f"sent twice without a host dying in between: {not_in_flight}"
