"""Shared test helpers: tools that must exist under CI, free ports, temp configs."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """Return the path of an external tool; under CI=true a missing tool is a failure, not a skip."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/lib/postgresql/15/bin/{name}") if os.path.exists(p)), None
    )
    if path:
        return path
    if IN_CI:
        pytest.fail(f"{name} is required under CI=true; .ci/run must install it")
    pytest.skip(f"{name} not installed")
    raise AssertionError("unreachable")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def require_root(why: str) -> None:
    """Some peers (a private Postfix or Dovecot) must start as root: under CI=true (root) this
    never skips; elsewhere a non-root run skips with the reason."""
    if os.geteuid() == 0:
        return
    if IN_CI:
        pytest.fail(f"{why}; CI runs as root")
    pytest.skip(why)
