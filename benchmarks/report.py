"""Benchmarks write their section of BENCHMARKS.md through here, one marked section each.

Usage inside a benchmark: `write_section("bridge", markdown_text)`. A re-run replaces only its
own section, so benchmarks can run alone or all together (`make bench`). Each benchmark also
`record`s its headline figures (ours, the raw ceiling measured in the same run, the target, the
seed guide's target) in benchmarks/results.json; `python -m benchmarks.summary` (the last step
of `make bench`) writes them as the summary table at the top of BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "benchmarks" / "results.json"
HEADER = """# Benchmarks

Measured by `make bench` (or one `python -m benchmarks.bench_<name>`); each section compares qt
with a raw baseline measured in the same run on the same machine. Figures from a 2-core machine;
absolute numbers move with the machine, the ratios much less.
"""


def machine() -> str:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown cpu"
    try:
        valkey = subprocess.run(
            ["valkey-server", "--version"], capture_output=True, text=True, check=False
        ).stdout.split()[2]
    except (OSError, IndexError):
        valkey = "n/a"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, valkey {valkey}"


def write_section(name: str, body: str, *, first: bool = False) -> None:
    """Replace (or add) section `name`; `first` puts it right after the header."""
    text = REPORT.read_text() if REPORT.exists() else HEADER
    stamp = datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"<!-- bench:{name} -->\n{body.rstrip()}\n\n_{stamp}; {machine()}_\n<!-- /bench:{name} -->"
    )
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S
    )
    if first:
        text = pattern.sub("", text)
        head, marker, rest = text.partition("<!-- bench:")
        text = f"{head.rstrip()}\n\n{block}\n\n{marker}{rest.lstrip()}" if marker else text
        if not marker:
            text = f"{text.rstrip()}\n\n{block}\n"
    else:
        text = (
            pattern.sub(lambda _: block, text)
            if pattern.search(text)
            else f"{text.rstrip()}\n\n{block}\n"
        )
    REPORT.write_text(text)


_recorded: set[str] = set()  # benches that recorded a figure in this process


def record(
    bench: str,
    figure: str,
    ours: float,
    unit: str,
    *,
    ceiling: float | None = None,
    target: str = "",
    met: bool | None = None,
    seed_target: str = "",
) -> None:
    """One headline figure of `bench` for the summary: ours and the raw ceiling (same unit,
    same run), the target and whether it is met, the seed guide's target where it has one."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if bench not in _recorded:  # this run's figures replace all of the last run's (names may
        _recorded.add(bench)  # carry a measured rate, e.g. the pipeline's trades/s)
        data[bench] = []
    rows = [r for r in data.get(bench, []) if r["figure"] != figure]
    rows.append(
        {
            "figure": figure,
            "ours": ours,
            "unit": unit,
            "ceiling": ceiling,
            "target": target,
            "met": met,
            "seed_target": seed_target,
            "measured": datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
        }
    )
    data[bench] = rows
    RESULTS.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
