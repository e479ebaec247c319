"""Tables in docs/results.md copied from a committed report stay equal to it: each is marked
with `<!-- table: benchmarks/results/<run>/table1.md -->` and must be that report's table, row for
row (a report re-rendered or re-scored without the docs following fails here)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- table: (\S+) -->")


def first_table(lines: list[str], start: int = 0) -> list[str]:
    i = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    j = i
    while j < len(lines) and lines[j].startswith("|"):
        j += 1
    return lines[i:j]


def test_marked_docs_tables_equal_their_reports() -> None:
    lines = (REPO / "docs" / "results.md").read_text().split("\n")
    marked = [(i, m.group(1)) for i, line in enumerate(lines) if (m := MARKER.search(line))]
    assert len(marked) >= 5
    for i, report in marked:
        source = (REPO / report).read_text().split("\n")
        assert lines[i + 1].startswith("|"), f"{report}: the marker must sit right above its table"
        assert first_table(lines, i + 1) == first_table(source), f"docs/results.md line {i + 1} != {report}"
