"""Pipeline-parallel schedules (component ``pipe``): 1F1B, ZB1P, DualPipe, DualPipeV.

Generate, validate and simulate::

    from fireflyer import pipe
    result = pipe.simulate("dualpipe", pp=8, chunks=20, costs={"F": 1, "B": 2, "W": 1, "FB": 2.5},
                           trace_path="dualpipe.json", svg_path="dualpipe.svg")
    result["step_time"], result["bubble"], result["peak_memory"]

    schedule = pipe.generate("dualpipe", pp=8, chunks=20)   # a Schedule (JSON file format inside)
    schedule.ranks[0][:3]   # [{'op': 'F', 'mb': 0, 'stage': 0, 'dir': 0}, ...]
    pipe.validate(schedule)  # raises ValueError naming the op that waits forever on a deadlock

Costs are in abstract time units: F a forward chunk, B a full backward, W its weight-gradient part,
FB an overlapped forward+backward (default F + B), plus ``latency``, ``bandwidth``, ``bytes``,
``act_mem`` and ``param_mem`` (see docs/pipe.md).

The torch classes ``DualPipe`` and ``DualPipeV`` (the anchor's API, driven by these schedules) are in
``fireflyer.pipe_torch``; they need torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping

from fireflyer import _C

SCHEDULES = ("1f1b", "zb1p", "dualpipe", "dualpipev")
DEFAULT_COSTS = {"F": 1.0, "B": 2.0, "W": 1.0, "FB": 2.5}


@dataclass(frozen=True)
class Schedule:
    """A generated or loaded schedule. ``json`` is the schedule file text (format
    ``fireflyer.pipe.schedule/1``); ``ranks[r]`` is rank r's op list as dicts."""

    json: str

    @property
    def document(self) -> dict:
        return json.loads(self.json)

    @property
    def kind(self) -> str:
        return self.document["schedule"]

    @property
    def num_ranks(self) -> int:
        return self.document["num_ranks"]

    @property
    def ranks(self) -> list[list[dict]]:
        return self.document["ranks"]

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.json)


def _as_json(schedule: Schedule | str | Mapping) -> str:
    if isinstance(schedule, Schedule):
        return schedule.json
    if isinstance(schedule, str):
        return schedule
    return json.dumps(schedule)


def _costs(costs: Mapping[str, float] | None) -> dict:
    return dict(DEFAULT_COSTS if costs is None else costs)


def generate(schedule: str = "dualpipe", pp: int = 8, chunks: int = 20) -> Schedule:
    """Generates a schedule. ValueError for a bad shape (odd pp for DualPipe, too few chunks, ...)."""
    return Schedule(_C.pipe.generate(schedule, pp, chunks))


def load(path: str | os.PathLike) -> Schedule:
    """Loads (and checks the shape of) a schedule file, e.g. one edited by hand."""
    with open(path, encoding="utf-8") as file:
        return Schedule(_C.pipe.normalize(file.read()))


def from_document(document: Mapping) -> Schedule:
    """A Schedule from a dict in the file format (ValueError naming a malformed op)."""
    return Schedule(_C.pipe.normalize(json.dumps(document)))


def validate(schedule: Schedule | str | Mapping, channel_capacity: int = 0) -> dict:
    """Validates a schedule: every dependency met, no deadlock under blocking send/receive (with
    ``channel_capacity`` messages per link, 0 = unbounded), each task's F, B and W exactly once.

    Returns peak activations, parameter copies and peak pending messages per rank. Raises ValueError
    for a missing or duplicated op, and ValueError "deadlock: rank R op #i ... waits forever for ..."
    for a deadlock.
    """
    return _C.pipe.validate(_as_json(schedule), channel_capacity)


def simulate(
    schedule: str | Schedule = "dualpipe",
    pp: int = 8,
    chunks: int = 20,
    costs: Mapping[str, float] | None = None,
    trace_path: str | os.PathLike | None = None,
    svg_path: str | os.PathLike | None = None,
) -> dict:
    """Simulates one step and returns a dict: ``step_time``, ``bubble`` / ``busy`` / ``finish`` /
    ``peak_activations`` / ``parameters`` / ``peak_memory`` per rank, ``max_bubble``,
    ``table_bubble`` (the anchor's closed form), ``num_ranks``, ``num_ops``, ``table`` (text).

    ``schedule`` is a kind name (then ``pp`` and ``chunks`` apply) or a Schedule. Writes a Chrome
    trace and an SVG picture when the paths are given.
    """
    if isinstance(schedule, Schedule):
        text = schedule.json
    else:
        text = _C.pipe.generate(schedule, pp, chunks)
    return _C.pipe.simulate(
        text,
        _costs(costs),
        os.fspath(trace_path) if trace_path is not None else "",
        os.fspath(svg_path) if svg_path is not None else "",
    )


def best(pp: int, chunks: int, costs: Mapping[str, float] | None = None, memory_limit: float = 0.0) -> list[dict]:
    """Every schedule kind ranked by simulated step time; infeasible ones (bad shape, or peak memory
    per rank above ``memory_limit``; <= 0 means none) last with a ``reason``."""
    return _C.pipe.rank_schedules(pp, chunks, _costs(costs), memory_limit)


def table_bubble(schedule: str, pp: int, costs: Mapping[str, float] | None = None) -> float:
    """The anchor's closed-form bubble: 1F1B (PP-1)(F+B), ZB1P (PP-1)(F+B-2W), DualPipe(V) (PP/2-1)(FB+B-3W)."""
    return _C.pipe.table_bubble(schedule, pp, _costs(costs))


def execute(
    schedule: Schedule | str,
    hidden: int = 8,
    ffn: int = 16,
    rows: int = 4,
    seed: int = 1,
    timeout_ms: int = 10000,
    channel_capacity: int = 0,
    trace_path: str | os.PathLike | None = None,
) -> dict:
    """Runs one step of a small MLP per stage with one thread per rank (native executor) and returns
    ``wall_s``, ``busy_s`` per rank, ``mean_op_s`` per op kind, ``loss`` and ``max_relative_error`` of
    the gradients against the same model run unpipelined."""
    return _C.pipe.execute(
        _as_json(schedule), hidden, ffn, rows, seed, timeout_ms, channel_capacity,
        os.fspath(trace_path) if trace_path is not None else "",
    )


def __getattr__(name: str):
    # The torch classes load lazily so `import fireflyer.pipe` works without torch.
    if name in ("DualPipe", "DualPipeV", "set_p2p_tensor_shapes", "set_p2p_tensor_dtype"):
        from fireflyer import pipe_torch

        return getattr(pipe_torch, name)
    raise AttributeError(name)
