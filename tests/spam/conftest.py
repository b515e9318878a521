"""Spam fixtures: one real rspamd + redis-server for the session (``rspamd``), and the MX of
tests/smtp configured to scan through it (``spam_mx``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.smtp.conftest import MXServer, make_server
from tests.spam.rspamd_peer import Rspamd, start_rspamd


@pytest.fixture(scope="session")
def rspamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rspamd]:
    peer = start_rspamd(tmp_path_factory.mktemp("rspamd"))
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def spam_mx(tmp_path: Path, rspamd: Rspamd) -> Iterator[Any]:
    """``spam_mx(**spam)``: an MX scanning with ``[spam]`` (rspamd_url = the test rspamd unless
    given); ``[checks]`` off and no ignored networks, so mail from loopback is 'from outside'."""
    made: list[MXServer] = []

    def factory(checks: dict[str, Any] | None = None, **spam: Any) -> MXServer:
        s = make_server(tmp_path / str(len(made)), spam={"rspamd_url": rspamd.url, **spam},
                        checks=checks or {"enabled": False, "ignore_networks": []})
        made.append(s)
        return s

    try:
        yield factory
    finally:
        for s in made:
            s.close()
