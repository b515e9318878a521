"""Callbacks after a message is durably stored (``Maildir.deliver``, ``Folder.append``),
and after a folder changed otherwise (flags renamed, messages expunged or copied in).

Storage knows nothing of what is built over it; a layer above registers a hook here (the
runner registers the full-text indexer, ``imap.fts.Indexer``, so that mail is indexed at
delivery as with Dovecot's ``fts_autoindex``). A hook gets ``(folder directory, base name,
the bytes as stored)`` and must return at once (hand the work to its own thread): it runs in
the delivering thread, after the fsync and before the 250. It can never fail a delivery:
every exception is logged and dropped.

A change hook (``add_change``) gets the folder directory after ``Folder.update_flags``
renamed a file, ``Folder.expunge`` removed some and ``Folder.copy_to`` put copies in the
target (the runner registers ``directory.mailbus``, which tells the other hosts so that
their IDLE sessions hear of it). Same rules: return at once, never fail the change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

__all__ = ["ChangeHook", "Hook", "add", "add_change", "changed", "remove", "remove_change", "stored"]

log = logging.getLogger(__name__)

Hook = Callable[[Path, str, bytes], None]
ChangeHook = Callable[[Path], None]
_HOOKS: list[Hook] = []
_CHANGE_HOOKS: list[ChangeHook] = []


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


def add_change(hook: ChangeHook) -> None:
    if hook not in _CHANGE_HOOKS:
        _CHANGE_HOOKS.append(hook)


def remove_change(hook: ChangeHook) -> None:
    if hook in _CHANGE_HOOKS:
        _CHANGE_HOOKS.remove(hook)


def changed(folder_dir: Path) -> None:
    """Tell every change hook; never raises."""
    for hook in list(_CHANGE_HOOKS):
        try:
            hook(folder_dir)
        except Exception:  # a hook must never fail a change that is on disk
            log.exception("storage: a folder-change hook failed")
