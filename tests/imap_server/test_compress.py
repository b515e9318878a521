"""COMPRESS=DEFLATE (RFC 4978) against the real server: imaplib over a deflated socket
(the test wraps the raw socket with zlib itself, as imaplib has no COMPRESS), plain and
over TLS, the RFC's transcript rules, and hostile streams (a deflate bomb meets the same
line limit as plain input without the server's memory growing; a corrupt stream ends only
that connection)."""

from __future__ import annotations

import imaplib
import socket
import ssl
import threading
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .conftest import PASSWORD, IMAPServer, message
from .test_corners import Raw, tagged

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

ALICE = "alice@example.test"


class _InflatingFile:
    """What imaplib reads (``readline``/``read``) after COMPRESS: the socket, inflated."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket, leftover: bytes) -> None:
        self.sock = sock
        self.z = zlib.decompressobj(wbits=-15)
        self.buf = bytearray()
        self.wire = 0  # compressed octets received
        self._feed(leftover)

    def _feed(self, data: bytes) -> None:
        self.wire += len(data)
        self.buf += self.z.decompress(data)

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self._feed(data)

    def readline(self, limit: int = -1) -> bytes:
        while b"\n" not in self.buf:
            self._more()
        n = self.buf.index(b"\n") + 1
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._more()
        out = bytes(self.buf[:size])
        del self.buf[:size]
        return out

    def close(self) -> None:
        pass


class _Compressing:
    """Mixin for imaplib.IMAP4 / IMAP4_SSL: ``compress()`` sends COMPRESS DEFLATE and, on
    OK, deflates what is sent (Z_SYNC_FLUSH per command) and inflates what is read."""

    sock: Any
    file: Any
    _deflate: Any = None

    def compress(self) -> str:
        imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))  # imaplib's table of known commands
        typ, data = self._simple_command("COMPRESS", "DEFLATE")  # type: ignore[attr-defined]
        if typ == "OK":
            # the server sends nothing after the tagged OK until the next command, so
            # imaplib's buffered reader holds no compressed octet yet
            self.file = _InflatingFile(self.sock, b"")
            self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        return str(typ)

    def send(self, data: ReadableBuffer) -> None:
        raw = bytes(data)
        if self._deflate is not None:
            raw = self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(raw)


class CompressedIMAP(_Compressing, imaplib.IMAP4):
    pass


class CompressedIMAP_SSL(_Compressing, imaplib.IMAP4_SSL):
    pass


def _exercise(c: CompressedIMAP | CompressedIMAP_SSL, imap: IMAPServer) -> None:
    c.login(ALICE, PASSWORD)
    assert "COMPRESS=DEFLATE" in c.capabilities
    assert c.compress() == "OK"
    body = "".join(f"line {i} of a long and very repetitive message body\n" for i in range(20000))
    big = message("big", body).replace(b"\n", b"\r\n")
    assert c.append("INBOX", None, None, big)[0] == "OK"
    assert c.select("INBOX") == ("OK", [b"1"])
    typ, data = c.fetch("1", "(BODY.PEEK[] RFC822.SIZE)")
    assert typ == "OK"
    assert data[0][1] == big  # type: ignore[index]
    wire = c.file.wire
    assert wire < len(big) // 5, (wire, len(big))  # really deflated: the text repeats itself
    typ, data = c.search(None, "SUBJECT", "big")
    assert (typ, data) == ("OK", [b"1"])
    # RFC 4978 §3: a second COMPRESS is refused, over the compressed stream
    typ, data = c._simple_command("COMPRESS", "DEFLATE")
    assert typ == "NO"
    assert c.noop()[0] == "OK"
    assert c.logout()[0] == "BYE"


def test_compress_with_imaplib_plain(imap: IMAPServer) -> None:
    _exercise(CompressedIMAP("127.0.0.1", imap.port, timeout=10), imap)


def test_compress_with_imaplib_over_tls(imap: IMAPServer) -> None:
    _exercise(CompressedIMAP_SSL("127.0.0.1", imap.tls_port, ssl_context=imap.client_context(), timeout=10), imap)


class _Deflated:
    """A raw connection that compresses after ``start()``: byte-level transcripts."""

    def __init__(self, raw: Raw) -> None:
        self.raw = raw
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inp = zlib.decompressobj(wbits=-15)
        self.buf = b""

    def send(self, data: bytes, flush: bool = True) -> None:
        z = self.out.compress(data) + (self.out.flush(zlib.Z_SYNC_FLUSH) if flush else b"")
        self.raw.sock.sendall(z)

    def until(self, tag: str) -> str:
        start = f"{tag} ".encode()
        while True:
            i = 0 if self.buf.startswith(start) else self.buf.find(b"\r\n" + start)
            if i >= 0 and self.buf.find(b"\r\n", i + 2) >= 0:
                end = self.buf.find(b"\r\n", i + 2) + 2
                out, self.buf = self.buf[:end], self.buf[end:]
                return out.decode()
            chunk = self.raw.sock.recv(65536)
            assert chunk, f"connection closed; got {self.buf!r}"
            self.buf += self.inp.decompress(chunk)


def test_compress_transcript_rfc4978(imap: IMAPServer) -> None:
    # RFC 4978 §3: before authentication COMPRESS is not valid
    s = socket.create_connection(("127.0.0.1", imap.port), timeout=10)
    assert s.recv(4096).startswith(b"* OK [CAPABILITY ")
    s.sendall(b"a COMPRESS DEFLATE\r\n")
    assert s.recv(4096).startswith(b"a BAD ")
    s.close()
    raw = Raw(imap)
    assert tagged(raw.cmd("COMPRESS")).startswith("BAD ")  # RFC 4978 §5: the algorithm is required
    assert tagged(raw.cmd("COMPRESS X-GZIP")) == "NO Unknown compression mechanism"  # as Dovecot
    # RFC 4978 §3 example: "C: c COMPRESS DEFLATE" / "S: c OK DEFLATE active" (our text: Dovecot's)
    raw.sock.sendall(b"c COMPRESS DEFLATE\r\n")
    assert raw._until("c") == "c OK Begin compression\r\n"
    d = _Deflated(raw)
    d.send(b"d COMPRESS DEFLATE\r\n")
    assert d.until("d") == "d NO [COMPRESSIONACTIVE] Compression is already active\r\n"
    # pipelined commands in one deflate flush, then a literal split across two flushes
    d.send(b"e NOOP\r\nf SELECT INBOX\r\n")
    assert d.until("e") == "e OK NOOP completed\r\n"
    assert "f OK [READ-WRITE]" in d.until("f")
    d.send(b"g APPEND INBOX {5+}\r\nhel", flush=True)
    d.send(b"lo\r\n")
    assert "g OK [APPENDUID " in d.until("g")
    d.send(b"h FETCH 1 BODY.PEEK[]\r\n")
    assert d.until("h").endswith("* 1 FETCH (BODY[] {5}\r\nhello)\r\nh OK FETCH completed\r\n")
    d.send(b"i LOGOUT\r\n")
    assert d.until("i") == "* BYE Logging out\r\ni OK Logout completed\r\n"
    raw.sock.close()


def test_compress_pipelined_with_the_command(imap: IMAPServer) -> None:
    """The client compresses right after the COMPRESS line (RFC 4978 §3): octets that came
    in the same packet must be inflated, not read as plain text."""
    raw = Raw(imap)
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw.sock.sendall(b"c COMPRESS DEFLATE\r\n" + z.compress(b"n NOOP\r\n") + z.flush(zlib.Z_SYNC_FLUSH))
    assert raw._until("c") == "c OK Begin compression\r\n"
    d = _Deflated(raw)
    d.out = z
    d.inp = zlib.decompressobj(wbits=-15)
    d.buf = b""
    leftover = raw.buf
    d.buf = d.inp.decompress(leftover) if leftover else b""
    assert d.until("n") == "n OK NOOP completed\r\n"
    raw.sock.close()


def _rss_mb() -> float:
    """This process's resident memory now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text("ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


class _PeakRSS(threading.Thread):
    """Samples the resident memory every few ms until stopped: the highest value seen
    (the process-wide ru_maxrss would keep the peak of an earlier test)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _rss_mb()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, _rss_mb())


def test_deflate_bomb_meets_the_line_limit_in_bounded_memory(imap: IMAPServer) -> None:
    """A few hundred KB that inflate to 256 MB of one line: the server answers 'line too long'
    as for plain input, keeps serving others, and never holds the inflated line (the test
    server runs in this process: its peak RSS must not grow by anything near 256 MB)."""
    raw = Raw(imap)
    raw.sock.sendall(b"c COMPRESS DEFLATE\r\n")
    assert raw._until("c") == "c OK Begin compression\r\n"
    d = _Deflated(raw)
    chunk = b"A" * (1 << 20)
    before = _rss_mb()
    sampler = _PeakRSS()
    sampler.start()
    d.send(b"x NOOP ", flush=False)
    for _ in range(256):
        raw.sock.sendall(d.out.compress(chunk))
    d.send(b"\r\ny NOOP\r\n")
    deadline = time.monotonic() + 60
    text = ""
    while "y OK" not in text:
        assert time.monotonic() < deadline, text
        text += d.until("y")
    assert "BAD Command line too long" in text
    other = imap.client()  # the others were served meanwhile and still are
    assert other.noop()[0] == "OK"
    other.logout()
    sampler.done.set()
    sampler.join()
    assert sampler.peak - before < 64, (before, sampler.peak)
    raw.sock.close()


def test_corrupt_deflate_stream_ends_only_that_connection(imap: IMAPServer) -> None:
    raw = Raw(imap)
    raw.sock.sendall(b"c COMPRESS DEFLATE\r\n")
    assert raw._until("c") == "c OK Begin compression\r\n"
    raw.sock.sendall(b"\xff" * 64 + b"x NOOP\r\n")  # not a deflate stream
    raw.sock.settimeout(10)
    data = b""
    try:
        while True:
            chunk = raw.sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        raw.sock.close()
    assert b"x OK" not in data  # nothing was read as plain text after COMPRESS
    other = imap.client()
    assert other.noop()[0] == "OK"
    other.logout()


def test_idle_pushes_are_flushed_under_compression(imap: IMAPServer) -> None:
    """An untagged EXISTS pushed during IDLE is written with no command to answer: it must
    still be flushed (Z_SYNC_FLUSH) at once, not sit in the deflater."""
    raw = Raw(imap)
    raw.sock.sendall(b"c COMPRESS DEFLATE\r\n")
    assert raw._until("c") == "c OK Begin compression\r\n"
    d = _Deflated(raw)
    d.send(b"s SELECT INBOX\r\n")
    assert "s OK [READ-WRITE]" in d.until("s")
    d.send(b"i IDLE\r\n")
    while b"+ idling" not in d.buf:
        d.buf += d.inp.decompress(raw.sock.recv(65536))
    imap.deliver(ALICE, message("pushed"))
    while b"* 1 EXISTS\r\n" not in d.buf:  # the socket timeout (10 s) fails the test if it never comes
        d.buf += d.inp.decompress(raw.sock.recv(65536))
    d.send(b"DONE\r\n")
    assert d.until("i").endswith("i OK IDLE terminated\r\n")
    raw.sock.close()
