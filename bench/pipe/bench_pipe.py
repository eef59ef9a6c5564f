"""Benchmark of the pipe component: prints one JSON line per case, writes bench/results/pipe_cpu.json.

Cases:
  * generate + validate + simulate PP=16 with 64 micro-batches, per schedule (target: < 50 ms);
  * the native executor on 4 rank threads against the simulated ideal step fed with the executor's
    own measured mean op times (overhead = wall / ideal - 1).

Run from the repository root after a build: PYTHONPATH=python python3 bench/pipe/bench_pipe.py
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "python"))

from fireflyer import _C, cpu_model, pipe  # noqa: E402

REPEATS = 7


def bench_simulate(kind: str) -> dict:
    costs = {"F": 1, "B": 2, "W": 1, "FB": 2.5}
    times_ms = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        text = _C.pipe.generate(kind, 16, 64)
        result = _C.pipe.simulate(text, costs)
        times_ms.append((time.perf_counter() - start) * 1e3)
    ms = statistics.median(times_ms)
    return {"case": "generate+validate+simulate", "schedule": kind, "pp": 16, "chunks": 64,
            "num_ops": result["num_ops"], "median_ms": round(ms, 3), "min_ms": round(min(times_ms), 3),
            "target_ms": 50, "ratio_to_target": round(ms / 50, 4), "step_time_units": result["step_time"]}


def bench_executor(kind: str) -> dict:
    pp = 8 if kind == "dualpipev" else 4  # 4 rank threads either way
    chunks = 16
    schedule = pipe.generate(kind, pp=pp, chunks=chunks)
    shape = {"hidden": 128, "ffn": 256, "rows": 32}
    runs = [pipe.execute(schedule, **shape) for _ in range(3)]
    run = min(runs, key=lambda r: r["wall_s"])
    assert run["max_relative_error"] < 1e-6, run
    mean = run["mean_op_s"]
    forward, backward, weight = mean["F"], mean["B"] or (mean["I"] + mean["W"]), mean["W"]
    costs = {"F": forward, "B": max(backward, weight), "W": weight,
             "FB": mean["FB"] if mean["FB"] > 0 else forward + backward}
    ideal = pipe.simulate(schedule, costs=costs)["step_time"]
    return {"case": "executor_vs_simulated_ideal", "schedule": kind, "pp": pp, "ranks": schedule.num_ranks,
            "chunks": chunks, **shape, "wall_ms": round(run["wall_s"] * 1e3, 3), "ideal_ms": round(ideal * 1e3, 3),
            "overhead": round(run["wall_s"] / ideal - 1, 4), "max_relative_error": run["max_relative_error"]}


def main() -> None:
    results = []
    for kind in pipe.SCHEDULES:
        line = bench_simulate(kind)
        print(json.dumps(line), flush=True)
        results.append(line)
    for kind in pipe.SCHEDULES:
        line = bench_executor(kind)
        print(json.dumps(line), flush=True)
        results.append(line)
    document = {"component": "pipe", "device": f"{cpu_model()} (CPU)", "cpu_cores": os.cpu_count(),
                "python": platform.python_version(), "results": results}
    out = REPO_ROOT / "bench" / "results" / "pipe_cpu.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
