"""Every Valkey key is built in qt_cli/core/keys.py: no other module spells a key prefix.

Scans the string literals (f-string parts too; docstrings excluded) of every module under
qt_cli/ for a key namespace at the start (`stream:`, `hwm:`, `qt:`, `idx:`, `tmp:`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import qt_cli

ROOT = Path(qt_cli.__file__).parent
KEYS_MODULE = ROOT / "core" / "keys.py"
KEY_PREFIX = re.compile(r"^(stream|hwm|qt|idx|tmp):")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for stmt in body:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                    found.add(id(stmt.value))
    return found


def inline_keys(path: Path) -> list[str]:
    """`name:line: literal` for each string literal of `path` that starts like a key."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):  # f-string text parts are Constant nodes too
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if KEY_PREFIX.match(node.value):
                hits.append(f"{path.name}:{node.lineno}: {node.value!r}")
    return sorted(hits)


def test_no_key_is_spelled_outside_keys_py() -> None:
    hits = [
        hit
        for path in sorted(ROOT.rglob("*.py"))
        if path != KEYS_MODULE
        for hit in inline_keys(path)
    ]
    assert hits == [], "build these keys with qt_cli/core/keys.py:\n" + "\n".join(hits)


def test_the_scan_finds_an_inline_key(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text(
        '"""stream:ticks:{X} in a docstring is prose."""\n'
        'K = f"stream:ticks:{{{1}}}"\nH = "hwm:x"\nD = "plain stream: text"\n'
    )
    assert inline_keys(module) == ["probe.py:2: 'stream:ticks:{'", "probe.py:3: 'hwm:x'"]
