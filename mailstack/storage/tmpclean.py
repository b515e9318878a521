"""Removing what crashed writers left in a Maildir folder's `tmp/` (and in other spools).

A writer killed between "create in tmp/" and "rename into new/ or cur/" (kill -9, power
loss) leaves a file in `tmp/` that nothing else will ever look at. The Maildir rule
(cr.yp.to/proto/maildir.html) is to delete what has not been accessed for 36 hours,
and Dovecot does it when it opens a folder, at most every 8 hours per folder, using
`tmp/`'s own atime as the "last scanned" mark (it sets it after each scan). We do the
same, so either server keeps the other's folders clean.

Invariants:
- Only entries directly in the given directory are looked at, with lstat: a symlink is
  never followed nor removed, nor is anything outside that directory touched.
- A file is removed only if it is a regular file with one link whose atime AND mtime
  are both older than the limit. One link: a COPY hard-links an old message into the
  target's `tmp/` before renaming it into `cur/`; that link shares the message's old
  times, and it must not vanish under the copier (nlink is 2 while the original is in
  `cur/`). Writers that give a file an old mtime on purpose (APPEND with an old
  INTERNALDATE) leave its atime at "now", so it is not stale either.
- Besides files, only our own folder-trash directories (`.deleted.*`, left when a
  DELETE died half-way) are removed, with `shutil.rmtree`, which does not follow
  symlinks. Other directories are left alone, as Dovecot does.
- A scan never fails the caller: errors are logged and the open/delivery goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from pathlib import Path

__all__ = ["TMP_MAX_AGE", "TMP_SCAN_INTERVAL", "TRASH_PREFIX", "clean_dir", "maybe_clean_tmp"]

log = logging.getLogger(__name__)

TMP_MAX_AGE = 36 * 3600.0  # Maildir spec and Dovecot's MAILDIR_TMP_DELETE_SECS
TMP_SCAN_INTERVAL = 8 * 3600.0  # Dovecot's MAILDIR_TMP_SCAN_SECS: how often one folder's tmp/ is scanned
TRASH_PREFIX = ".deleted."  # Maildir.delete_folder renames a folder to tmp/.deleted.<hex> first


def is_stale(st: os.stat_result, limit: float) -> bool:
    """A regular, singly linked file neither modified nor accessed since ``limit``."""
    return (stat.S_ISREG(st.st_mode) and st.st_nlink == 1
            and st.st_mtime < limit and st.st_atime < limit)


def clean_dir(directory: Path, max_age: float = TMP_MAX_AGE, now: float | None = None,
              trash_prefix: str | None = TRASH_PREFIX) -> int:
    """Remove stale files (and stale trash dirs) directly in ``directory``; how many went."""
    limit = (time.time() if now is None else now) - max_age
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            if is_stale(st, limit):
                os.unlink(entry.path)
            elif (trash_prefix and entry.name.startswith(trash_prefix) and stat.S_ISDIR(st.st_mode)
                  and st.st_mtime < limit):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                continue
        except FileNotFoundError:
            continue  # someone renamed or removed it meanwhile: not ours to worry about
        removed += 1
        log.info("removed stale %s (left by a writer that died)", entry.path)
    return removed


def maybe_clean_tmp(tmp: Path, now: float | None = None) -> int:
    """Scan ``tmp`` if its last scan (its atime) is older than TMP_SCAN_INTERVAL.

    After a scan tmp/'s atime is set to now (its mtime kept), the mark the next open
    looks at, in this process, another one, or Dovecot. Never raises.
    """
    t = time.time() if now is None else now
    try:
        st = os.stat(tmp)
        if not stat.S_ISDIR(st.st_mode) or st.st_atime >= t - TMP_SCAN_INTERVAL:
            return 0
        removed = clean_dir(tmp, now=t)
        os.utime(tmp, ns=(int(t * 1e9), os.stat(tmp).st_mtime_ns))
        return removed
    except FileNotFoundError:
        return 0
    except OSError as e:
        log.warning("cannot clean %s: %s", tmp, e.strerror or e)
        return 0
