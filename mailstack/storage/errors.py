"""Errors raised by mailstack.storage.

Every error is a `StorageError`, so a server can turn any of them into one
temporary failure (4xx / `[SERVERBUG]`) while still catching the few that have a
specific protocol meaning (`QuotaExceeded` -> 552 / `[OVERQUOTA]`,
`FolderNotFound` -> `[NONEXISTENT]`, ...). `str()` is always one line.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every storage failure."""


class UnsafeName(StorageError, ValueError):
    """A domain, local part or folder name that is invalid or would leave the Maildir root."""


class QuotaExceeded(StorageError):
    """Storing the message would take the mailbox over its quota."""


class FolderNotFound(StorageError):
    """The named folder does not exist."""


class FolderExists(StorageError):
    """The folder to create (or rename to) already exists."""


class MessageNotFound(StorageError):
    """The UID is not (or no longer) in the folder: expunged by another session."""


class LockTimeout(StorageError):
    """The `dovecot-uidlist.lock` dotlock could not be taken in time."""


class TooManyKeywords(StorageError):
    """Maildir can hold at most 26 keywords per folder (letters a-z)."""


class CorruptFile(StorageError):
    """A control file (uidlist, keywords, maildirsize) could not be parsed."""
