"""Chrome-trace recording and analysis (component ``trace``).

Recording::

    from fireflyer import trace
    recorder = trace.global_recorder()   # the recorder native components write into
    recorder.enabled = True
    with trace.span("load data", "flow"):
        ...
    recorder.write_json("run.json")      # opens in Perfetto UI / chrome://tracing

Analysis (the profile-data counterpart; also the ``ff-trace`` command)::

    report = trace.analyze("run.json", top=10, svg_path="timeline.svg")
    report["processes"], report["top"], ...
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator, Sequence

from fireflyer import _C

Recorder = _C.trace.Recorder


def global_recorder() -> Recorder:
    """The process-wide recorder shared with native code; disabled until ``enabled = True``."""
    return _C.trace.global_recorder()


@contextlib.contextmanager
def span(name: str, category: str = "python", recorder: Recorder | None = None) -> Iterator[None]:
    """Records a complete event covering the ``with`` block (on the global recorder by default)."""
    recorder = recorder if recorder is not None else global_recorder()
    if not recorder.enabled:
        yield
        return
    start_ns = recorder.now_ns()
    try:
        yield
    finally:
        recorder.complete(name, category, start_ns, recorder.now_ns() - start_ns)


def analyze(
    path: str | os.PathLike,
    top: int = 20,
    comm_patterns: Sequence[str] | None = None,
    ignore_categories: Sequence[str] | None = None,
    memory_limit_mb: int = 1024,
    svg_path: str | os.PathLike | None = None,
) -> dict:
    """Analyses a Chrome trace (ours or a PyTorch profiler trace, optionally gzip-compressed).

    Returns the report as a dict: busy time per process and thread/stream, communication time and
    the fraction hidden under computation per process, and the top events by total time. Malformed
    input raises ValueError naming the byte offset; a missing file raises OSError.
    """
    if top < 0:
        raise ValueError(f"top={top} must be >= 0")
    report = _C.trace.analyze_json(
        os.fspath(path),
        top=top,
        comm_patterns=list(comm_patterns) if comm_patterns is not None else None,
        ignore_categories=list(ignore_categories) if ignore_categories is not None else None,
        memory_limit_mb=memory_limit_mb,
        svg_path=os.fspath(svg_path) if svg_path is not None else "",
    )
    return json.loads(report)
