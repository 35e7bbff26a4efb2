#!/usr/bin/env python3
"""Adds up pytest JUnit XML reports: `junit_total.py A.xml B.xml` prints one line,
'total: N passed, N failed, N skipped', for a suite run as several pytest processes
(scripts/test.sh). A missing or unreadable report counts as one failure."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def counts(path: str) -> tuple[int, int, int]:
    """(passed, failed, skipped) of one report; failed includes errors."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        print(f"junit_total: {path}: {exc}", file=sys.stderr)
        return 0, 1, 0
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    passed = failed = skipped = 0
    for suite in suites:
        tests, skip = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        passed += tests - skip - bad
        failed += bad
        skipped += skip
    return passed, failed, skipped


def main(paths: list[str]) -> int:
    totals = [sum(c) for c in zip(*(counts(p) for p in paths), strict=True)] if paths else [0, 0, 0]
    print(f"total: {totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")
    return 1 if totals[1] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
