"""The Python examples of docs/switching.md run as written (CPU only; no torch, no running cluster).

Each section's ```python blocks run in order as one program (a later block may use an earlier one's
names), in a fresh interpreter with the source tree's package. Sections whose examples need torch or the
local cluster are skipped here; they were run by hand on a CPU machine with torch and with
deploy/local-cluster."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "switching.md"


def section_programs() -> list[tuple[str, str]]:
    programs = []
    for section in re.split(r"^## ", GUIDE.read_text(), flags=re.M)[1:]:
        title = section.splitlines()[0].strip()
        blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
        if blocks:
            programs.append((title, "\n".join(blocks)))
    return programs


def test_the_guide_has_python_examples() -> None:
    assert len(section_programs()) >= 6


@pytest.mark.parametrize("title,program", section_programs(), ids=[t for t, _ in section_programs()])
def test_examples_of_a_section_run(title: str, program: str, tmp_path: pathlib.Path) -> None:
    if "torch" in program:
        pytest.skip(f"{title}: the examples use torch")
    if "ff-local-cluster" in program:
        pytest.skip(f"{title}: the examples need deploy/local-cluster running")
    for module in re.findall(r"^\s*import (pyarrow|pandas|duckdb)", program, flags=re.M):
        pytest.importorskip(module)
    script = tmp_path / "example.py"
    script.write_text(program)
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{title}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
