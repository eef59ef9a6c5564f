"""Shared pytest set-up: the source tree's python/ is importable, and tools are found in the build."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "python"))


@pytest.fixture(scope="session")
def build_dir() -> pathlib.Path:
    """The CMake build directory (FF_BUILD_DIR, default build/)."""
    return REPO_ROOT / os.environ.get("FF_BUILD_DIR", "build")


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT
