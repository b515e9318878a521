"""Maildir++ storage shared by the LMTP delivery agent, IMAP and POP3.

No protocol and no database here: only files laid out exactly as Dovecot lays them
out (`mail_location = maildir:<root>/%d/%n`), so either server can take over the
other's mail. All durable writes go through `safeio`.

Public API (docs/INTERFACES.md, section `mailstack.storage`)::

    Maildir.for_user(root, domain, local) / Maildir(root)
        .ensure() .deliver(data, folder=None) -> filename
        .has_folder(name) .folder(name) -> Folder .list_folders()
        .create_folder(name) .delete_folder(name) .rename_folder(old, new)
        .subscribe(name) .unsubscribe(name) .list_subscriptions()
        .quota_usage() .quota_check(extra_bytes, limit_bytes, limit_count=None)
        .recalculate_quota(limit_bytes=None, limit_count=None)
    Folder.sync() -> FolderState(uidvalidity, uidnext, messages)
        .read(uid) .open_path(uid) .set_flags(uid, flags, keywords=None)
        .update_flags(uid, add=, remove=, replace=, add_keywords=, remove_keywords=, replace_keywords=)
        .expunge(uids) .append(data, flags, internaldate, keywords)
        .copy_to(uids, other) .move_to(uids, other)
"""

from .errors import (
    CorruptFile,
    FolderExists,
    FolderNotFound,
    LockTimeout,
    MessageNotFound,
    QuotaExceeded,
    StorageError,
    TooManyKeywords,
    UnsafeName,
)
from .filename import SYSTEM_FLAGS
from .folder import Folder, FolderState, MessageInfo
from .maildir import Maildir, validate_folder_name
from .safeio import create_exclusive, fsync_dir, write_durable

__all__ = [
    "Maildir",
    "Folder",
    "FolderState",
    "MessageInfo",
    "SYSTEM_FLAGS",
    "validate_folder_name",
    "write_durable",
    "fsync_dir",
    "create_exclusive",
    "StorageError",
    "UnsafeName",
    "QuotaExceeded",
    "FolderNotFound",
    "FolderExists",
    "MessageNotFound",
    "LockTimeout",
    "TooManyKeywords",
    "CorruptFile",
]
