"""Imports point one way (docs/architecture.md): every module's imports, read with ``ast``.

``LAYERS`` is the order, lowest first. A module may import its own package and packages
of lower layers only: never one of a higher layer, never a sibling of the same layer
(the protocols do not import each other). Imports inside functions and under
``TYPE_CHECKING`` count too: a lazy import hides an upward arrow, it does not remove it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mailstack"

# Lowest first. A "unit" is mailstack itself (its __init__: the version), a top-level
# module (mailstack.net) or a top-level package (mailstack.smtp).
LAYERS: list[set[str]] = [
    {"mailstack", "mailstack.config", "mailstack.storage", "mailstack.replies", "mailstack.metrics"},  # values, files, counters
    {"mailstack.dns", "mailstack.maillog"},
    {"mailstack.mail"},  # message code over a resolver
    {"mailstack.sieve"},  # the Sieve grammar, interpreter (no I/O), script store, delivery adapter
    {"mailstack.spam"},  # the rspamd client and the learning queue: used by the MX and IMAP moves
    {"mailstack.directory", "mailstack.net"},
    {"mailstack.migrate"},  # import from other servers (storage + an IMAP client), used by the CLI
    {"mailstack.auth"},  # the one login path
    {"mailstack.queue"},  # the spool, its wake-ups, bounces: used by delivery and every protocol
    {"mailstack.delivery"},  # recipients -> Maildirs (remote targets -> the queue)
    {"mailstack.ops"},  # status checks and scrape-time gauges: used by cli and http
    {"mailstack.acme"},  # ACME certificates: the http service answers, serve renews, the CLI asks
    {"mailstack.service"},  # what a service gets from its runner
    {"mailstack.smtp", "mailstack.imap", "mailstack.pop3", "mailstack.http", "mailstack.managesieve"},  # the services
    {"mailstack.supervisor"},  # [server] workers: the processes that share the listeners
    {"mailstack.serve"},  # the runner
    {"mailstack.backup"},  # backup and restore: the directory's dump + every file the config names
    {"mailstack.cli"},
    {"mailstack.__main__"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import of ``mailstack`` code in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package of this module
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                # ``from mailstack import net`` imports mailstack.net, not mailstack
                yield node.lineno, sub if _is_module(sub) else target


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` that break the layer order, one line each."""
    own = unit_of(module)
    out = []
    for line, target in imports_of(source, module, is_package):
        if target != "mailstack" and not target.startswith("mailstack."):
            continue
        unit = unit_of(target)
        if unit == own:
            continue
        if own not in RANK or unit not in RANK:
            missing = own if own not in RANK else unit
            out.append(f"{module}:{line}: {missing} is in no layer of tests/test_imports.py LAYERS")
        elif unit == "mailstack" and target == "mailstack":
            continue  # the version
        elif RANK[unit] >= RANK[own]:
            kind = "a sibling" if RANK[unit] == RANK[own] else "a higher layer"
            out.append(f"{module}:{line}: imports {target} ({kind}: {unit} is not below {own})")
    return out


def all_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_import_points_down() -> None:
    found = []
    for path in all_modules():
        found += violations(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert found == []


def test_only_the_cli_imports_the_runner() -> None:
    importers = []
    for path in all_modules():
        name = module_name(path)
        targets = {t for _, t in imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")}
        if "mailstack.serve" in targets:
            importers.append(name)
    assert importers == ["mailstack.cli.serve"]


@pytest.mark.parametrize(("module", "source", "fragment"), [
    # a service importing its runner (what services did before mailstack.service)
    ("mailstack.smtp.mx", "from mailstack.serve import ServiceContext\n", "imports mailstack.serve (a higher layer"),
    # ... even lazily, or only for type checking
    ("mailstack.imap.server", "def f():\n    from mailstack import serve\n", "imports mailstack.serve"),
    ("mailstack.pop3.server", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mailstack.serve\n",
     "imports mailstack.serve"),
    # delivery importing a protocol, a protocol importing another one
    ("mailstack.delivery", "from mailstack.smtp import replies as R\n", "imports mailstack.smtp.replies (a higher layer"),
    ("mailstack.imap.server", "from mailstack.pop3.core import x\n", "(a sibling: mailstack.pop3"),
    # the queue importing a protocol or delivery; storage importing anything above it
    ("mailstack.queue.store", "from mailstack.smtp.outbound import Job\n", "a higher layer"),
    ("mailstack.queue.bounce", "from mailstack.delivery import header_block\n", "a higher layer"),
    ("mailstack.storage.maildir", "from ..directory import Directory\n", "imports mailstack.directory"),
    ("mailstack.newthing", "import os\nfrom mailstack import net\n", "mailstack.newthing is in no layer"),
])
def test_an_upward_import_is_caught(module: str, source: str, fragment: str) -> None:
    (found,) = violations(source, module)
    assert fragment in found


@pytest.mark.parametrize(("module", "source"), [
    ("mailstack.smtp.mx", "from mailstack import maillog, net\nfrom mailstack.service import ServiceContext\n"),
    ("mailstack.smtp.mx", "from mailstack.smtp.server import BaseSMTP\nfrom mailstack.queue import QueueStore\n"),
    ("mailstack.storage.folder", "from .maildir import Maildir\nfrom mailstack import __version__\n"),
    ("mailstack.cli.serve", "from mailstack.serve import run\n"),
])
def test_a_downward_import_passes(module: str, source: str) -> None:
    assert violations(source, module) == []
