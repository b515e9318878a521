"""Fixtures for status and metrics: ``mailstack serve`` as its own process (its counters
start at zero), on free loopback ports, with alice and bob in its directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.auth.conftest import serve_config
from tests.helpers import free_port, wait_listening


def ports_for(*services: str) -> dict[str, int]:
    return {name: free_port() for name in services}


def write_config(tmp_path: Path, ports: dict[str, int], http: str = "", extra: str = "") -> Path:
    """serve_config's file with ``[http]`` on ``ports["http"]`` (plus the ``http`` lines given)
    and ``extra`` (whole sections that serve_config does not write) at the end."""
    others = {k: v for k, v in ports.items() if k != "http"}
    conf = serve_config(tmp_path, others)
    with conf.open("a") as f:
        if "http" in ports:
            f.write(f'[http]\nlisten = ["127.0.0.1:{ports["http"]}"]\n{http}')
        f.write(extra)
    return conf


@contextmanager
def running(conf: Path, ports: dict[str, int], services: tuple[str, ...] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``mailstack serve SERVICE...`` (default: those of ``ports``; ``queue`` has no port), stopped
    at the end; its log (the mail log included) goes to ``serve.log`` in the test's folder."""
    names = services if services is not None else tuple(ports)
    env = {**os.environ, "MAILSTACK_STOP_GRACE": "1"}
    env.pop("JOURNAL_STREAM", None)
    with (conf.parent.parent / "serve.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(conf), "serve", *names],
                                env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        for name in names:
            if name in ports:
                wait_listening(ports[name], proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
