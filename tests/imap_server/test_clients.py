"""Real clients against the real server: aioimaplib (implicit TLS), imapclient (STARTTLS),
and mbsync (isync) syncing a whole account both ways."""

from __future__ import annotations

import asyncio
import email
import subprocess
from pathlib import Path

from aioimaplib import aioimaplib
from imapclient import IMAPClient

from tests.helpers import require_tool

from .conftest import PASSWORD, IMAPServer, message

ALICE = "alice@example.test"


def test_aioimaplib_append_fetch_idle(imap: IMAPServer) -> None:
    async def run() -> None:
        c = aioimaplib.IMAP4_SSL("127.0.0.1", imap.tls_port, ssl_context=imap.client_context(), timeout=10)
        await c.wait_hello_from_server()
        assert (await c.login(ALICE, PASSWORD)).result == "OK"
        big = b"Subject: big\r\n\r\n" + (b"0123456789" * 100 + b"\r\n") * 1000
        resp = await c.append(big, mailbox="INBOX", flags="(\\Seen)")
        assert resp.result == "OK" and b"APPENDUID" in resp.lines[-1]
        assert (await c.select("INBOX")).result == "OK"
        resp = await c.uid("fetch", "1:*", "(UID FLAGS BODY.PEEK[])")
        assert resp.result == "OK"
        body = next(x for x in resp.lines if isinstance(x, (bytes, bytearray)) and len(x) > 1000)
        assert bytes(body) == big
        idle = await c.idle_start(timeout=10)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(imap.deliver, ALICE, message("pushed"))
        pushed = await c.wait_server_push(timeout=5)
        assert any(b"EXISTS" in x for x in pushed)
        c.idle_done()
        await asyncio.wait_for(idle, 5)
        await c.logout()
        # aioimaplib leaves its TLS transport to the garbage collector after LOGOUT: close it
        # here, or its ResourceWarning fails whichever test happens to be running at GC time
        transport = c.protocol.transport
        if transport is not None:
            transport.abort()  # close() waits for its write buffer: the loop may be gone by then
            await asyncio.sleep(0.1)  # let connection_lost run while the loop is alive

    asyncio.run(run())


def test_imapclient_starttls_session(imap: IMAPServer) -> None:
    for i in range(3):
        imap.deliver(ALICE, message(f"ic {i}"))
    with IMAPClient("127.0.0.1", port=imap.port, ssl=False, timeout=10) as c:
        c.starttls(imap.client_context())
        c.login(ALICE, PASSWORD)
        folders = {name: flags for flags, _, name in c.list_folders()}
        assert b"\\Sent" in folders["Sent"] and b"\\Trash" in folders["Trash"]
        assert c.find_special_folder(b"\\Sent") == "Sent"
        info = c.select_folder("INBOX")
        assert info[b"EXISTS"] == 3
        uids = c.search(["SUBJECT", "ic 1"])
        assert uids == [2]
        data = c.fetch(uids, ["ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "INTERNALDATE"])
        assert data[2][b"ENVELOPE"].subject == b"ic 1"
        c.add_flags([1, 2], [b"\\Flagged", b"Work"])
        assert set(c.get_flags([1])[1]) == {b"\\Flagged", b"Work", b"\\Recent"}  # first SELECT: recent here
        c.move([3], "Archive")
        assert c.folder_status("Archive", [b"MESSAGES"])[b"MESSAGES"] == 1
        c.create_folder("Projects.Alpha")
        assert c.folder_exists("Projects.Alpha")
        c.rename_folder("Projects.Alpha", "Projects.Beta")
        assert c.list_folders("Projects", "*")[-1][2] == "Projects.Beta"
        c.idle()
        imap.deliver(ALICE, message("idle"))
        responses = c.idle_check(timeout=3)
        c.idle_done()
        assert (3, b"EXISTS") in responses
        quota = c.get_quota_root("INBOX")
        assert quota[0].quota_roots == [""]
        assert c.namespace().personal == (("", "."),)
        assert b"mailstack" in c.id_({"name": "imapclient"})[0]
        c.unselect_folder()
        c.logout()


def _mbsync_config(imap: IMAPServer, local: Path) -> Path:
    cfg = imap.tmp / "mbsyncrc"
    cfg.write_text(
        f"""IMAPAccount acc
Host 127.0.0.1
Port {imap.port}
User {ALICE}
Pass {PASSWORD}
SSLType STARTTLS
CertificateFile {imap.cert_file}
AuthMechs PLAIN

IMAPStore remote
Account acc

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel ch
Far :remote:
Near :local:
Patterns *
Create Both
Remove Both
Expunge Both
SyncState *
"""
    )
    return cfg


def _mbsync(cfg: Path) -> str:
    proc = subprocess.run([require_tool("mbsync"), "-c", str(cfg), "-a"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _local_messages(folder: Path) -> list[Path]:
    return sorted(p for sub in ("cur", "new") if (folder / sub).is_dir() for p in (folder / sub).iterdir())


def test_mbsync_both_ways(imap: IMAPServer) -> None:
    require_tool("mbsync")
    for i in range(5):
        imap.deliver(ALICE, message(f"server {i}"))
    imap.maildir().create_folder("Sent")
    imap.deliver(ALICE, message("in sent"), folder="Sent")
    local = imap.tmp / "local"
    local.mkdir()
    cfg = _mbsync_config(imap, local)
    _mbsync(cfg)
    assert len(_local_messages(local / "INBOX")) == 5
    assert len(_local_messages(local / "Sent")) == 1
    assert (local / "Sent").is_dir() and (local / "Trash").is_dir()
    # local changes: a new message in Drafts, a flag, a deletion; a new local folder
    drafts = local / "Drafts"
    (drafts / "new" / "1700000000.local1.host").write_bytes(message("local draft"))
    msgs = _local_messages(local / "INBOX")
    msgs[0].rename(msgs[0].with_name(msgs[0].name.split(",U=")[0] + msgs[0].name[len(msgs[0].name.split(",U=")[0]):]
                                     .split(":2,")[0] + ":2,FS"))
    msgs[1].unlink()
    (local / "Local").mkdir()
    for sub in ("cur", "new", "tmp"):
        (local / "Local" / sub).mkdir()
    (local / "Local" / "new" / "1700000001.local2.host").write_bytes(message("local folder msg"))
    # server changes meanwhile
    imap.deliver(ALICE, message("server late"))
    out = _mbsync(cfg)
    md = imap.maildir()
    inbox = md.folder("INBOX").sync()
    assert len(inbox.messages) == 5, out  # 5 - 1 deleted locally + 1 new on the server
    assert sum(1 for m in inbox.messages if {"\\Flagged", "\\Seen"} <= m.flags) == 1
    assert len(md.folder("Drafts").sync().messages) == 1
    assert md.has_folder("Local") and len(md.folder("Local").sync().messages) == 1
    assert len(_local_messages(local / "INBOX")) == 5
    subjects = {email.message_from_bytes(p.read_bytes())["Subject"] for p in _local_messages(local / "INBOX")}
    assert "server late" in subjects
    # a second run with no changes changes nothing
    before = {p.name for p in _local_messages(local / "INBOX")}
    _mbsync(cfg)
    assert {p.name for p in _local_messages(local / "INBOX")} == before


def test_offlineimap_both_ways(imap: IMAPServer) -> None:
    binary = require_tool("offlineimap")
    for i in range(4):
        imap.deliver(ALICE, message(f"oi {i}"))
    local = imap.tmp / "oi-local"
    meta = imap.tmp / "oi-meta"
    rc = imap.tmp / "offlineimaprc"
    rc.write_text(f"""[general]
accounts = acc
metadata = {meta}

[Account acc]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {local}

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {imap.port}
remoteuser = {ALICE}
remotepass = {PASSWORD}
ssl = no
starttls = yes
sslcacertfile = {imap.cert_file}
tls_level = tls_secure
""")

    def run() -> None:
        proc = subprocess.run([binary, "-c", str(rc), "-o", "-u", "basic"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and "ERROR" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr

    run()
    assert len(_local_messages(local / "INBOX")) == 4
    assert (local / "Sent").is_dir()
    new = local / "Drafts" / "new" / "1700000002.oi.host"
    new.write_bytes(message("offline draft"))
    first = _local_messages(local / "INBOX")[0]
    first.rename(first.with_name(first.name.split(":2,")[0] + ":2,S"))
    run()
    md = imap.maildir()
    assert len(md.folder("Drafts").sync().messages) == 1
    assert sum(1 for m in md.folder("INBOX").sync().messages if "\\Seen" in m.flags) == 1


IMAPLIB2_SCRIPT = r"""
import sys
sys.path.insert(0, "/usr/lib/python3/dist-packages")
import imaplib2
port, user, password, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
for i in range(n):
    c = imaplib2.IMAP4("127.0.0.1", port, timeout=10)
    c.starttls(tls_level="tls_compat", ssl_version="ssl23")
    c.capability()
    c.login(user, password)
    c.logout()
print("ok", n)
"""


def test_imaplib2_starttls_never_hangs(imap: IMAPServer) -> None:
    """offlineimap's imaplib2 reads and writes one SSL socket from two threads: TLS 1.3 session
    tickets sent after the handshake made ~1 in 6 of its STARTTLS sessions hang (net.py sets
    num_tickets = 0). 30 sessions in a row must all complete."""
    require_tool("offlineimap")  # brings Debian's python3-imaplib2
    proc = subprocess.run(["/usr/bin/python3", "-c", IMAPLIB2_SCRIPT, str(imap.port), ALICE, PASSWORD, "30"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok 30", proc.stdout + proc.stderr[-2000:]
