"""Errors of the directory: each `str()` is one line fit for the CLI and the logs.

`DirectoryUnavailable` means "try again later" (servers answer 4xx / `[SYS/TEMP]`);
every other `DirectoryError` is a permanent refusal of the request as given.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "Conflict",
    "DirectoryError",
    "DirectoryUnavailable",
    "Invalid",
    "NotFound",
]


class DirectoryError(Exception):
    """Base class; `str()` is one line."""

    def __str__(self) -> str:
        text = super().__str__()
        return " ".join(text.split()) or type(self).__name__


class NotFound(DirectoryError):
    """No such domain, user or alias."""


class AlreadyExists(DirectoryError):
    """The domain, user or alias (target) exists already."""


class Invalid(DirectoryError):
    """Malformed input: an address, a domain, a quota, a password or a password hash."""


class Conflict(DirectoryError):
    """The request contradicts the current state (e.g. removing a domain that still has users)."""


class DirectoryUnavailable(DirectoryError):
    """The database cannot be reached or used right now; a temporary failure."""
