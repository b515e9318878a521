"""SRS (mail.srs): the address formats of libsrs2/postsrsd, forged and stale addresses.

The table tests pin the format; ``test_postsrsd_*`` check it against postsrsd itself
(Debian's, a TCP lookup table daemon) with the same secret file: it must read our
addresses and we must read its.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstack.mail.forward import SECRET_NAME, load_secret
from mailstack.mail.srs import SRS, SRSError, is_srs
from tests.helpers import free_port, require_tool

SECRET = b"tops3cr3t"
DAY = 86400
NOW = 20000 * DAY + 3600  # day 20000: 20000 % 1024 = 544 = 17*32 + 0 -> "RA"


def test_srs0_format_is_libsrs2s() -> None:
    srs = SRS([SECRET])
    out = srs.forward("Alice@Origin.example", "fwd.example", now=NOW)
    # hash over the lower-cased timestamp, host and local part, base64, 4 characters
    want = base64.b64encode(hmac.new(SECRET, b"raorigin.examplealice", hashlib.sha1).digest()).decode()[:4]
    assert out == f"SRS0={want}=RA=Origin.example=Alice@fwd.example"
    assert srs.reverse(out, now=NOW) == "Alice@Origin.example"


def test_srs1_keeps_the_first_hop_and_reverses_to_the_srs0_address() -> None:
    first = SRS([b"first hop secret"]).forward("alice@origin.example", "hop1.example", now=NOW)
    ours = SRS([SECRET])
    second = ours.forward(first, "hop2.example", now=NOW)
    rest = first.split("@")[0][4:]  # "=HHHH=TT=origin.example=alice"
    assert second.startswith("SRS1=") and second.endswith(f"=hop1.example={rest}@hop2.example")
    assert ours.reverse(second, now=NOW) == first
    # SRS1 of SRS1: still the first hop, a fresh hash of ours
    third = SRS([b"third"]).forward(second, "hop3.example", now=NOW)
    assert third.endswith(f"=hop1.example={rest}@hop3.example")
    assert SRS([b"third"]).reverse(third, now=NOW) == first


@pytest.mark.parametrize("mangle", [
    lambda a: "SRS0=AAAA" + a[9:],                    # forged hash
    lambda a: a.replace("=origin.example=", "=evil.example="),  # host changed
    lambda a: a.replace("=alice@", "=mallory@"),       # user changed
    lambda a: a.replace("=RA=", "=RB="),               # timestamp changed
    lambda a: "SRS0=" + a[5:].split("=", 1)[1],        # a field missing
    lambda a: "SRS0==RA=origin.example=alice@fwd.example",  # empty hash
])
def test_forged_addresses_are_refused(mangle: object) -> None:
    srs = SRS([SECRET])
    good = srs.forward("alice@origin.example", "fwd.example", now=NOW)
    with pytest.raises(SRSError):
        srs.reverse(mangle(good), now=NOW)  # type: ignore[operator]


def test_age_window_and_wraparound() -> None:
    srs = SRS([SECRET])
    addr = srs.forward("alice@origin.example", "fwd.example", now=NOW)
    assert srs.reverse(addr, now=NOW + 21 * DAY) == "alice@origin.example"
    with pytest.raises(SRSError, match="expired"):
        srs.reverse(addr, now=NOW + 22 * DAY)
    with pytest.raises(SRSError, match="expired"):
        srs.reverse(addr, now=NOW + 1024 * DAY + 22 * DAY)
    # made on day 1023, read on day 1024 (= slot 0): one day old across the wrap
    late = srs.forward("alice@origin.example", "fwd.example", now=1023 * DAY)
    assert srs.reverse(late, now=1024 * DAY + 10) == "alice@origin.example"


def test_case_folded_address_still_reverses_and_rotation() -> None:
    old = SRS([b"old"])
    addr = old.forward("alice@origin.example", "fwd.example", now=NOW)
    assert old.reverse(addr.lower(), now=NOW).lower() == "alice@origin.example"
    assert SRS([b"new", b"old"]).reverse(addr, now=NOW) == "alice@origin.example"
    with pytest.raises(SRSError):
        SRS([b"new"]).reverse(addr, now=NOW)
    assert is_srs("srs0+x") and is_srs("SRS1=x") and not is_srs("srs2=x") and not is_srs("alice")


@given(st.text(max_size=80), st.sampled_from(["SRS0=", "SRS1=", "srs0+", "SRS0-"]))
@settings(max_examples=300, deadline=None)
def test_reverse_of_anything_is_an_address_or_srserror(text: str, prefix: str) -> None:
    srs = SRS([SECRET])
    for candidate in (prefix + text + "@fwd.example", text, prefix + text):
        try:
            srs.reverse(candidate, now=NOW)
        except SRSError:
            pass


def test_odd_timestamp_under_a_good_hash_is_refused_not_a_crash() -> None:
    srs = SRS([SECRET])
    h = srs._hash(SECRET, "ßa", "origin.example", "alice")  # "ß".upper() is "SS": two base32 letters
    with pytest.raises(SRSError):
        srs.reverse(f"SRS0={h}=ßa=origin.example=alice@fwd.example", now=NOW)


def test_secret_is_made_once_0600(tmp_path: Path) -> None:
    keys = tmp_path / "dkim"
    first = load_secret(keys)
    assert len(first) == 1 and len(first[0]) == 32
    assert (keys / SECRET_NAME).stat().st_mode & 0o777 == 0o600
    assert load_secret(keys) == first
    assert [p.name for p in keys.iterdir()] == [SECRET_NAME]  # no temp file left


def _tcp_table(port: int, key: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"get {key}\n".encode())
        return s.makefile("rb").readline().decode().strip()


@pytest.fixture
def postsrsd(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    exe = require_tool("postsrsd")
    secret = tmp_path / "postsrsd.secret"
    secret.write_text("tops3cr3t\n")
    fwd, rev = free_port(), free_port()
    proc = subprocess.Popen([exe, "-f", str(fwd), "-r", str(rev), "-s", str(secret), "-d", "fwd.example",
                             "-l", "127.0.0.1", "-p", str(tmp_path / "pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", rev), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("postsrsd did not start")
            time.sleep(0.1)
    yield fwd, rev, secret
    proc.terminate()
    proc.wait(5)


def test_postsrsd_reads_ours_and_we_read_its(postsrsd: tuple[int, int, Path]) -> None:
    fwd, rev, secret = postsrsd
    srs = SRS([secret.read_bytes().strip()])
    ours = srs.forward("alice@origin.example", "fwd.example")
    theirs = _tcp_table(fwd, "alice@origin.example")
    assert theirs == f"200 {ours}"  # same secret, same day: the very same address
    assert _tcp_table(rev, ours) == "200 alice@origin.example"
    assert srs.reverse(theirs[4:]) == "alice@origin.example"
    # SRS1 (postsrsd 1.x does not re-forward SRS addresses, but reverses SRS1)
    first_hop = SRS([b"elsewhere"]).forward("alice@origin.example", "hop1.example")
    srs1 = srs.forward(first_hop, "fwd.example")
    assert srs1.startswith("SRS1=")
    assert _tcp_table(rev, srs1) == f"200 {first_hop}"
    forged = srs1[:5] + ("A" if srs1[5] != "A" else "B") + srs1[6:]
    assert _tcp_table(rev, forged).startswith("500")
    with pytest.raises(SRSError):
        srs.reverse(forged)
