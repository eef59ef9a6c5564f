"""Benchmark of the gemm component's sm_90a kernels: prints one JSON line per case and writes
bench/results/gemm_<device>.json (device name inside).

Cases (DeepGEMM's, issue #8): dense m in {64, 128, 4096} x (n, k) in 6 DeepSeek-V3 shapes; grouped contiguous
(groups, m per group, n, k) x 4; grouped masked (groups, m, n, k) x 6. Beside each: torch._scaled_mm (cuBLASLt FP8
with row-wise fp32 scales, scale_a [m, 1], scale_b [1, n], bf16 out) and bf16 torch.matmul (cuBLAS), for grouped
cases one call per group captured together. Every figure is timed the same way in the same run: a CUDA graph of
ITERS launches, replayed untimed (at least WARMUP_REPLAYS times and WARMUP_SECONDS) and then REPEATS times, median
of cudaEvent times. Each record names the heuristic's choice ("heuristic"); grouped cases time it again at the end
("ours_again"). Unless --no-sweep: dense cases also time every tile configuration (FF_GEMM_TILE_CONFIG) to check
the heuristic, grouped cases every grouped configuration; large cases also the tile-scheduler walks in SCHEDULES
(FF_GEMM_SCHEDULE) under each configuration of SWEEP_CONFIGS. Contiguous A scales are passed in DeepGEMM's
TMA-aligned column-major layout (the indexed kernels' own layout; the ptr-array ones repack it), and the
heuristic's choice is also timed with row-major scales (repacked for the indexed kernels). Skips (exit 0) without
torch or a CUDA GPU.

Run from the repository root after a build:
  PYTHONPATH=python python3 bench/gemm/bench_gemm.py [--quick] [--no-sweep [--ab]] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import random
import statistics
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "python"))

DENSE_NK = [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]
DENSE_M = [64, 128, 4096]
CONTIGUOUS = [(4, 8192, 4096, 7168), (4, 8192, 7168, 2048), (8, 4096, 4096, 7168), (8, 4096, 7168, 2048)]
MASKED = [(1, 1024, 4096, 7168), (1, 1024, 7168, 2048), (2, 512, 4096, 7168), (2, 512, 7168, 2048),
          (4, 256, 4096, 7168), (4, 256, 7168, 2048)]
# Masked decode (groups, m_max, expected_m, n, k): the layout a low-latency expert-parallel dispatch hands the
# expert GEMMs (DeepSeek-V3's 256 experts over 16 or 8 ranks: 16 or 32 local experts, m_max = the dispatch's token
# capacity, tens of valid rows per expert); masked_m drawn around expected_m (0.5-1.5x, seeded). Bound by reading B
# (every expert's weights once): GB/s is the figure. The baseline runs _scaled_mm on each group's valid rows only
# (what a caller that knew the counts on the host could do).
MASKED_DECODE = [(16, 2048, 64, 4096, 7168), (16, 2048, 64, 7168, 2048), (32, 1024, 24, 4096, 7168)]
DECODE_CONFIGS = ["pingpong_64x128", "masked_pingpong_64x128", "masked_128x128_overlap"]
CONFIGS = ["pingpong_64x128", "cooperative_128x128", "cooperative_128x128_cluster2x1", "cooperative_128x192",
           "cooperative_128x112", "cooperative_128x128_overlap", "cooperative_128x128_stagger", "pingpong_64x64",
           "pingpong_64x32", "pingpong_64x16", "pingpong_64x192", "pingpong_64x16_overlap", "pingpong_64x32_overlap",
           "pingpong_64x64_overlap", "pingpong_64x128_overlap", "cooperative_256x128",
           "cooperative_256x128_cluster1x2"]
CONTIGUOUS_CONFIGS = ["cooperative_128x128", "indexed_128x128", "indexed_128x128_cluster1x2", "indexed_128x192",
                      "indexed_256x128_cluster1x2",
                      "indexed_128x128_overlap", "indexed_128x128_stagger"]
MASKED_CONFIGS = ["pingpong_64x128", "cooperative_128x128", "cooperative_128x128_cluster2x1", "cooperative_128x192",
                  "cooperative_128x112", "cooperative_128x128_overlap", "cooperative_128x128_stagger",
                  "masked_128x128_overlap", "masked_pingpong_64x128"]
# Tile-scheduler walks (FF_GEMM_SCHEDULE=<raster>[:<swizzle>]; "default" = CUTLASS's own choice) timed for the large
# shapes, each under the configurations of SWEEP_CONFIGS (the 128-row tiles the heuristic may pick there).
SCHEDULES = ["default", "m", "n", "m:2", "n:2", "m:4", "n:4", "m:8", "n:8"]
SWEEP_CONFIGS = {"dense": ["cooperative_128x128", "cooperative_128x192"],
                 "contiguous": ["indexed_128x128", "indexed_128x192"],
                 "masked": ["cooperative_128x128", "cooperative_128x192"]}
# --ab (without the sweep): the 128x128 consumers A/B in the same run, each under the heuristic's walk for it: CUTLASS's
# promotion after each K block's WGMMAs, two K blocks in flight per warpgroup ("overlap"), the two warpgroups
# taking turns ("stagger"); for the large dense cases, all contiguous and all masked cases.
AB_CONFIGS = {"dense": ["cooperative_128x128", "cooperative_128x128_overlap", "cooperative_128x128_stagger"],
              "contiguous": ["indexed_128x128", "indexed_128x128_overlap", "indexed_128x128_stagger"],
              "masked": ["cooperative_128x128_overlap", "masked_128x128_overlap"]}
# --ab tiles: the tile widths A/B (CUTLASS's consumer at 128, WideTileMma at 112 and 192), for every dense case and all
# masked cases.
TILE_AB_CONFIGS = {"dense": ["cooperative_128x128", "cooperative_128x112", "cooperative_128x192"],
                   "contiguous": ["indexed_128x128_overlap", "indexed_128x192"],
                   "masked": ["cooperative_128x128", "cooperative_128x112", "cooperative_128x192"]}
# --ab narrow: for the dense cases with m < 4096, the 64-row tiles of each width and the 128x128 tile.
NARROW_AB_CONFIGS = ["pingpong_64x128", "pingpong_64x64", "pingpong_64x32", "pingpong_64x16", "pingpong_64x192",
                     "pingpong_64x16_overlap", "pingpong_64x32_overlap", "pingpong_64x64_overlap",
                     "pingpong_64x128_overlap", "cooperative_128x128"]
ITERS = 10
REPEATS = 11
WARMUP_REPLAYS = 3
WARMUP_SECONDS = 0.06  # replays before timing: the first timing of a case ran up to 22% low with 3 replays only


def import_cuda_torch(tool: str):
    """torch, when it is installed and sees a CUDA GPU; else prints why `tool` skips and returns None."""
    try:
        import torch
    except ImportError:
        print(f"{tool}: skipped (torch is not installed)")
        return None
    if not torch.cuda.is_available():
        print(f"{tool}: skipped (no CUDA GPU)")
        return None
    return torch


def capture_graph(torch, fn, iters: int = ITERS):
    """A CUDA graph of `iters` calls of fn, captured after one call outside it (module load, workspace pools)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    return graph


def time_graph(torch, fn) -> float:
    """Seconds per call of fn: a CUDA graph of ITERS calls, replayed REPEATS times, median."""
    graph = capture_graph(torch, fn)
    # Let clocks and caches settle before timing: at least WARMUP_REPLAYS replays and WARMUP_SECONDS of them.
    begin = time.perf_counter()
    replays = 0
    while replays < WARMUP_REPLAYS or time.perf_counter() - begin < WARMUP_SECONDS:
        graph.replay()
        replays += 1
        if replays % 2 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / ITERS)
    return statistics.median(times)


def quantize_rows(torch, x):
    """Per-token 1x128 cast on the GPU (the same formula as fireflyer.gemm.per_token_cast_to_fp8)."""
    m, k = x.shape
    view = x.float().view(m, k // 128, 128)
    amax = view.abs().amax(dim=2).clamp(min=1e-4)
    q = (view * (448.0 / amax).unsqueeze(2)).to(torch.float8_e4m3fn).view(m, k)
    return q, (amax / 448.0).contiguous()


def quantize_blocks(torch, w):
    """Per-block 128x128 cast on the GPU (rows padded with zeros to a multiple of 128, like the anchor's cast)."""
    n, k = w.shape
    nb = (n + 127) // 128
    padded = torch.zeros(nb * 128, k, device=w.device, dtype=torch.float32)
    padded[:n] = w.float()
    view = padded.view(nb, 128, k // 128, 128)
    amax = view.abs().amax(dim=(1, 3)).clamp(min=1e-4)
    q = (view * (448.0 / amax).view(nb, 1, k // 128, 1)).to(torch.float8_e4m3fn).view(nb * 128, k)
    return q[:n].contiguous(), (amax / 448.0).contiguous()


def row_scales(torch, x):
    """Row-wise fp8 for the _scaled_mm baseline: one scale per row."""
    amax = x.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-4)
    return (x.float() * (448.0 / amax)).to(torch.float8_e4m3fn), (amax / 448.0).float()


def dense_inputs(torch, gemm, m, n, k):
    """Random bf16 x (m, k) and w (n, k), their FP8 casts (A scales TMA-aligned column-major) and a bf16 output."""
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    a, sa = quantize_rows(torch, x)
    sa = gemm.get_col_major_tma_aligned_tensor(sa)
    b, sb = quantize_blocks(torch, w)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    return x, w, a, sa, b, sb, out


def masked_inputs(torch, gemm, groups, m_max, n, k):
    """Random bf16 x (G, m_max, k) and w (G, n, k) and their FP8 casts: a, A's scales row-major (sa_rows) and in
    DeepGEMM's TMA-aligned column-major layout per group (sa, as callers hand them), b and sb."""
    x = torch.randn(groups, m_max, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(groups, n, k, device="cuda", dtype=torch.bfloat16)
    a, sa = quantize_rows(torch, x.view(-1, k))
    sa_rows = sa.view(groups, m_max, k // 128)
    qs = [quantize_blocks(torch, w[g]) for g in range(groups)]
    b = torch.stack([q for q, _ in qs])
    sb = torch.stack([s for _, s in qs])
    return x, w, a.view(groups, m_max, k), sa_rows, gemm.get_col_major_tma_aligned_tensor(sa_rows), b, sb


def per_group_scaled_mm(torch, x, w, valid_rows=None):
    """The grouped baseline: one torch._scaled_mm (row-wise scales) per group of x (G, m, k) and w (G, n, k), over
    the first valid_rows[g] rows of each group when given (counts known on the host), else all of them."""
    groups, n = x.shape[0], w.shape[1]
    valid_rows = valid_rows or [x.shape[1]] * groups
    rows = [row_scales(torch, x[g, :valid_rows[g]]) for g in range(groups)]
    cols = [row_scales(torch, w[g]) for g in range(groups)]

    def scaled_all():
        for g in range(groups):
            torch._scaled_mm(rows[g][0], cols[g][0].t(), scale_a=rows[g][1], scale_b=cols[g][1].view(1, n),
                             out_dtype=torch.bfloat16)

    return scaled_all


def per_schedule(torch, flop, fn, configs) -> dict:
    """{config: {schedule: TFLOPS}} of fn under each FF_GEMM_SCHEDULE variant for each forced configuration."""
    result = {}
    for config in configs:
        os.environ["FF_GEMM_TILE_CONFIG"] = config
        result[config] = {}
        for schedule in SCHEDULES:
            os.environ["FF_GEMM_SCHEDULE"] = schedule
            result[config][schedule] = round(flop / time_graph(torch, fn) / 1e12, 1)
    os.environ.pop("FF_GEMM_SCHEDULE", None)
    os.environ.pop("FF_GEMM_TILE_CONFIG", None)
    return result


def per_config(torch, flop, fn, configs) -> dict:
    """{config: TFLOPS} of fn under each forced configuration (the heuristic's schedule for it)."""
    result = {}
    for config in configs:
        os.environ["FF_GEMM_TILE_CONFIG"] = config
        result[config] = round(flop / time_graph(torch, fn) / 1e12, 1)
    os.environ.pop("FF_GEMM_TILE_CONFIG", None)
    return result


def grouped_diff(torch, a, sa_rows, b, sb, out, segments) -> float:
    """calc_diff of out against the float32 product of the dequantised inputs over (row_begin, row_end, group)."""
    num, den = 0.0, 0.0
    k = a.shape[1]
    for begin, end, g in segments:
        deq_a = (a[begin:end].float().view(end - begin, k // 128, 128) * sa_rows[begin:end].unsqueeze(2)).view(
            end - begin, k)
        n = b.shape[1]
        deq_b = b[g].float() * sb[g].repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)
        ref = (deq_a @ deq_b.t()).double()
        o = out[begin:end].double()
        num += (o * ref).sum().item()
        den += ((o * o) + (ref * ref)).sum().item()
    return 1 - 2 * num / den


def heuristic_choice(gemm, kind, rows, n, k, groups, num_sms):
    """The heuristic's '<configuration> <raster>:<swizzle>' for the case."""
    return gemm.heuristic_choice(kind, rows, n, k, groups, num_sms)


def device_slug(device: str) -> str:
    """The device's part of a results file name ("h200" for any H200)."""
    return "h200" if "H200" in device else device.lower().replace(" ", "_")


def force_config(config: str) -> None:
    """FF_GEMM_TILE_CONFIG=config for the calls captured next; "" = the heuristic's choice."""
    if config:
        os.environ["FF_GEMM_TILE_CONFIG"] = config
    else:
        os.environ.pop("FF_GEMM_TILE_CONFIG", None)


def figures(flop: float, bytes_moved: float, seconds: float) -> dict:
    return {"us": round(seconds * 1e6, 2), "tflops": round(flop / seconds / 1e12, 1),
            "gbps": round(bytes_moved / seconds / 1e9, 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the first shape of each family only")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/gemm_<device>.json)")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false",
                        help="time only the heuristic's choice and the baselines (no per-configuration/schedule sweep)")
    parser.add_argument("--ab", nargs="?", const="consumers", default=None, choices=["consumers", "tiles", "narrow"],
                        help="with --no-sweep: also time the 128x128 consumers of AB_CONFIGS (tflops_per_config), "
                             "with 'tiles' the tile widths of TILE_AB_CONFIGS, with 'narrow' the 64-row tiles of "
                             "NARROW_AB_CONFIGS on the dense cases with m < 4096")
    parser.add_argument("--families", default="dense,contiguous,masked,decode",
                        help="comma-separated subset of dense, contiguous, masked, decode (masked decode layouts)")
    args = parser.parse_args()
    families = set(args.families.split(","))
    ab_configs = TILE_AB_CONFIGS if args.ab == "tiles" else AB_CONFIGS
    torch = import_cuda_torch("bench_gemm")
    if torch is None:
        return 0
    from fireflyer import gemm

    device = torch.cuda.get_device_name()
    num_sms = gemm.get_num_sms()
    torch.manual_seed(0)
    results = []

    def emit(record):
        results.append(record)
        print(json.dumps(record), flush=True)

    dense_m = DENSE_M[:1] if args.quick else DENSE_M
    dense_nk = DENSE_NK[:1] if args.quick else DENSE_NK
    for m in dense_m if "dense" in families else []:
        for n, k in dense_nk:
            x, w, a, sa, b, sb, out = dense_inputs(torch, gemm, m, n, k)
            flop = 2.0 * m * n * k
            bytes_moved = m * k + n * k + 2 * m * n
            os.environ.pop("FF_GEMM_TILE_CONFIG", None)
            ours = time_graph(torch, lambda: gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), out))
            choice = heuristic_choice(gemm, "dense", m, n, k, 1, num_sms)
            # Correctness of the timed output against bf16 matmul of the dequantised inputs.
            deq_a = (a.float().view(m, k // 128, 128) * sa.unsqueeze(2)).view(m, k)
            deq_b = b.float() * sb.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)
            ref = deq_a @ deq_b.t()
            o = out.double()
            diff = 1 - 2 * (o * ref.double()).sum().item() / ((o * o) + (ref.double() ** 2)).sum().item()
            call = lambda: gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), out)  # noqa: E731
            configs = per_config(torch, flop, call, CONFIGS) if args.sweep else None
            if not args.sweep and args.ab == "narrow":
                configs = per_config(torch, flop, call, NARROW_AB_CONFIGS) if m < 4096 else None
            elif not args.sweep and args.ab and (m >= 4096 or args.ab == "tiles"):
                configs = per_config(torch, flop, call, ab_configs["dense"])
            schedules = per_schedule(torch, flop, call, SWEEP_CONFIGS["dense"]) if args.sweep and m >= 4096 else None
            a_row, s_row = row_scales(torch, x)
            b_row, t_row = row_scales(torch, w)
            t_row = t_row.view(1, n)
            b_row_t = b_row.t()
            scaled = time_graph(torch, lambda: torch._scaled_mm(a_row, b_row_t, scale_a=s_row, scale_b=t_row,
                                                                out_dtype=torch.bfloat16))
            wt = w.t()
            bf16 = time_graph(torch, lambda: torch.matmul(x, wt))
            emit({"case": "dense", "m": m, "n": n, "k": k, "device": device, "ours": figures(flop, bytes_moved, ours),
                  "scaled_mm_rowwise": figures(flop, bytes_moved, scaled),
                  "bf16_matmul": figures(flop, 2 * bytes_moved, bf16),
                  "ratio_vs_scaled_mm": round(scaled / ours, 3), "ratio_vs_bf16": round(bf16 / ours, 3),
                  "calc_diff_vs_dequantised": diff, "heuristic": choice, "tflops_per_config": configs,
                  "tflops_per_schedule": schedules})
            del x, w, a, b, out, deq_a, deq_b, ref, o

    contiguous = CONTIGUOUS[:1] if args.quick else CONTIGUOUS
    for groups, m_per, n, k in contiguous if "contiguous" in families else []:
        m = groups * m_per
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(groups, n, k, device="cuda", dtype=torch.bfloat16)
        a, sa_rows = quantize_rows(torch, x)
        sa = gemm.get_col_major_tma_aligned_tensor(sa_rows)
        qs = [quantize_blocks(torch, w[g]) for g in range(groups)]
        b = torch.stack([q for q, _ in qs])
        sb = torch.stack([s for _, s in qs])
        m_indices = torch.arange(groups, device="cuda", dtype=torch.int32).repeat_interleave(m_per)
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        flop = 2.0 * m * n * k
        bytes_moved = m * k + groups * n * k + 2 * m * n
        os.environ.pop("FF_GEMM_TILE_CONFIG", None)
        ours = time_graph(torch, lambda: gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, sa), (b, sb), out,
                                                                                          m_indices))
        # Correctness of the timed output against the dequantised product, per group.
        diff = grouped_diff(torch, a, sa_rows, b, sb, out, [(g * m_per, (g + 1) * m_per, g) for g in range(groups)])
        ours_rows = time_graph(torch, lambda: gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, sa_rows), (b, sb),
                                                                                               out, m_indices))
        call = lambda: gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, sa), (b, sb), out, m_indices)  # noqa: E731
        configs = per_config(torch, flop, call, CONTIGUOUS_CONFIGS) if args.sweep else None
        if not args.sweep and args.ab:
            configs = per_config(torch, flop, call, ab_configs["contiguous"])
        schedules = per_schedule(torch, flop, call, SWEEP_CONFIGS["contiguous"]) if args.sweep else None
        again = time_graph(torch, call)
        choice = heuristic_choice(gemm, "contiguous", m_per, n, k, groups, num_sms)
        scaled_all = per_group_scaled_mm(torch, x.view(groups, m_per, k), w)

        def bf16_all():
            for g in range(groups):
                torch.matmul(x[g * m_per:(g + 1) * m_per], w[g].t())

        scaled = time_graph(torch, scaled_all)
        bf16 = time_graph(torch, bf16_all)
        emit({"case": "contiguous", "groups": groups, "m_per_group": m_per, "n": n, "k": k, "device": device,
              "ours": figures(flop, bytes_moved, ours), "scaled_mm_rowwise": figures(flop, bytes_moved, scaled),
              "bf16_matmul": figures(flop, 2 * bytes_moved, bf16), "ratio_vs_scaled_mm": round(scaled / ours, 3),
              "ratio_vs_bf16": round(bf16 / ours, 3), "calc_diff_vs_dequantised": diff,
              "ours_row_major_scales": figures(flop, bytes_moved, ours_rows),
              "ours_again": figures(flop, bytes_moved, again), "heuristic": choice,
              "tflops_per_config": configs, "tflops_per_schedule": schedules})
        del x, w, a, b, out

    masked = MASKED[:1] if args.quick else MASKED
    for groups, m_max, n, k in masked if "masked" in families else []:
        # A's scales in DeepGEMM's layout (M-major per group, TMA-aligned), as callers hand them; row-major timed too.
        x, w, a, sa_rows, sa, b, sb = masked_inputs(torch, gemm, groups, m_max, n, k)
        masked_m = torch.full((groups,), m_max, device="cuda", dtype=torch.int32)
        out = torch.empty(groups, m_max, n, device="cuda", dtype=torch.bfloat16)
        flop = 2.0 * groups * m_max * n * k
        bytes_moved = groups * (m_max * k + n * k + 2 * m_max * n)
        os.environ.pop("FF_GEMM_TILE_CONFIG", None)
        ours = time_graph(torch, lambda: gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((a, sa), (b, sb), out, masked_m,
                                                                                      m_max))
        ours_rows = time_graph(torch, lambda: gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((a, sa_rows), (b, sb), out,
                                                                                           masked_m, m_max))
        diff = grouped_diff(torch, a.view(groups * m_max, k), sa_rows.reshape(groups * m_max, k // 128), b, sb,
                            out.view(groups * m_max, n), [(g * m_max, (g + 1) * m_max, g) for g in range(groups)])
        call = lambda: gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((a, sa), (b, sb), out, masked_m, m_max)  # noqa: E731
        configs = per_config(torch, flop, call, MASKED_CONFIGS) if args.sweep else None
        if not args.sweep and args.ab:
            configs = per_config(torch, flop, call, ab_configs["masked"])
        schedules = per_schedule(torch, flop, call, SWEEP_CONFIGS["masked"]) if args.sweep else None
        again = time_graph(torch, call)
        # Part of each group's rows valid (53-93 %, not whole 128-row tiles, as a dispatch leaves them): the time
        # should follow the valid rows. FLOP and A bytes counted over those.
        part = [int(m_max * (0.53 + 0.4 * (g + 0.5) / groups)) for g in range(groups)]
        part_m = torch.tensor(part, device="cuda", dtype=torch.int32)
        partial_call = lambda: gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked(  # noqa: E731
            (a, sa), (b, sb), out, part_m, sum(part) // groups)
        partial_flop = 2.0 * sum(part) * n * k
        partial_bytes = sum(part) * (k + 2 * n) + groups * n * k
        partial = time_graph(torch, partial_call)
        partial_scaled = time_graph(torch, per_group_scaled_mm(torch, x, w, part))
        partial_configs = per_config(torch, partial_flop, partial_call, ab_configs["masked"]) if args.ab else None
        # Every row is valid here (masked_m = m_max, a multiple of 128), so the same product is also a contiguous
        # layout: the contiguous (indexed) kernel's time is what running masked on it would cost at best.
        m_indices = torch.arange(groups, device="cuda", dtype=torch.int32).repeat_interleave(m_max)
        sa_flat = gemm.get_col_major_tma_aligned_tensor(sa_rows.reshape(groups * m_max, k // 128).contiguous())
        a_flat, out_flat = a.view(groups * m_max, k), out.view(groups * m_max, n)
        as_contiguous = time_graph(torch, lambda: gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(
            (a_flat, sa_flat), (b, sb), out_flat, m_indices))
        choice = heuristic_choice(gemm, "masked", m_max, n, k, groups, num_sms)
        scaled_all = per_group_scaled_mm(torch, x, w)

        def bf16_all():
            for g in range(groups):
                torch.matmul(x[g], w[g].t())

        scaled = time_graph(torch, scaled_all)
        bf16 = time_graph(torch, bf16_all)
        emit({"case": "masked", "groups": groups, "m": m_max, "n": n, "k": k, "device": device,
              "ours": figures(flop, bytes_moved, ours), "scaled_mm_rowwise": figures(flop, bytes_moved, scaled),
              "bf16_matmul": figures(flop, 2 * bytes_moved, bf16), "ratio_vs_scaled_mm": round(scaled / ours, 3),
              "ratio_vs_bf16": round(bf16 / ours, 3), "calc_diff_vs_dequantised": diff,
              "ours_row_major_scales": figures(flop, bytes_moved, ours_rows),
              "masked_m_partial": part,
              "ours_partial_rows_valid": figures(partial_flop, partial_bytes, partial),
              "scaled_mm_rowwise_partial_rows_valid": figures(partial_flop, partial_bytes, partial_scaled),
              "tflops_per_config_partial_rows": partial_configs,
              "ours_again": figures(flop, bytes_moved, again), "heuristic": choice,
              "as_contiguous_indexed": figures(flop, bytes_moved, as_contiguous),
              "tflops_per_config": configs, "tflops_per_schedule": schedules})
        del x, w, a, b, out

    decode = MASKED_DECODE[:1] if args.quick else MASKED_DECODE
    for groups, m_max, expected_m, n, k in decode if "decode" in families else []:
        rng = random.Random(groups * 100003 + n)
        rows = [rng.randint(expected_m // 2, expected_m * 3 // 2) for _ in range(groups)]
        x, w, a, sa_rows, sa, b, sb = masked_inputs(torch, gemm, groups, m_max, n, k)
        masked_m = torch.tensor(rows, device="cuda", dtype=torch.int32)
        out = torch.empty(groups, m_max, n, device="cuda", dtype=torch.bfloat16)
        valid = sum(rows)
        flop = 2.0 * valid * n * k
        bytes_moved = groups * n * k + valid * (k + 2 * n)
        call = lambda: gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked(  # noqa: E731
            (a, sa), (b, sb), out, masked_m, expected_m)
        os.environ.pop("FF_GEMM_TILE_CONFIG", None)
        ours = time_graph(torch, call)
        diff = grouped_diff(torch, a.view(groups * m_max, k), sa_rows.reshape(groups * m_max, k // 128), b, sb,
                            out.view(groups * m_max, n), [(g * m_max, g * m_max + r, g) for g, r in enumerate(rows)])
        configs = per_config(torch, flop, call, DECODE_CONFIGS)
        scaled = time_graph(torch, per_group_scaled_mm(torch, x, w, rows))
        choice = heuristic_choice(gemm, "masked", expected_m, n, k, groups, num_sms)
        emit({"case": "masked_decode", "groups": groups, "m": m_max, "expected_m": expected_m, "masked_m": rows,
              "n": n, "k": k, "device": device, "ours": figures(flop, bytes_moved, ours),
              "scaled_mm_rowwise_valid_rows": figures(flop, bytes_moved, scaled),
              "ratio_vs_scaled_mm": round(scaled / ours, 3), "calc_diff_vs_dequantised": diff, "heuristic": choice,
              "tflops_per_config": configs,
              "gbps_per_config": {c: round(bytes_moved * tf * 1e3 / flop, 1) for c, tf in configs.items()}})
        del x, w, a, b, out

    dense = [r for r in results if r["case"] == "dense"]
    summary = {
        "device": device,
        "geomean_ratio_vs_scaled_mm_dense": round(
            math.exp(statistics.fmean(math.log(r["ratio_vs_scaled_mm"]) for r in dense)), 3) if dense else None,
        "max_tflops_dense": max((r["ours"]["tflops"] for r in dense), default=None),
        "min_tflops_contiguous": min((r["ours"]["tflops"] for r in results if r["case"] == "contiguous"),
                                     default=None),
        "min_tflops_masked": min((r["ours"]["tflops"] for r in results if r["case"] == "masked"), default=None),
        "min_gbps_masked_decode": min((r["ours"]["gbps"] for r in results if r["case"] == "masked_decode"),
                                      default=None),
        "method": f"CUDA graph of {ITERS} calls, {WARMUP_REPLAYS} untimed then {REPEATS} timed replays, median; "
                  "same run for all columns",
    }
    print(json.dumps({"summary": summary}), flush=True)
    path = pathlib.Path(args.out) if args.out else REPO_ROOT / "bench" / "results" / f"gemm_{device_slug(device)}.json"
    path.write_text(json.dumps({"summary": summary, "cases": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
