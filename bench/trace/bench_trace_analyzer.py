#!/usr/bin/env python3
"""ff-trace benchmark: analyses a generated 1 GiB PyTorch-profiler-like trace and prints one JSON line
per case (MB/s, peak RSS), then writes bench/results/trace_analyzer_cpu.json.

Cases: the default memory budget (1024 MB: everything in memory) and a 64 MB budget (intervals spill
to sorted runs on disk). The generated file is deleted afterwards unless --keep is given.

Usage: bench/trace/bench_trace_analyzer.py [--build-dir build] [--mb 1024] [--tmp-dir /tmp] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

from fireflyer import cpu_model  # noqa: E402


def run_baseline(binary: pathlib.Path, trace: pathlib.Path) -> dict:
    """nlohmann::json's SAX parser with a handler that does nothing, on the same file."""
    result = subprocess.run([str(binary), str(trace)], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        sys.exit(f"{binary} failed: {result.stderr}")
    return json.loads(result.stdout)


def run_case(binary: pathlib.Path, trace: pathlib.Path, memory_limit_mb: int, tmp_dir: str, baseline: dict) -> dict:
    report_path = pathlib.Path(tmp_dir) / f"ff_trace_bench_report_{os.getpid()}.json"
    command = [str(binary), str(trace), "--json", str(report_path), "--memory-limit-mb", str(memory_limit_mb),
               "--tmp-dir", tmp_dir]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would include the generator).
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"ff-trace failed: {stderr}")
    report = json.loads(report_path.read_text())
    report_path.unlink()
    file_bytes = trace.stat().st_size
    mb_per_s = file_bytes / 1e6 / seconds
    return {
        "bench": "trace_analyzer",
        "case": f"{file_bytes / 2**30:.2f}GiB_pytorch_like_mem{memory_limit_mb}MB",
        "file_bytes": file_bytes,
        "events": report["events"]["total"],
        "interval_events": report["events"]["interval"],
        "memory_limit_mb": memory_limit_mb,
        "spilled_runs": report["spilled_runs"],
        "seconds": round(seconds, 3),
        "mb_per_s": round(mb_per_s, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is in KiB on Linux.
        "target": ">= 100 MB/s, peak RSS << file size",
        "baseline": "nlohmann::json sax_parse, handler doing nothing, same file, same run",
        "baseline_mb_per_s": baseline["mb_per_s"],
        "ratio": round(mb_per_s / baseline["mb_per_s"], 2),
        "device": f"{cpu_model()} (CPU)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", default=os.environ.get("FF_BUILD_DIR", "build"))
    parser.add_argument("--mb", type=float, default=1024, help="trace size in MiB")
    parser.add_argument("--tmp-dir", default=tempfile.gettempdir())
    parser.add_argument("--keep", action="store_true", help="keep the generated trace")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "trace_analyzer_cpu.json"))
    args = parser.parse_args()

    binary = (REPO / args.build_dir / "bin" / "ff-trace").resolve()
    if not binary.exists():
        sys.exit(f"{binary} not found: build ff-trace first (cmake --build {args.build_dir} --target ff-trace)")
    trace = pathlib.Path(args.tmp_dir) / f"ff_trace_bench_{int(args.mb)}MiB.json"
    try:
        if not trace.exists():
            subprocess.run([sys.executable, str(REPO / "bench" / "trace" / "gen_trace.py"), str(trace),
                            "--mb", str(args.mb * 2**20 / 1e6)], check=True, stdout=subprocess.DEVNULL)
        baseline = run_baseline((REPO / args.build_dir / "bench-tools" / "nlohmann_sax_baseline").resolve(), trace)
        results = [run_case(binary, trace, limit, args.tmp_dir, baseline) for limit in (1024, 64)]
    finally:
        if not args.keep and trace.exists():
            trace.unlink()
    for result in results:
        print(json.dumps(result))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "note": "page cache warm: the trace was just generated"},
                              indent=1) + "\n")


if __name__ == "__main__":
    main()
