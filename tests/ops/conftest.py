"""Fixtures for status and metrics: ``mailstack serve`` as its own process (its counters
start at zero), on free loopback ports, with alice and bob in its directory."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.auth.conftest import serve_config, serve_process
from tests.helpers import free_port


def ports_for(*services: str) -> dict[str, int]:
    return {name: free_port() for name in services}


def write_config(tmp_path: Path, ports: dict[str, int], http: str = "") -> Path:
    """serve_config's file with ``[http]`` on ``ports["http"]`` (plus the ``http`` lines given)."""
    others = {k: v for k, v in ports.items() if k != "http"}
    conf = serve_config(tmp_path, others)
    if "http" in ports:
        with conf.open("a") as f:
            f.write(f'[http]\nlisten = ["127.0.0.1:{ports["http"]}"]\n{http}')
    return conf


@contextmanager
def running(conf: Path, ports: dict[str, int], services: tuple[str, ...] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``mailstack serve`` with ``services`` (default: those of ``ports``), stopped at the end;
    its log (the mail log included) goes to ``serve.log`` beside the config's folder."""
    names = services if services is not None else tuple(ports)
    log = (conf.parent.parent / "serve.log").open("ab")
    try:
        proc = serve_process(conf, {name: ports[name] for name in names if name in ports}, stderr=log)
    except BaseException:
        log.close()
        raise
    try:
        yield proc
    finally:
        log.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
