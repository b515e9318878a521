"""What the copier reports while it works (`imapcopy`); the CLI draws it on stderr.

Kept apart from the copier so that the CLI can subclass it without importing aioimaplib
for every command.
"""

from __future__ import annotations

__all__ = ["Progress"]


class Progress:
    """What the copier reports; the CLI draws it. Does nothing by default."""

    def folder(self, name: str, total: int, done: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def finish(self) -> None:
        pass
