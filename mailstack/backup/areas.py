"""What a backup holds and where each part lives, as a config says.

One table, used both ways: `backup` reads each area from the running server's config,
`restore` writes it where the config given to *restore* says (so a backup moves to a
host with other paths). The directory database is not an area: it is dumped by its
own tool (`directory.dump`) into ``database/``.

| area | from / to | what |
| --- | --- | --- |
| ``maildirs`` | ``[storage] maildir_root`` | every Maildir++ (mail, uidlists, keywords, subscriptions, quota, sieve scripts) |
| ``queue`` | ``[queue] dir`` | the queued messages (``<id>.msg`` + ``<id>.env`` pairs) |
| ``dkim`` | ``[queue] dkim_dir`` | the DKIM signing keys |
| ``tls/cert.pem``, ``tls/key.pem`` | ``[tls] cert_file``, ``key_file`` | the certificate and its key (also what an ACME client renewed) |
| ``acme/account.key`` | ``[acme] dir`` | the ACME account key, when there is one (challenges and the lock are not kept) |
| ``tls-certs`` | ``<folder of [tls] cert_file>/certs`` | one certificate and key per hostname, chosen by SNI (what ACME installed) |
| ``config/<name>`` | the config file | restored *beside* the target's config as ``<name>.from-backup``, never over it |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mailstack import net
from mailstack.config import Config

__all__ = ["Area", "areas", "config_area", "FROM_BACKUP_SUFFIX"]

FROM_BACKUP_SUFFIX = ".from-backup"


@dataclass(frozen=True)
class Area:
    name: str  # its path inside a snapshot
    path: Path  # where it lives, per the config
    kind: Literal["maildirs", "queue", "tree", "file"]


def areas(config: Config) -> tuple[Area, ...]:
    """The areas in backup order: the queue before the Maildirs, so that a message the
    queue runner delivers locally while the backup runs is in one or the other, never in
    neither (at worst in both: delivered twice after a restore, never lost)."""
    return (
        Area("queue", config.queue.dir, "queue"),
        Area("maildirs", config.storage.maildir_root, "maildirs"),
        Area("dkim", config.queue.dkim_dir, "tree"),
        Area("tls/cert.pem", config.tls.cert_file, "file"),
        Area("tls/key.pem", config.tls.key_file, "file"),
        Area("acme/account.key", config.acme.dir / "account.key", "file"),  # absent without [acme]
        Area("tls-certs", net.certificate_dir(config.tls), "tree"),  # a top-level name: restore maps by it
    )


def config_area(config: Config) -> Area | None:
    """The config file itself (None for a config that came from no file)."""
    if config.path is None:
        return None
    return Area(f"config/{config.path.name}", config.path, "file")
