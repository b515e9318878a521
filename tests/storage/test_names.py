"""Names that could leave the Maildir root are refused; flag letters round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.storage import Maildir, UnsafeName, validate_folder_name
from mailstack.storage.filename import FLAG_TO_LETTER, LETTER_TO_FLAG, flag_letters, split_name, with_flags

# (domain, local part): every one would escape <root>/<domain>/<local>/ or is unusable as a dir name.
BAD_USERS = [
    ("..", "alice"),  # parent directory
    ("example.test", ".."),
    (".", "alice"),
    ("example.test", "."),
    ("", "alice"),  # empty
    ("example.test", ""),
    ("../etc", "passwd"),  # slash
    ("example.test", "../../etc"),
    ("example.test", "a/b"),
    ("/etc", "alice"),  # absolute
    ("example.test", "/root"),
    ("example.test", "a\\b"),  # backslash
    ("example.test", "al\x00ice"),  # NUL
    ("exa\x00mple.test", "alice"),
    ("example.test", "al\nice"),  # control characters
    ("example.test", "al\x7fice"),
    (".hidden", "alice"),  # leading dot
    ("example.test", ".alice"),
    ("example.test", "~alice"),  # leading tilde
    ("example.test", "a" * 256),  # too long for one directory name
]


@pytest.mark.parametrize(("domain", "local"), BAD_USERS)
def test_for_user_refuses_escapes(tmp_path: Path, domain: str, local: str) -> None:
    with pytest.raises(UnsafeName):
        Maildir.for_user(tmp_path, domain, local)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("domain", "local"),
    [("example.test", "alice"), ("xn--bcher-kva.example", "Jöhn.Doe+tag"), ("example.test", "a.b..c")],
)
def test_for_user_ok(tmp_path: Path, domain: str, local: str) -> None:
    md = Maildir.for_user(tmp_path, domain, local)
    assert md.root == tmp_path / domain / local


# Folder names refused (INTERFACES.md): empty components, '/', '\', NUL and control characters,
# '..', a leading '~', names longer than 255 bytes on disk.
BAD_FOLDERS = [
    "",
    ".",
    "..",
    ".Sent",  # leading dot = empty first component
    "Sent.",  # trailing separator
    "a..b",  # '..' / empty component
    "../x",
    "a/b",
    "/abs",
    "a\\b",
    "a\x00b",
    "a\tb",
    "a\x1bb",
    "~user",
    "x" * 255,  # '.' + 255 bytes > 255
    "日本語" * 40,  # > 255 bytes once encoded
]


@pytest.mark.parametrize("name", BAD_FOLDERS)
def test_bad_folder_names(maildir: Maildir, name: str) -> None:
    with pytest.raises(UnsafeName):
        validate_folder_name(name)
    with pytest.raises(UnsafeName):
        maildir.create_folder(name)
    with pytest.raises(UnsafeName):
        maildir.folder(name)
    assert maildir.has_folder(name) is False


@pytest.mark.parametrize(
    ("name", "canonical", "dirname"),
    [
        ("INBOX", "INBOX", None),
        ("inbox", "INBOX", None),
        ("Archive.2024", "Archive.2024", ".Archive.2024"),
        ("inbox.sub", "INBOX.sub", ".INBOX.sub"),
        ("Entwürfe", "Entwürfe", ".Entw&APw-rfe"),
        ("Tom & Jerry", "Tom & Jerry", ".Tom &- Jerry"),
        ("a~b", "a~b", ".a~b"),
    ],
)
def test_good_folder_names(name: str, canonical: str, dirname: str | None) -> None:
    assert validate_folder_name(name) == (canonical, dirname)


system_flags = st.sets(st.sampled_from(sorted(FLAG_TO_LETTER)))
keyword_letters = st.sets(st.sampled_from("abcdefghijklmnopqrstuvwxyz"))


@given(system_flags, keyword_letters, st.sets(st.sampled_from("P")))
def test_flag_letters_round_trip(flags: set[str], kws: set[str], unknown: set[str]) -> None:
    base = "1700000000.M1P2Q3.host,S=10,W=12"
    old = "".join(sorted(unknown))
    name = with_flags(base, old, flag_letters(flags), "".join(kws))
    got_base, letters = split_name(name)
    assert got_base == base
    assert letters is not None
    assert list(letters) == sorted(letters)  # Maildir: letters in ASCII order
    assert {LETTER_TO_FLAG[c] for c in letters if c in LETTER_TO_FLAG} == flags
    assert {c for c in letters if c.islower()} == kws
    assert unknown <= set(letters)  # unknown flags (P) survive a rewrite


@given(system_flags)
def test_flag_names_case_insensitive(flags: set[str]) -> None:
    assert flag_letters(f.lower() for f in flags) == flag_letters(f.upper() for f in flags) == flag_letters(flags)


def test_recent_is_never_stored() -> None:
    assert flag_letters(["\\Recent", "\\Seen"]) == "S"
    with pytest.raises(ValueError):
        flag_letters(["\\Bogus"])
