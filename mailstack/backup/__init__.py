"""Backup and restore of a whole installation (`mailstack backup DEST`, `restore SRC`).

- `snapshot`: one consistent, incremental snapshot while the servers run;
- `maildirs`: copying live Maildirs and the queue without locking them;
- `writer`: copy-or-hard-link of each file, with its SHA-256, into a snapshot;
- `manifest`: ``MANIFEST.json``, which checks every file and itself;
- `restore`: verify everything, then write where the restoring config says;
- `areas`: the one table of what is backed up and where it lives.

The directory database is dumped through `mailstack.directory.dump` (SQLite's online
backup API, or pg_dump/pg_restore). Synchronous: the CLI calls it directly.
"""

from .manifest import Manifest, ManifestError
from .restore import RestoreResult, find_snapshot, occupied, restore, verify
from .snapshot import BackupResult, backup, latest, snapshots
from .writer import BackupError

__all__ = ["BackupError", "BackupResult", "Manifest", "ManifestError", "RestoreResult", "backup", "find_snapshot",
           "latest", "occupied", "restore", "snapshots", "verify"]
