"""Callbacks after a message is durably stored (``Maildir.deliver``, ``Folder.append``).

Storage knows nothing of what is built over it; a layer above registers a hook here (the
runner registers the full-text indexer, ``imap.fts.Indexer``, so that mail is indexed at
delivery as with Dovecot's ``fts_autoindex``). A hook gets ``(folder directory, base name,
the bytes as stored)`` and must return at once (hand the work to its own thread): it runs in
the delivering thread, after the fsync and before the 250. It can never fail a delivery:
every exception is logged and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

__all__ = ["Hook", "add", "remove", "stored"]

log = logging.getLogger(__name__)

Hook = Callable[[Path, str, bytes], None]
_HOOKS: list[Hook] = []


def add(hook: Hook) -> None:
    if hook not in _HOOKS:
        _HOOKS.append(hook)


def remove(hook: Hook) -> None:
    if hook in _HOOKS:
        _HOOKS.remove(hook)


def stored(folder_dir: Path, base: str, data: bytes) -> None:
    """Tell every hook; never raises."""
    for hook in list(_HOOKS):
        try:
            hook(folder_dir, base, data)
        except Exception:  # a hook must never fail a delivery that is on disk
            log.exception("storage: a stored-message hook failed")
