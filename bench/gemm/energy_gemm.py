#!/usr/bin/env python3
"""Energy per FLOP of the dense FP8 GEMM against cuBLASLt (torch._scaled_mm, row-wise scales) at steady state.

Each side runs back to back for --seconds (a CUDA graph of ITERS calls replayed without pause) while nvidia-smi
samples the board's power draw and SM clock every 100 ms; the first --settle seconds of samples are dropped. Sides
alternate order over --rounds rounds. Per side: TFLOPS (replays x graph FLOPs / elapsed), median power and clock,
and joules per PFLOP (power / throughput). Under a power cap, the side with less energy per FLOP runs faster.
Use 2 s or more per side: nvidia-smi's power reading lags the load by a fraction of a second (0.5 s runs read
300-330 W for the first side on an H200 at 690 W).
Writes bench/results/gemm_<device>_energy.json.

Usage: bench/gemm/energy_gemm.py [--family dense|masked] [--configs CONFIG,...] [--seconds 3] [--settle 0.5]
       [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_gemm import (capture_graph, dense_inputs, import_cuda_torch, masked_inputs,  # noqa: E402
                        per_group_scaled_mm, row_scales)

REPO = pathlib.Path(__file__).resolve().parents[2]
SHAPES = [(4096, 7168, 16384), (4096, 4096, 7168), (4096, 7168, 2048)]
# Grouped masked (groups, m per group, n, k), every row valid; the baseline is one _scaled_mm per group.
MASKED_SHAPES = [(1, 1024, 4096, 7168), (1, 1024, 7168, 2048), (2, 512, 4096, 7168), (4, 256, 7168, 2048)]
ITERS = 20


def sustained(torch, fn, flop: float, seconds: float, settle: float) -> dict:
    """Replays a graph of ITERS calls of fn for `seconds` while nvidia-smi samples power and SM clock."""
    graph = capture_graph(torch, fn, ITERS)
    graph.replay()
    torch.cuda.synchronize()
    sampler = subprocess.Popen(["nvidia-smi", f"--id={torch.cuda.current_device()}",
                                "--query-gpu=power.draw,clocks.sm,temperature.gpu", "--format=csv,noheader,nounits",
                                "-lms", "100"], stdout=subprocess.PIPE, text=True)
    try:
        begin = time.perf_counter()
        # Untimed settling replays (the clock falls to the cap's level within a fraction of a second).
        while time.perf_counter() - begin < settle:
            graph.replay()
            torch.cuda.synchronize()
        samples_from = time.perf_counter()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        replays = 0
        while time.perf_counter() - samples_from < seconds:
            for _ in range(4):
                graph.replay()
            replays += 4
            torch.cuda.synchronize()
        end.record()
        end.synchronize()
        elapsed = start.elapsed_time(end) / 1e3
    finally:
        sampler.terminate()
        lines, _ = sampler.communicate(timeout=10)
    # nvidia-smi prints a sample every 100 ms from its start: keep those taken after the settling replays.
    rows = [line.split(",") for line in lines.strip().splitlines() if line.count(",") == 2]
    skip = int(round((samples_from - begin) / 0.1))
    rows = rows[skip:] or rows
    power = statistics.median(float(r[0]) for r in rows)
    clock = statistics.median(float(r[1]) for r in rows)
    tflops = replays * ITERS * flop / elapsed / 1e12
    return {"tflops": round(tflops, 1), "power_w": round(power, 1), "sm_clock_mhz": round(clock),
            "temperature_c": round(statistics.median(float(r[2]) for r in rows)),
            "joules_per_pflop": round(power / tflops * 1e3, 1), "samples": len(rows), "seconds": round(elapsed, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--settle", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--family", default="dense", choices=["dense", "masked"])
    parser.add_argument("--configs", default="",
                        help="comma-separated FF_GEMM_TILE_CONFIG values timed as more sides (e.g. "
                             "cooperative_128x128_overlap)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch = import_cuda_torch("energy_gemm")
    if torch is None:
        return 0
    from fireflyer import gemm

    device = torch.cuda.get_device_name()
    torch.manual_seed(0)
    cases = []

    def dense_sides(m, n, k):
        x, w, a, sa, b, sb, out = dense_inputs(torch, gemm, m, n, k)
        a_row, s_row = row_scales(torch, x)
        b_row, t_row = row_scales(torch, w)
        b_row_t, t_row = b_row.t(), t_row.view(1, n)
        return {
            "ours": lambda: gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), out),
            "scaled_mm_rowwise": lambda: torch._scaled_mm(a_row, b_row_t, scale_a=s_row, scale_b=t_row,
                                                          out_dtype=torch.bfloat16),
        }

    def masked_sides(groups, m_max, n, k):
        # A's scales in DeepGEMM's TMA-aligned column-major layout per group, as callers hand them.
        x, w, a, _, sa, b, sb = masked_inputs(torch, gemm, groups, m_max, n, k)
        masked_m = torch.full((groups,), m_max, device="cuda", dtype=torch.int32)
        out = torch.empty(groups, m_max, n, device="cuda", dtype=torch.bfloat16)
        return {"ours": lambda: gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((a, sa), (b, sb), out, masked_m, m_max),
                "scaled_mm_rowwise": per_group_scaled_mm(torch, x, w)}

    shapes = SHAPES if args.family == "dense" else MASKED_SHAPES
    for shape in shapes:
        if args.family == "dense":
            m, n, k = shape
            groups = 1
            sides = dense_sides(m, n, k)
        else:
            groups, m, n, k = shape
            sides = masked_sides(groups, m, n, k)
        flop = 2.0 * groups * m * n * k
        os.environ.pop("FF_GEMM_TILE_CONFIG", None)

        def forced(config, call=sides["ours"]):
            def run():
                os.environ["FF_GEMM_TILE_CONFIG"] = config
                try:
                    call()
                finally:
                    os.environ.pop("FF_GEMM_TILE_CONFIG", None)
            return run

        for config in filter(None, args.configs.split(",")):
            sides[config] = forced(config)
        rounds = {name: [] for name in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in order:
                rounds[name].append(sustained(torch, sides[name], flop, args.seconds, args.settle))
        record = {"case": args.family, "groups": groups, "m": m, "n": n, "k": k, "device": device, "rounds": rounds}
        for name, runs in rounds.items():
            record[name] = {key: statistics.median(run[key] for run in runs)
                            for key in ("tflops", "power_w", "sm_clock_mhz", "joules_per_pflop")}
        for name in sides:
            if name not in ("ours", "scaled_mm_rowwise"):
                record[name]["ratio_tflops_vs_ours"] = round(record[name]["tflops"] / record["ours"]["tflops"], 3)
        record["ratio_tflops"] = round(record["ours"]["tflops"] / record["scaled_mm_rowwise"]["tflops"], 3)
        record["ratio_joules_per_pflop"] = round(
            record["ours"]["joules_per_pflop"] / record["scaled_mm_rowwise"]["joules_per_pflop"], 3)
        record["ratio_flop_per_clock"] = round(
            (record["ours"]["tflops"] / record["ours"]["sm_clock_mhz"]) /
            (record["scaled_mm_rowwise"]["tflops"] / record["scaled_mm_rowwise"]["sm_clock_mhz"]), 3)
        print(json.dumps({key: value for key, value in record.items() if key != "rounds"}), flush=True)
        cases.append(record)
        del sides
    name = device.lower().replace("nvidia ", "").split()[0]
    suffix = "" if args.family == "dense" else f"_{args.family}"
    path = pathlib.Path(args.out or REPO / "bench" / "results" / f"gemm_{name}_energy{suffix}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "benchmark": f"{args.family} FP8 GEMM at steady state beside torch._scaled_mm (cuBLASLt, row-wise scales; "
                     "one call per group for masked): each side "
                     f"a CUDA graph of {ITERS} calls replayed back to back for {args.seconds} s after {args.settle} s "
                     "of settling, nvidia-smi sampling power and SM clock every 100 ms; sides alternate order over "
                     f"{args.rounds} rounds; medians",
        "device": device, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": cases}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
