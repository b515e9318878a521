"""The documentation keeps up with the code: every config key has its row in
docs/configuration.md (and no row names a key that does not exist), and the docs cite
nothing outside the repository."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from mailstack.config import Config

ROOT = Path(__file__).resolve().parent.parent


def config_keys() -> set[str]:
    """``hostname``, ``smtp.listen``, ... for every field of Config and its sections."""
    keys = set()
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name == "path":
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys |= {f"{f.name}.{sub.name}" for sub in dataclasses.fields(tp)}
        else:
            keys.add(f.name)
    return keys


def documented_keys() -> set[str]:
    """The first cell of each table row, under ``### top level`` or ``### `[section]` ...``."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    body = text.split("## The keys", 1)[1].split("\n## ", 1)[0]
    keys, section = set(), None
    for line in body.splitlines():
        if line.startswith("### "):
            m = re.match(r"### `\[(\w+)\]`", line)
            section = m.group(1) if m else ""
        elif (m := re.match(r"\| `(\w+)` \|", line)) and section is not None:
            keys.add(f"{section}.{m.group(1)}" if section else m.group(1))
    return keys


def test_every_config_key_has_one_row_in_the_reference() -> None:
    code, docs = config_keys(), documented_keys()
    assert len(code) > 50  # the parser above found the sections
    assert sorted(code - docs) == [], "keys without a row in docs/configuration.md"
    assert sorted(docs - code) == [], "rows in docs/configuration.md for keys config.py does not have"


_SKIP_DIRS = {".git", ".venv", ".hypothesis", ".mypy_cache", ".pytest_cache", "__pycache__", "mailboxes", "var"}


def project_files() -> list[Path]:
    """Source, docs, config, units and scripts of the checkout (no venv, caches or mail)."""
    out = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if any(part in _SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in (".py", ".md", ".toml", ".service", ".target", ".conf", ".sh", ".sysusers", ".tmpfiles", ""):
            out.append(path)
    return out


def test_nothing_cites_files_outside_the_repository() -> None:
    files = project_files()
    assert ROOT / "README.md" in files and ROOT / "mailstack" / "config.py" in files
    hits = []
    for path in files:
        if path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if re.search(r"\.\./shared/|/work/|\bCONTRACT\.md|\bDESIGN\.md", line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == []
