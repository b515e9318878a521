"""`mailstack serve` runs the `managesieve` service: by name, and with no names when
`[sieve] managesieve_listen` has a listener (and not when it is empty)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from mailstack.config import load_config
from mailstack.serve import enabled_services, registry
from tests.helpers import free_port, wait_listening

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, sieve_port: int | None) -> Path:
    listen = f'["127.0.0.1:{sieve_port}"]' if sieve_port else "[]"
    p = tmp_path / "mailstack.toml"
    p.write_text(f"""hostname = "mx.example.test"
[database]
url = "sqlite:///var/mailstack.db"
[storage]
maildir_root = "mailboxes"
[tls]
cert_file = "var/tls/cert.pem"
key_file = "var/tls/key.pem"
[queue]
dir = "var/queue"
[sieve]
managesieve_listen = {listen}
""")
    return p


def test_enabled_only_with_a_listener(tmp_path: Path) -> None:
    on = load_config(write_config(tmp_path, 4190))
    assert "managesieve" in enabled_services(on, registry())
    off = load_config(write_config(tmp_path, None))
    assert "managesieve" not in enabled_services(off, registry())


def test_serve_with_no_names_answers_managesieve(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSTACK_")} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(config), "serve"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            data = b""
            while not data.endswith(b"ready.\"\r\n"):
                chunk = s.recv(4096)
                assert chunk, data
                data += chunk
            assert data.startswith(b'"IMPLEMENTATION" "mailstack"\r\n') and b'"STARTTLS"' in data
            s.sendall(b"LOGOUT\r\n")
            assert s.recv(4096) == b'OK "Logout completed."\r\n'
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
