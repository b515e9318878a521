"""What an import already copied: one row per source message, in the user's Maildir.

`<maildir>/mailstack-import.sqlite` (mode 0600, beside Dovecot's and mailstack's other
files, so it moves with the mail). A row says: from this source account
(`login@host:port`), this folder (its raw name on the source), this UIDVALIDITY and UID,
a message with this fingerprint (Message-ID, INTERNALDATE in seconds, RFC822.SIZE) is in
the local folder. A second run skips those UIDs without fetching them (RFC 3501 §2.3.1.1:
UID + UIDVALIDITY name one message for good).

The row is written right after the message is in the Maildir; a crash between the two
leaves a message without its row, which the copier finds by fingerprint next time
(`fingerprint_counts`), so nothing is copied twice. WAL, one commit per message (a rollback
journal on a file system several hosts share: `storage.fstype`).
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mailstack.storage import fstype
from mailstack.storage.errors import StorageError

__all__ = ["Fingerprint", "ImportState", "STATE_FILE"]

STATE_FILE = "mailstack-import.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS copied (
    source TEXT NOT NULL,
    folder BLOB NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    internaldate INTEGER NOT NULL,
    size INTEGER NOT NULL,
    local_uid INTEGER,
    PRIMARY KEY (source, folder, uidvalidity, uid)
)
"""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What tells one message from another across servers, without its bytes."""

    message_id: str
    internaldate: int  # seconds since the epoch
    size: int  # RFC822.SIZE (CRLF line ends)


class ImportState:
    """The state file of one user's Maildir; a context manager."""

    def __init__(self, maildir_root: Path) -> None:
        path = maildir_root / STATE_FILE
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None,
                                   check_same_thread=False)
        if not fstype.open_sqlite_mode(self._db, path):  # WAL on a local disk; no WAL where hosts share the file
            self._db.close()
            raise StorageError(f"{path} is in use in WAL mode (by an import on another host?); try again later")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def __enter__(self) -> ImportState:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def copied_uids(self, source: str, folder: bytes, uidvalidity: int) -> set[int]:
        rows = self._db.execute("SELECT uid FROM copied WHERE source=? AND folder=? AND uidvalidity=?",
                                (source, folder, uidvalidity))
        return {int(r[0]) for r in rows}

    def fingerprint_counts(self, source: str, folder: bytes, uidvalidity: int) -> Counter[Fingerprint]:
        rows = self._db.execute(
            "SELECT message_id, internaldate, size FROM copied WHERE source=? AND folder=? AND uidvalidity=?",
            (source, folder, uidvalidity))
        return Counter(Fingerprint(str(m), int(d), int(s)) for m, d, s in rows)

    def record(self, source: str, folder: bytes, uidvalidity: int, uid: int, fp: Fingerprint,
               local_uid: int | None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO copied VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (source, folder, uidvalidity, uid, fp.message_id, fp.internaldate, fp.size, local_uid))
