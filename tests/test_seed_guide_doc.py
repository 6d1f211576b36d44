"""docs/seed-guide.md: its Python block reads ticks, candles and features that `qt bridge` wrote."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from qt_cli.core.events import NS_PER_S, FeatureVector, Trade
from tests.helpers import QtProcesses

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_754_654_400 * NS_PER_S  # 2025-08-08 12:00 UTC, the snippet's start_ms


def documented_block() -> str:
    text = (ROOT / "docs" / "seed-guide.md").read_text()
    match = re.search(r"<!-- tested: [^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/seed-guide.md lost its tested Python block"
    return match.group(1)


def test_the_seed_guide_snippet_reads_what_qt_wrote(
    qt: QtProcesses, valkey_url: str, tmp_path: Path
) -> None:
    lines = []
    for i in range(150):  # one tick a second: two whole minutes and half of a third
        trade = Trade("WDOU25", T0 + i * NS_PER_S, price=5000.0 + i % 4, quantity=1, trade_id=i)
        lines.append({**trade.to_dict(), "session": "doc.ticks", "seq": i + 1})
    features = FeatureVector("WDOU25", T0 + 150 * NS_PER_S, features={"ret_1m": 0.5}, warm=True)
    lines.append({**features.to_dict(), "session": "doc.features", "seq": 1})
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    result = qt.run("bridge", "--in", str(path), "--out", valkey_url)
    assert result.returncode == 0, result.output

    namespace: dict[str, object] = {}
    exec(compile(documented_block(), "docs/seed-guide.md", "exec"), namespace)  # noqa: S102
    assert namespace["prices"] == [5000.0 + i % 4 for i in range(61)]  # 12:00:00 to 12:01:00
    # the end of a file closes the last minute too (docs/bridge.md)
    assert len(namespace["closes"]) == 3  # type: ignore[arg-type]
    assert namespace["features"] == {"ret_1m": 0.5}
    newer = namespace["newer"]
    assert [int(f[b"seq"]) for _, f in newer] == list(range(62, 151))  # type: ignore[attr-defined]
    namespace["client"].close()  # type: ignore[attr-defined]
