"""Shared test helpers: tools that must exist under CI, free ports, temp configs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")


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


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    """Wait until something accepts on 127.0.0.1:``port``; if ``proc`` (the server) ends or
    ``timeout`` passes first, kill it and fail with what it wrote on stderr."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                detail = ""
                if proc is not None:
                    if proc.poll() is None:
                        proc.kill()
                    err = proc.communicate(timeout=10)[1]
                    detail = err.decode("utf-8", "replace") if err else ""
                raise AssertionError(f"nothing listens on 127.0.0.1:{port}: {detail}") from None
            time.sleep(0.1)


def require_root(why: str) -> None:
    """Some peers (a private Postfix or Dovecot) must start as root: under CI=true (root) this
    never skips; elsewhere a non-root run skips with the reason."""
    if os.geteuid() == 0:
        return
    if IN_CI:
        pytest.fail(f"{why}; CI runs as root")
    pytest.skip(why)


def require_ipv6_loopback() -> None:
    """::1 must be bindable: under CI=true its absence fails the test instead of skipping it."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return
    except OSError:
        pass
    if IN_CI:
        pytest.fail("no IPv6 loopback (::1) on this CI machine")
    pytest.skip("no IPv6 loopback on this host")


@contextlib.contextmanager
def running_service(start: Callable[[Any], Awaitable[Any]], config: Any, directory: Any,
                    limits: Any) -> Iterator[tuple[asyncio.AbstractEventLoop, Any]]:
    """A real service (``start(ctx)`` of mailstack.<service>.server) on its own event loop in
    a thread, with the config's certificate made if missing; stopped (bounded) on exit."""
    from mailstack import net
    from mailstack.service import ServiceContext

    net.ensure_certificate(config.tls, config.hostname)
    tls = net.load_tls_contexts(config.tls)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="service-test-loop", daemon=True)
    thread.start()
    ctx = ServiceContext(config=config, directory=directory, tls=tls, limits=limits)
    service = asyncio.run_coroutine_threadsafe(start(ctx), loop).result(10)
    try:
        yield loop, service
    finally:
        asyncio.run_coroutine_threadsafe(service.stop(1.0), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
