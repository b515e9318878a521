"""Copying live Maildirs (and the queue) into a snapshot while servers change them.

Nothing here writes to the live store: no lock is taken, no uidlist is synced. The
order of reads inside each Maildir++ folder is what keeps the copy consistent:

1. ``dovecot-uidlist`` first (and the other small files): every message it names that
   is still there is found by step 2, so it keeps its UID, and a message that arrives
   later is newer than the copied uidlist and simply gets the next UID after a restore;
2. ``new/`` then ``cur/`` (a message moved from ``new/`` to ``cur/`` between the two
   listings is in the second one), each listed until the folder's mtime holds still
   (as ``storage.folder._scan_cur`` does). A base name the copied uidlist knows but the
   listings lack is looked for again: a rename (flag change) while readdir ran may hide
   an entry from one listing; it is dropped only when fresh listings agree it is gone
   (expunged). A file renamed between the listing and its copy is found again by its
   base name in a fresh listing, never skipped as if it were expunged;
3. ``dovecot-keywords`` last: any keyword letter in a copied file name was written to
   it before the rename that used it.

``tmp/`` is made empty (its files are not acknowledged mail); rebuildable caches and
locks (`SKIP_NAMES`) are left out, but ``mailstack-modseq`` is kept: a rebuilt index
starts its MODSEQs above it (imap/index.py), so clients never see them go backwards.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from mailstack.storage.filename import split_name
from mailstack.storage.uidlist import KEYWORDS_NAME, UIDLIST_NAME, parse_uidlist

from .writer import Writer

__all__ = ["copy_maildirs", "copy_queue", "copy_tree", "SKIP_NAMES", "list_messages"]

log = logging.getLogger(__name__)

# Rebuildable caches and transient locks: never in a backup.
SKIP_NAMES = frozenset({
    "mailstack-index.sqlite", "mailstack-index.sqlite-wal", "mailstack-index.sqlite-shm",
    "mailstack-index.sqlite-journal", "dovecot-uidlist.lock", "mailstack-pop3.lock",
})
LIST_RETRIES = 5  # listings of one folder until its mtime holds still
RENAME_RETRIES = 10  # fresh listings before a message that vanished is taken as expunged


def _skip(name: str) -> bool:
    # write_durable's temp files (".<name>.<pid>.<hex>.tmp") are not written yet
    return name in SKIP_NAMES or (name.startswith(".") and name.endswith(".tmp"))


def _list_stable(path: Path) -> list[str]:
    names: list[str] = []
    for _ in range(LIST_RETRIES):
        try:
            before = os.stat(path).st_mtime_ns
            names = os.listdir(path)
            if os.stat(path).st_mtime_ns == before:
                break
        except FileNotFoundError:
            return []
    return [n for n in names if not n.startswith(".")]


def list_messages(folder: Path) -> dict[str, tuple[str, str]]:
    """base name -> (``new`` | ``cur``, file name); ``new/`` listed first, ``cur/`` wins."""
    found: dict[str, tuple[str, str]] = {}
    for sub in ("new", "cur"):
        for name in _list_stable(folder / sub):
            found[split_name(name)[0]] = (sub, name)
    return found


def copy_maildirs(root: Path, writer: Writer, area: str = "maildirs") -> None:
    """Copy the tree of every Maildir++ under ``root`` into ``area``."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        writer.mkdir(area)
        return
    writer.mkdir(area, st.st_mode)
    _walk(root, area, writer)


def _walk(directory: Path, rel: str, writer: Writer) -> None:
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return  # removed while we walked (a folder deleted, a user purged)
    is_folder = "cur" in names and "new" in names
    if is_folder:
        _copy_folder(directory, rel, names, writer)
        names = [n for n in names if n not in ("cur", "new", "tmp", UIDLIST_NAME, KEYWORDS_NAME)]
    for name in names:
        if _skip(name):
            continue
        path = directory / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        child = f"{rel}/{name}"
        if stat.S_ISLNK(st.st_mode):
            writer.symlink(child, os.readlink(path))  # Pigeonhole's .dovecot.sieve
        elif stat.S_ISDIR(st.st_mode):
            writer.mkdir(child, st.st_mode)
            _walk(path, child, writer)
        elif not is_folder:
            writer.copy_file(path, child)


def _copy_folder(folder: Path, rel: str, names: list[str], writer: Writer) -> None:
    """One Maildir++ folder in the order of the module docstring."""
    known: set[str] = set()
    if UIDLIST_NAME in names and writer.copy_file(folder / UIDLIST_NAME, f"{rel}/{UIDLIST_NAME}"):
        copied = writer.path(f"{rel}/{UIDLIST_NAME}")
        if copied.exists():
            ul = parse_uidlist(copied.read_bytes())
            known = {r.base for r in ul.records} if ul is not None else set()
    for name in names:  # the other plain files: subscriptions, maildirsize, mailstack-modseq, ...
        if name in (UIDLIST_NAME, KEYWORDS_NAME) or _skip(name):
            continue
        path = folder / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            writer.copy_file(path, f"{rel}/{name}")
    for sub in ("new", "cur", "tmp"):
        try:
            mode = os.stat(folder / sub).st_mode
        except FileNotFoundError:
            mode = 0o700
        writer.mkdir(f"{rel}/{sub}", mode)
    messages = list_messages(folder)
    missing = known - messages.keys()
    for _ in range(RENAME_RETRIES if missing else 0):
        again = list_messages(folder)
        found = {b: again[b] for b in missing if b in again}
        if not found:
            break
        messages.update(found)
        missing -= found.keys()
    for base in sorted(messages):
        _copy_message(folder, rel, base, messages[base], writer)
    if KEYWORDS_NAME in names:
        writer.copy_file(folder / KEYWORDS_NAME, f"{rel}/{KEYWORDS_NAME}")


def _copy_message(folder: Path, rel: str, base: str, where: tuple[str, str], writer: Writer) -> None:
    for _ in range(RENAME_RETRIES):
        sub, name = where
        if writer.copy_file(folder / sub / name, f"{rel}/{sub}/{name}", message_folder=rel):
            return
        # Renamed (a flag change, or new/ -> cur/) since it was listed: not an expunge.
        current = list_messages(folder).get(base)
        if current is None:
            return  # expunged meanwhile
        where = current
    log.warning("%s: message %s kept changing its name; it is not in this backup", folder, base)


def copy_queue(qdir: Path, writer: Writer, area: str = "queue") -> int:
    """The queued messages: each ``<id>.msg`` with its ``<id>.env`` (the envelope last,
    as the queue writes them); one that leaves the queue meanwhile is left out. Returns
    how many were copied. Temp files, locks and ``.wake`` are not part of the queue."""
    try:
        st = os.stat(qdir)
    except FileNotFoundError:
        writer.mkdir(area)
        return 0
    writer.mkdir(area, st.st_mode)
    count = 0
    for name in sorted(os.listdir(qdir)):
        if name.startswith(".") or not name.endswith(".env"):
            continue
        qid = name[: -len(".env")]
        msg = f"{area}/{qid}.msg"
        if not writer.copy_file(qdir / f"{qid}.msg", msg):
            continue  # delivered and removed since the listing
        if not writer.copy_file(qdir / name, f"{area}/{name}"):
            writer.drop(msg)  # removed (delivered) between the two copies
            continue
        count += 1
    return count


def copy_tree(src: Path, writer: Writer, area: str) -> None:
    """A plain tree (the DKIM keys): folders, regular files and symlinks."""
    try:
        st = os.stat(src)
    except FileNotFoundError:
        return
    writer.mkdir(area, st.st_mode)
    for name in sorted(os.listdir(src)):
        if _skip(name):
            continue
        path = src / name
        try:
            pst = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(pst.st_mode):
            writer.symlink(f"{area}/{name}", os.readlink(path))
        elif stat.S_ISDIR(pst.st_mode):
            copy_tree(path, writer, f"{area}/{name}")
        else:
            writer.copy_file(path, f"{area}/{name}")
