"""The summary table at the top of BENCHMARKS.md, from the figures each benchmark `record`ed
(benchmarks/results.json). Run: `python -m benchmarks.summary` (`make bench` runs it last)."""

from __future__ import annotations

import json

from benchmarks.report import RESULTS, machine, write_section

ORDER = ("feed", "bridge", "query", "features", "models", "pipeline", "scale")


def fmt(value: float | None) -> str:
    if value is None or value != value:  # none, or NaN: nothing was measured
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def main() -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    lines = [
        "## Summary",
        "",
        "Every figure below is measured by the benchmark named in its row, in the run dated in "
        "that row, beside its raw ceiling measured in the same run (see each section for how).",
        "",
        "| bench | figure | ours | raw ceiling | ratio | target | met | seed guide's target "
        "| measured |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for bench in [*ORDER, *sorted(set(data) - set(ORDER))]:
        for r in data.get(bench, []):
            ceiling = r["ceiling"]
            ratio = f"{r['ours'] / ceiling:.2f}×" if ceiling and r["ours"] == r["ours"] else "—"
            met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
            lines.append(
                f"| {bench} | {r['figure']} | {fmt(r['ours'])} {r['unit']} "
                f"| {fmt(ceiling)} | {ratio} | {r['target'] or '—'} | {met} "
                f"| {r['seed_target'] or '—'} | {r['measured']} |"
            )
    lines += ["", f"Machine: {machine()}."]
    write_section("summary", "\n".join(lines), first=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
