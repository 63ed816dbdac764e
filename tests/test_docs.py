"""BENCHMARKS.md stays machine-writable and readable: its sections, headings and tables keep their own lines.

The benchmark scripts replace sections between `<!-- name -->` markers (benchmarks/common.py); a hand reflow of the
file once joined markers, headings and table rows into paragraphs, which renders every table as one line of text.
"""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def test_benchmarks_sections_headings_and_tables_keep_their_own_lines():
    lines = BENCHMARKS_MD.read_text().splitlines()
    text = "\n".join(lines)
    markers = re.findall(r"<!--\s*(/?)([\w.+-]+)\s*-->", text)
    opened = [name for close, name in markers if not close]
    closed = [name for close, name in markers if close]
    assert opened and sorted(opened) == sorted(closed), "every section is opened and closed once"
    misplaced = [line for line in lines if "<!--" in line and not re.fullmatch(r"<!-- /?[\w.+-]+ -->", line)]
    assert not misplaced, f"section markers must stand alone on their line: {misplaced[:3]}"
    inline_headings = [line for line in lines if re.search(r"\S.* ## [A-Z]", line)]
    assert not inline_headings, f"headings joined into text: {inline_headings[:3]}"
    joined_rows = [line for line in lines if re.search(r"\| \|-+", line) or ("|---" in line and not line.startswith("|"))]
    assert not joined_rows, f"table rows joined into text: {joined_rows[:3]}"
    separators = [i for i, line in enumerate(lines) if re.fullmatch(r"\|(?:\s*-+:?\s*\|)+", line)]
    assert separators, "the tables are there"
    for i in separators:
        width = lines[i].count("|")
        assert lines[i - 1].startswith("|") and lines[i - 1].count("|") >= width, f"table header above line {i + 1}"
