"""Files the README promises: the production compose file and CI entry point."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compose_pins_valkey_8_and_never_evicts() -> None:
    text = (ROOT / "docker-compose.valkey.yml").read_text()
    assert re.search(r"image: valkey/valkey:8\.\d+\.\d+", text), "pin an exact 8.x image"
    assert "noeviction" in text and "allkeys-lru" not in text.split("seed used")[0]
    assert "--appendonly" in text and "everysec" in text
    assert "healthcheck:" in text and "valkey-data:/data" in text


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
