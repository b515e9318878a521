"""Fixtures for the storage tests: a fresh Maildir under a temporary root."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailstack.storage import Maildir


@pytest.fixture
def maildir(tmp_path: Path) -> Maildir:
    md = Maildir.for_user(tmp_path / "mailboxes", "example.test", "alice")
    md.ensure()
    return md
