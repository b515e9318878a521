"""The full-text index (``imap.fts``) against the scan it replaces, on real SQLite files.

The scan's answer is ``needle.casefold() in body_text_of(message).casefold()`` (what
``search.matches`` does for BODY); the index must give exactly that for any message and
any needle, without reading the message once it is indexed. Hypothesis draws bodies
from an alphabet chosen to hurt: case pairs whose folding changes length (``ß``, ``ﬃ``,
``İ``), NUL (ends a C string inside the tokenizer), quotes (FTS5 query syntax), emoji,
and text that decodes to lone surrogates; wrapped in quoted-printable, base64, Latin-1
and multipart messages.
"""

from __future__ import annotations

import base64
import multiprocessing as mp
import quopri
import sqlite3
import tempfile
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailstack.imap import fts
from mailstack.imap.fts import FTS_NAME, BodySearch, fold_body, trigram_query
from mailstack.imap.message import ParsedMessage
from mailstack.imap.search import body_text_of

ALPHABET = st.sampled_from(list("aAbBsSzZ ßẞﬃİıiIΣσς\"*'()\n\x00é😀-:ÿ"))
TEXT = st.text(ALPHABET, max_size=40)


def scan(data: bytes, needle: str) -> bool:
    """Today's answer (search._Folded): the needle folded, in the folded body text."""
    return needle.casefold() in body_text_of(ParsedMessage(data)).casefold()


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    text = draw(TEXT)
    kind = draw(st.sampled_from(["plain", "qp", "base64", "latin1", "multipart", "escape", "html"]))
    head = b"From: a@example.test\nSubject: s\n"
    if kind == "plain":
        return head + b"\n" + text.encode("utf-8")
    if kind == "qp":
        return (head + b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
                + quopri.encodestring(text.encode("utf-8")))
    if kind == "base64":
        return (head + b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
                + base64.encodebytes(text.encode("utf-8")))
    if kind == "latin1":
        return head + b"Content-Type: text/plain; charset=iso-8859-1\n\n" + text.encode("latin-1", "replace")
    if kind == "escape":  # a charset whose decoder makes lone surrogates out of "\ud800"
        return head + b"Content-Type: text/plain; charset=unicode_escape\n\n" + b"x\\ud800" + text.encode("ascii", "replace")
    if kind == "html":
        return head + b"Content-Type: text/html; charset=utf-8\n\n<p>" + text.encode("utf-8") + b"</p>"
    other = draw(TEXT)
    return (head + b'Content-Type: multipart/mixed; boundary="b"\n\n--b\n\n' + text.encode("utf-8")
            + b"\n--b\nContent-Type: text/plain; charset=utf-8\n\n" + other.encode("utf-8")
            + b"\n--b\nContent-Type: application/octet-stream\n\n" + text.encode("utf-8") + b"\n--b--\n")


def needles(bodies: list[bytes]) -> st.SearchStrategy[str]:
    """Random needles and pieces of the bodies' own text (so that many match)."""
    texts = [body_text_of(ParsedMessage(b)) for b in bodies]
    pieces = [t[i:j] for t in texts for i in range(0, len(t), 3) for j in (i + 1, i + 2, i + 3, i + 5, i + 9)]
    pieces = [p.swapcase() if n % 2 else p for n, p in enumerate(pieces)]
    return st.one_of(TEXT, st.sampled_from(pieces)) if pieces else TEXT


def never(base: str) -> bytes | None:
    raise AssertionError(f"message {base} read although indexed")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=1, max_size=8), st.data())
def test_index_answers_exactly_as_the_scan(bodies: list[bytes], data: st.DataObject) -> None:
    wanted = data.draw(st.lists(needles(bodies), min_size=1, max_size=6))
    bases = {f"m{i}": b for i, b in enumerate(bodies)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        first = BodySearch(folder, set(bases))  # empty index: reads the files, learns them
        for needle in wanted:
            for base, body in bases.items():
                assert first.contains(base, needle.casefold(), partial(bytes, body)) == scan(body, needle)
        first.close()
        second = BodySearch(folder, set(bases))  # current index: no file is read
        for needle in wanted:
            got = {base for base in bases if second.contains(base, needle.casefold(), partial(never, base))}
            assert got == {base for base, body in bases.items() if scan(body, needle)}, needle
        assert second.read_files == 0
        second.close()


@settings(max_examples=300, deadline=None)
@given(TEXT, TEXT)
def test_trigram_filter_never_drops_a_match(text: str, needle: str) -> None:
    """The candidate query alone, on FTS5 itself: a text holding the needle always matches it."""
    query = trigram_query(needle)
    if query is None:
        assert len(needle) < 3 or any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in needle)
        return
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='trigram case_sensitive 1', content='', detail=none)")
    hay = text + needle + text
    db.execute("INSERT INTO t (rowid, x) VALUES (1, ?)", (fts._indexed_copy(hay),))
    assert db.execute("SELECT rowid FROM t WHERE t MATCH ?", (query,)).fetchall() == [(1,)]
    db.close()


def test_long_needle_filters_on_a_bounded_number_of_trigrams() -> None:
    query = trigram_query("abcdefghijklmnopqrstuvwxyz" * 40)
    assert query is not None and query.count(" AND ") == 25  # 26 distinct trigrams
    query = trigram_query("".join(chr(0x4E00 + i) for i in range(500)))
    assert query is not None and query.count(" AND ") == fts.MAX_TRIGRAMS - 1


def docs(folder: Path) -> list[str]:
    db = sqlite3.connect(folder / FTS_NAME)
    try:
        return sorted(r[0] for r in db.execute("SELECT base FROM doc"))
    finally:
        db.close()


def run(folder: Path, bodies: dict[str, bytes], needle: str) -> tuple[set[str], int]:
    s = BodySearch(folder, set(bodies))
    try:
        got = {b for b, d in bodies.items() if s.contains(b, needle, partial(bytes, d))}
        return got, s.read_files
    finally:
        s.close()


BODIES = {f"m{i}": b"Subject: x\n\nline %d of the tale of the hedgehog\n" % i for i in range(20)}


def test_expunged_messages_leave_the_index(tmp_path: Path) -> None:
    assert run(tmp_path, BODIES, "tale of")[0] == set(BODIES)
    assert docs(tmp_path) == sorted(BODIES)
    left = {b: d for b, d in BODIES.items() if b not in ("m3", "m7")}
    assert run(tmp_path, left, "line 3 ") == (set(), 0)
    assert docs(tmp_path) == sorted(left)
    # the trigrams went too: the FTS5 table agrees with its own integrity check
    db = sqlite3.connect(tmp_path / FTS_NAME)
    db.execute("INSERT INTO body (body) VALUES ('integrity-check')")
    assert db.execute("SELECT count(*) FROM body WHERE body MATCH '\"e 3\"'").fetchone() == (0,)
    db.close()


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "other-format"])
def test_a_lost_or_broken_index_is_rebuilt_with_right_answers_meanwhile(tmp_path: Path, damage: str) -> None:
    want = {"m5"}
    assert run(tmp_path, BODIES, "line 5 ")[0] == want
    path = tmp_path / FTS_NAME
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"not a database at all " * 500)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:4096])
    else:  # written by another FORMAT (or another Unicode version's casefold): not trusted
        db = sqlite3.connect(path)
        db.execute("UPDATE meta SET value = 'format 0' WHERE key = 'version'")
        db.execute("UPDATE doc SET body = ?", (fts._pack("line 5 of something else"),))
        db.commit()
        db.close()
    got, read = run(tmp_path, BODIES, "line 5 ")
    assert got == want and read == len(BODIES)  # answered by scanning
    assert docs(tmp_path) == sorted(BODIES)  # and rebuilt on the way
    assert run(tmp_path, BODIES, "line 5 ") == (want, 0)


def test_short_needles_come_from_the_stored_text(tmp_path: Path) -> None:
    bodies = {"a": b"\nXy", "b": b"\nno", "c": b"\nstra\xc3\x9fe"}  # "ß" folds to "ss"
    run(tmp_path, bodies, "zzz")
    assert run(tmp_path, bodies, "xy") == ({"a"}, 0)
    assert run(tmp_path, bodies, "ss") == ({"c"}, 0)
    assert run(tmp_path, bodies, "") == (set(bodies), 0)


def _search_in_process(folder: str, rounds: int, out: mp.Queue[object]) -> None:
    try:
        for r in range(rounds):
            needle = f"line {r % 20} "
            got, _ = run(Path(folder), BODIES, needle)
            assert got == {f"m{r % 20}"}, (needle, got)
        out.put("ok")
    except BaseException as e:  # reported to the parent
        out.put(repr(e))


def test_several_processes_share_one_index(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    out: mp.Queue[object] = ctx.Queue()
    procs = [ctx.Process(target=_search_in_process, args=(str(tmp_path), 30, out)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert results == ["ok"] * 3
    assert docs(tmp_path) == sorted(BODIES)  # each base once, whoever indexed it
    assert run(tmp_path, BODIES, "hedgehog") == (set(BODIES), 0)


def test_fold_body_is_what_the_scan_compares() -> None:
    data = b"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\nStra=DFe"
    assert fold_body(data) == "strasse"


def test_may_contain_rules_out_only_what_cannot_match(tmp_path: Path) -> None:
    run(tmp_path, BODIES, "zzz")
    s = BodySearch(tmp_path, set(BODIES) | {"new"})
    try:
        assert [b for b in BODIES if s.may_contain(b, "line 1")] == ["m1"] + [f"m{i}" for i in range(10, 20)]
        assert s.may_contain("new", "line 1")  # not indexed yet: must be looked at
        assert all(s.may_contain(b, "ne") for b in BODIES)  # no trigram: no filter
    finally:
        s.close()


def test_delivery_indexer_keeps_its_index_open_across_batches(tmp_path: Path) -> None:
    """Opening an index at every delivery cost as much as indexing the message: the indexer
    keeps it open, and still sees a file that another process removed or replaced."""
    ix = fts.Indexer()
    try:
        for name in ("a", "b", "c"):
            ix(tmp_path, name, b"Subject: x\n\nthe hedgehog " + name.encode() + b"\n")
            ix.drain()  # one batch each, as deliveries that come one by one
        assert ix.indexes_opened == 1
        assert docs(tmp_path) == ["a", "b", "c"]
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / (FTS_NAME + suffix)).unlink(missing_ok=True)
        ix(tmp_path, "d", b"Subject: x\n\nthe hedgehog d\n")
        ix.drain()
        assert docs(tmp_path) == ["d"] and ix.indexes_opened == 2
    finally:
        ix.close()


def test_indexed_copy_replaces_nul_in_ascii_text_too() -> None:
    assert fts._indexed_copy("plain text") == "plain text"
    assert fts._indexed_copy("a\x00b") == "a\ufffdb"
    assert fts._indexed_copy("é\ud800") == "é\ufffd"
