"""ff-trace on real PyTorch profiler traces (torch 2.11, recorded by bench/trace/torch_profile_sample.py):
- H100, one GPU: bf16 matrix products on stream 7 while device-to-device copies run on stream 13,
  analysed with the copies named as communication;
- H200, rank 0 of two NCCL ranks: matrix products on stream 7 while NCCL all-to-all and all-reduce
  kernels run on a side stream, analysed with the default patterns.
Every figure ff-trace reports is recomputed here straight from the JSON."""

from __future__ import annotations

import collections
import gzip
import json
import pathlib

import pytest

from fireflyer import trace

DATA = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data"
# (file, comm_patterns passed to ff-trace (None: defaults), how the test recognises a comm event)
CASES = {
    "h100_copies": ("torch_profiler_h100.json.gz", ["Memcpy DtoD"], lambda name: "Memcpy DtoD" in name),
    "h200_nccl": ("torch_profiler_h200_nccl2.json.gz", None, lambda name: name.startswith("ncclDevKernel")),
}
IGNORED = {"cpu_op", "python_function", "user_annotation", "cuda_runtime", "cuda_driver", "ac2g", "Trace",
           "fwdbwd", "gpu_user_annotation"}


def _union(intervals):
    """Sorted, merged intervals and their total length."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged, sum(end - start for start, end in merged)


def _intersection_length(a, b):
    total, i, j = 0, 0, 0
    while i < len(a) and j < len(b):
        low, high = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0, high - low)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    file_name, comm_patterns, is_comm = CASES[request.param]
    with gzip.open(DATA / file_name, "rt") as file:
        raw_events = json.load(file)["traceEvents"]
    report = trace.analyze(DATA / file_name, top=50, comm_patterns=comm_patterns)
    return raw_events, report, is_comm


def _ns(microseconds):
    return round(float(microseconds) * 1000)


def test_track_busy_times_match_a_direct_computation(case):
    raw_events, report, _ = case
    by_track = collections.defaultdict(list)
    for event in raw_events:
        if event.get("ph") == "X" and "dur" in event:
            start = _ns(event["ts"])
            by_track[(str(event["pid"]), str(event["tid"]))].append((start, start + _ns(event["dur"])))
    reported = {(t["pid"], t["tid"]): t for t in report["tracks"]}
    assert set(reported) == set(by_track)
    for key, intervals in by_track.items():
        _, busy = _union(intervals)
        # ff-trace converts ts and dur to integer ns separately; allow that rounding per event.
        assert abs(reported[key]["busy_ns"] - busy) <= 2 * len(intervals), key


def test_gpu_kernels_are_compute_and_communication_is_recognised(case):
    raw_events, report, is_comm = case
    compute, comm = [], []
    for event in raw_events:
        if event.get("ph") != "X" or event.get("pid") != 0 or event.get("cat") in IGNORED:
            continue
        start = _ns(event["ts"])
        interval = (start, start + _ns(event["dur"]))
        (comm if is_comm(event["name"]) else compute).append(interval)
    assert compute and comm
    compute_union, compute_ns = _union(compute)
    comm_union, comm_ns = _union(comm)
    hidden_ns = _intersection_length(compute_union, comm_union)
    gpu = next(p for p in report["processes"] if p["pid"] == "0")
    assert abs(gpu["compute_ns"] - compute_ns) <= 2 * len(compute)
    assert abs(gpu["comm_ns"] - comm_ns) <= 2 * len(comm)
    assert abs(gpu["hidden_comm_ns"] - hidden_ns) <= 2 * (len(comm) + len(compute))
    assert 0 < gpu["hidden_fraction"] < 1


def test_top_events_include_the_matrix_kernel(case):
    _, report, _ = case
    names = [entry["name"] for entry in report["top"]]
    assert any(name.startswith("nvjet_sm90") for name in names), names
    assert "aten::mm" in names


def test_cpu_side_ops_are_neither_compute_nor_communication(case):
    _, report, _ = case
    gpu_pids = {str(e["pid"]) for e in case[0] if e.get("cat") == "kernel"}
    cpu_tracks = [t for t in report["tracks"] if t["pid"] not in gpu_pids | {"-1"} and t["busy_ns"] > 0]
    assert cpu_tracks
    for track in cpu_tracks:
        assert track["compute_ns"] == 0 and track["comm_ns"] == 0
