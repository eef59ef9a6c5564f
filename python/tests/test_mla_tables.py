"""bench/mla/tables_mla.py on the committed H200 results: the three Markdown tables of docs/mla.md's
Performance section, one row per shape, with the figures of the JSON."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys


def test_tables_from_the_committed_results(repo_root: pathlib.Path) -> None:
    results = repo_root / "bench" / "results" / "mla_h200.json"
    data = json.loads(results.read_text())
    printed = subprocess.run([sys.executable, str(repo_root / "bench" / "mla" / "tables_mla.py"), str(results)],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    tables = [block for block in printed.split("\n\n") if block.startswith("|")]
    assert len(tables) == 3, printed
    main, variants, ab = (table.splitlines()[2:] for table in tables)  # rows after header and rule
    assert len(main) == len(data["cases"])
    assert len(variants) == sum(1 for case in data["cases"] if case["h_q"] == 128)
    assert len(ab) == len(data["fp8_ab"]["cases"])
    # One row checked against the JSON: h_q 16, s_q 2, fixed 8K.
    case = next(c for c in data["cases"]
                if (c["h_q"], c["s_q"], c["mean_len"], c["lengths"]) == (16, 2, 8192, "fixed"))
    row = next(r for r in main if r.startswith("| 2 | 16 | 8K fixed |"))
    assert f"{case['ours_bf16']['ms']:.3f} ms" in row and f"{case['fp8_speedup_vs_bf16']:.2f}x" in row, row
    assert data["device"] in printed
