"""dovecot-uidlist v3: exact format, round trip, and Dovecot-written Maildirs read back."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mailstack.storage import Maildir
from mailstack.storage.uidlist import UidList, UidRecord, format_uidlist, parse_keywords, parse_uidlist

GUID = "0123456789abcdef0123456789abcdef"


def test_format_exact() -> None:
    ul = UidList(1700000000, 8, GUID, [UidRecord(3, "a,S=1,W=2"), UidRecord(7, "b", {"W": "123"})])
    assert format_uidlist(ul) == (
        b"3 V1700000000 N8 G0123456789abcdef0123456789abcdef\n3 :a,S=1,W=2\n7 W123 :b\n"
    )


def test_parse_keeps_unknown_extensions() -> None:
    data = (
        b"3 V1700000000 N20 G0123456789abcdef0123456789abcdef Pxx\n"
        b"5 :1700000001.M1P1.host,S=10,W=12\n"
        b"9 W120 S100 P:odd-uidl O2 :1700000002.M2P1.host\n"
        b"12 :name:2,S\n"
    )
    ul = parse_uidlist(data)
    assert ul is not None
    assert (ul.uidvalidity, ul.nextuid, ul.guid, ul.header_ext) == (1700000000, 20, GUID, ["Pxx"])
    assert [(r.uid, r.base) for r in ul.records] == [
        (5, "1700000001.M1P1.host,S=10,W=12"),
        (9, "1700000002.M2P1.host"),
        (12, "name"),  # the :2, info is never part of the key
    ]
    assert ul.records[1].ext == {"W": "120", "S": "100", "P": ":odd-uidl", "O": "2"}
    assert format_uidlist(ul) == data.replace(b":name:2,S", b":name")


def test_nextuid_never_below_last_uid() -> None:
    ul = parse_uidlist(b"3 V1 N2 G" + GUID.encode() + b"\n7 :x\n")
    assert ul is not None and ul.nextuid == 8


def test_version_1_is_read() -> None:
    ul = parse_uidlist(b"1 1600000000 15\n3 1600000000.M1P1.h:2,S\n14 1600000001.M1P1.h\n")
    assert ul is not None
    assert (ul.uidvalidity, ul.nextuid) == (1600000000, 15)
    assert [(r.uid, r.base) for r in ul.records] == [(3, "1600000000.M1P1.h"), (14, "1600000001.M1P1.h")]


def test_broken_files() -> None:
    for bad in (b"", b"3 N5\n", b"9 V1 N1\n", b"3 V1 N5 G00\n", b"3 V1 N5\n5 :a\n4 :b\n", b"3 V1 N5\nx :a\n"):
        assert parse_uidlist(bad) is None, bad


bases = st.text(alphabet="0123456789abcdefMPQ.,=SW", min_size=1, max_size=30).filter(lambda s: not s.startswith(":"))


@given(st.lists(bases, unique=True, max_size=30), st.integers(1, 2**32 - 2), st.randoms())
def test_round_trip(names: list[str], uidvalidity: int, rnd: object) -> None:
    uid = 0
    records = []
    for n in names:
        uid += 1 + rnd.randint(0, 5)  # type: ignore[attr-defined]
        ext = {"W": str(rnd.randint(0, 10**6))} if rnd.random() < 0.5 else {}  # type: ignore[attr-defined]
        records.append(UidRecord(uid, n, ext))
    ul = UidList(uidvalidity, uid + 1, GUID, records)
    back = parse_uidlist(format_uidlist(ul))
    assert back == ul


def test_keywords_file() -> None:
    assert parse_keywords(b"0 $Junk\n1 work\n3 $Label1\nbad\n30 toohigh\n") == {0: "$Junk", 1: "work", 3: "$Label1"}


def _dovecot_inbox(root: Path) -> None:
    """A Maildir exactly as Dovecot 2.3 leaves it: UIDs with gaps, flags, keywords, a file in new/."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    files = {
        "cur/1699999001.M100P2001.mx,S=20,W=21:2,S": b"Subject: one\n\nbody\n",
        "cur/1699999002.M200P2002.mx,S=20,W=21:2,FSa": b"Subject: two\n\nbody\n",
        "cur/1699999003.M300P2003.mx:2,RS": b"Subject: three\n\nxxx\n",  # no S=/W=
        "new/1699999004.M400P2004.mx,S=20,W=21": b"Subject: four\n\nbod\n",
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
        os.utime(root / rel, (1699999000, 1699999000))
    (root / "dovecot-uidlist").write_bytes(
        b"3 V1700000000 N43 Gd2a2b7a0c3e75c65a92300005f5e6b2d\n"
        b"4 :1699999001.M100P2001.mx,S=20,W=21\n"
        b"17 :1699999002.M200P2002.mx,S=20,W=21\n"
        b"42 W21 :1699999003.M300P2003.mx\n"
    )
    (root / "dovecot-keywords").write_bytes(b"0 $Forwarded\n1 $Junk\n")


def test_dovecot_maildir_read_back(tmp_path: Path) -> None:
    root = tmp_path / "example.test" / "alice"
    _dovecot_inbox(root)
    md = Maildir.for_user(tmp_path, "example.test", "alice")
    state = md.folder("INBOX").sync()
    assert state.uidvalidity == 1700000000
    assert [(m.uid, m.size, m.vsize) for m in state.messages] == [(4, 20, 21), (17, 20, 21), (42, 20, 21), (43, 20, 21)]
    assert state.uidnext == 44
    m4, m17, m42, m43 = state.messages
    assert m4.flags == {"\\Seen"} and m4.keywords == frozenset()
    assert m17.flags == {"\\Seen", "\\Flagged"} and m17.keywords == {"$Forwarded"}
    assert m42.flags == {"\\Seen", "\\Answered"}
    assert m43.filename == "1699999004.M400P2004.mx,S=20,W=21:2,"  # moved new/ -> cur/, base kept
    assert m4.internaldate.timestamp() == 1699999000
    assert state.pop3_uidl(m4) == "000000046553f100"
    text = (root / "dovecot-uidlist").read_text().splitlines()
    assert text[0] == "3 V1700000000 N44 Gd2a2b7a0c3e75c65a92300005f5e6b2d"
    assert text[1:] == [
        "4 :1699999001.M100P2001.mx,S=20,W=21",
        "17 :1699999002.M200P2002.mx,S=20,W=21",
        "42 W21 :1699999003.M300P2003.mx",
        "43 :1699999004.M400P2004.mx,S=20,W=21",
    ]
    # a brand new instance (another process) sees the same UIDs
    again = Maildir(root).folder("INBOX").sync()
    assert again == state


def test_uidlist_written_only_when_changed(tmp_path: Path) -> None:
    root = tmp_path / "d" / "u"
    _dovecot_inbox(root)
    folder = Maildir(root).folder("INBOX")
    folder.sync()
    st = os.stat(root / "dovecot-uidlist")
    folder.sync()
    Maildir(root).folder("INBOX").sync()
    assert os.stat(root / "dovecot-uidlist").st_ino == st.st_ino


def test_missing_w_computed_once_and_remembered(tmp_path: Path) -> None:
    root = tmp_path / "d" / "u"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "cur" / "1700000000.M1P1.mx:2,").write_bytes(b"a\nb\n")
    state = Maildir(root).folder("INBOX").sync()
    assert (state.messages[0].size, state.messages[0].vsize) == (4, 6)
    assert "1 W6 :1700000000.M1P1.mx" in (root / "dovecot-uidlist").read_text()


def test_first_of_a_repeated_extension_counts() -> None:
    # Dovecot's maildir_uidlist_lookup_ext() returns the first; keys not A-Z are dropped.
    ul = parse_uidlist(b"3 V1 N5 G" + GUID.encode() + b"\n4 Pfirst Psecond xjunk O7 :b\n")
    assert ul is not None and ul.records[0].ext == {"P": "first", "O": "7"}


def _saved_uidl_inbox(root: Path) -> None:
    """INBOX as Dovecot leaves it after pop3_save_uidl = yes (records copied from a real
    Dovecot 2.3 run): an empty P means "the base name" (its %f), others are the UIDL."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    names = [
        "1796140441.M930342P26648.vm,S=20,W=21:2,S",
        "1796140444.M800181P26867.vm,S=20,W=21:2,",
        "1796140445.M1P1.vm,S=20,W=21:2,",
        "1796140446.M2P1.vm,S=20,W=21:2,",
        "1796140447.M861170P26958.vm,S=20,W=21:2,",
    ]
    for n in names:
        (root / "cur" / n).write_bytes(b"Subject: one\n\nbody\n")
    (root / "dovecot-uidlist").write_bytes(
        b"3 V1796140441 N9 Gc8226a3899ed0e6b1868000083ecc375\n"
        b"1 P :1796140441.M930342P26648.vm,S=20,W=21\n"
        b"3 P1796140441-3 O2 G0123abc :1796140444.M800181P26867.vm,S=20,W=21\n"
        b"4 P\xc3\xa9t\xc3\xa9 :1796140445.M1P1.vm,S=20,W=21\n"  # not sendable (RFC 1939 \xc2\xa77)
        b"6 Z9 P! :1796140446.M2P1.vm,S=20,W=21\n"
        b"8 :1796140447.M861170P26958.vm,S=20,W=21\n"
    )


def test_saved_pop3_uidls(tmp_path: Path) -> None:
    root = tmp_path / "d" / "u"
    _saved_uidl_inbox(root)
    state = Maildir(root).folder("INBOX").sync()
    assert [state.pop3_uidl(m) for m in state.messages] == [
        "1796140441.M930342P26648.vm,S=20,W=21",  # empty P: the base name
        "1796140441-3",
        "000000046b0eed99",  # P unusable: Dovecot's default instead
        "!",
        "000000086b0eed99",  # no P: Dovecot's default, lower-case
    ]


def test_rewrite_keeps_saved_uidls_and_other_fields(tmp_path: Path) -> None:
    root = tmp_path / "d" / "u"
    _saved_uidl_inbox(root)
    before = (root / "dovecot-uidlist").read_bytes().splitlines()
    folder = Maildir(root).folder("INBOX")
    uid = folder.append(b"Subject: new\n\nx\n")  # rewrites the uidlist
    assert uid == 9
    folder.expunge([8])  # and again
    after = (root / "dovecot-uidlist").read_bytes().splitlines()
    assert after[0] == b"3 V1796140441 N10 Gc8226a3899ed0e6b1868000083ecc375"
    assert after[1:5] == before[1:5]  # P, O, G, Z fields byte for byte
    assert after[5].startswith(b"9 :") and len(after) == 6
    state = Maildir(root).folder("INBOX").sync()
    assert [state.pop3_uidl(m) for m in state.messages][:2] == ["1796140441.M930342P26648.vm,S=20,W=21", "1796140441-3"]
