"""What every CLI noun shares: the lazily opened config and directory, output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mailstack.config import Config, find_config_path, load_config

if TYPE_CHECKING:
    from mailstack.directory import Directory

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CLIError(Exception):
    """A refusal with its exit status; ``str()`` is the one line the admin sees."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Context:
    """Opened on first use, closed by main()."""

    config_arg: str | None
    _config: Config | None = None
    _directory: "Directory | None" = None
    _closers: list[Any] = field(default_factory=list)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(find_config_path(self.config_arg))
        return self._config

    @property
    def directory(self) -> "Directory":
        if self._directory is None:
            config = self.config  # a config error is reported before anything else
            from mailstack.directory import Directory

            d = Directory.from_config(config)
            d.migrate()  # idempotent: an admin may add users before the first `serve`
            self._directory = d
        return self._directory

    def close(self) -> None:
        if self._directory is not None:
            self._directory.close()
            self._directory = None


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None


def print_json(rows: Any) -> None:
    json.dump(rows, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Plain aligned columns; empty cells as '-'."""
    text_rows = [[("-" if v is None or v == "" else str(v)) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text_rows]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()
    print(line)
    for r in text_rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def format_size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit, size in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)
