"""Benchmark of the sm_90a MLA decode kernel (fireflyer.mla on CUDA tensors) beside torch in the same run.

Shapes (issue #7): b = 128, s_q 1 and 2, h_q 16 and 128, h_kv 1, d_qk 576, d_v 512, page 64; cache
lengths 1K, 4K, 8K, 16K, 32K, fixed (every sequence that long) and variable (uniform in [L/2, 3L/2],
seeded); non-causal; our kernel on the paged bf16 cache and on the FP8 cache (656 bytes per token);
where s_q * h_q >= 64 (the WGMMA kernels) also the bf16 TMA WGMMA kernel with each lean schedule named
(FF_MLA_SCHEDULE=lean, lean_bar3, lean_fold, lean2, lean2_early: `ours_bf16_<schedule>`; the default,
`ours_bf16`, is one of them), with the pipelined warpgroup
schedule without the lean changes (FF_MLA_SCHEDULE=pipelined:
`ours_bf16_pipelined`), with the seesaw schedule (FF_MLA_SCHEDULE=seesaw: `ours_bf16_seesaw`), with
its former cp.async loads instead of TMA (FF_MLA_LOADS=cp_async: `ours_bf16_cp_async`) and the mma.sync kernels on the same
shapes (FF_MLA_KERNEL=mma_sync: `ours_*_mma_sync`); where s_q * h_q < 64 the bf16 mma.sync kernel
(`ours_bf16_mma_sync`); `kernel` names the kernel that ran.
Baselines, on a contiguous (b, L_max, 576) copy of the same cache (a layout that favours them):
torch SDPA (F.scaled_dot_product_attention over one head of s_q * h_q query rows, since h_kv = 1; a
boolean mask for variable lengths) and
bmm + softmax (fp32 softmax). Every candidate is captured in a CUDA graph of `--calls` calls and timed
by cudaEvents around graph replays (median of `--repeats`).

Figures: time per call; GB/s = (KV bytes of the lengths + q + out) / time; TFLOPS =
2 * s_q * sum(len) * h_q * (576 + 512) / time. One JSON line per case on stdout; everything, with the
device name, in bench/results/mla_<device>.json. Exits 0 with a message where no GPU is present.
Usage: PYTHONPATH=python python3 bench/mla/bench_mla.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import random
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(REPO_ROOT / "python"))

BATCH = 128
PAGE = 64


def skip(message: str) -> int:
    print(json.dumps({"benchmark": "mla", "skipped": message}))
    return 0


def gpu_or_reason():
    """(torch, mla, device name, file-name slug, SM count) where the kernels can run, else the reason they cannot."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    from fireflyer import _C, mla

    if not _C.mla.HAS_CUDA:
        return "fireflyer was built without the mla CUDA kernels"
    device_name = torch.cuda.get_device_name()
    slug = "h200" if "H200" in device_name else "h100" if "H100" in device_name else device_name.lower().replace(" ", "_")
    return torch, mla, device_name, slug, torch.cuda.get_device_properties(0).multi_processor_count


def capture_graph(function, calls: int):
    """`function` warmed up on a side stream, then captured `calls` times in one CUDA graph, replayed once."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            function()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            function()
    graph.replay()
    torch.cuda.synchronize()
    return graph


def replay_median(graph, calls: int, repeats: int) -> float:
    """Median milliseconds per call over `repeats` timed replays of a CUDA graph holding `calls` calls."""
    import torch

    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / calls)
    return statistics.median(samples)


def time_graph(function, calls: int, repeats: int) -> float:
    """Median milliseconds per call of `function`, captured `calls` times in one CUDA graph."""
    graph = capture_graph(function, calls)
    ms = replay_median(graph, calls, repeats)
    del graph
    return ms


def sustained_ms(graph, calls: int, seconds: float, settle: float = 0.5) -> float:
    """Milliseconds per call while a CUDA graph of `calls` calls replays back to back: `settle` seconds
    untimed (the clocks and power settle to this kernel's steady state), then `seconds` timed by events."""
    import torch

    # Replay counts from a short timing, so the host does not queue seconds of work ahead of the GPU.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        graph.replay()
    end.record()
    end.synchronize()
    replay_ms = max(start.elapsed_time(end) / 3, 1e-3)
    for _ in range(max(1, round(settle * 1000 / replay_ms))):
        graph.replay()
    replays = max(1, round(seconds * 1000 / replay_ms))
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / (replays * calls)


def result_header(benchmark: str, torch, device_name: str, num_sms: int, timing: str) -> dict:
    """The fields every results file of this script starts with."""
    return {
        "benchmark": benchmark,
        "device": device_name,
        "num_sms": num_sms,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "timing": timing,
    }


def quantize_fp8(cache):
    """bf16 (blocks, 64, 1, 576) -> the 656-byte FP8 layout, on the GPU (the library's quantizer runs on
    the CPU; the tests check it, this only needs the layout)."""
    import torch

    latent = cache[..., :512].float().unflatten(-1, (4, 128))
    scale = latent.abs().amax(dim=-1, keepdim=True) / 448.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = (latent / scale).to(torch.float8_e4m3fn).view(torch.uint8).flatten(-2)
    scales = scale.squeeze(-1).contiguous().view(torch.uint8)
    rope = cache[..., 512:].contiguous().view(torch.uint8)
    return torch.cat([codes, scales, rope], dim=-1).contiguous()


def cos_diff(x, y) -> float:
    x, y = x.double(), y.double()
    return float(1 - 2 * (x * y).sum() / (x * x + y * y).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lengths 4K and 8K, fixed only")
    parser.add_argument("--h-q", type=int, nargs="+", default=[16, 128], help="query heads to run")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--fp8-ab", action="store_true",
                        help="only the FP8 A/B of issue #7: h_q 16, s_q 1 (and --s-q), fixed 4K-32K; the bf16 "
                             "kernel and each FP8 kernel for <= 32 rows (--candidates: FF_MLA_FP8=direct, pair, wide, channels) in "
                             "--rounds rounds of alternating order, medians over the rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--candidates", default=FP8_AB_DEFAULT,
                        help=f"--fp8-ab candidates, from {','.join(FP8_AB_KNOWN)} (the first is the bf16 reference)")
    parser.add_argument("--s-q", type=int, nargs="+", default=[1], help="query tokens for --fp8-ab")
    parser.add_argument("--ab-lengths", default="4096,8192,16384,32768", help="mean lengths for --fp8-ab")
    parser.add_argument("--ab-h-q", type=int, default=16,
                        help="query heads for --fp8-ab (128: the bf16 WGMMA schedules against each other, "
                             "candidates bf16,bf16_lean,...)")
    parser.add_argument("--ab-variable", action="store_true",
                        help="--fp8-ab also with variable lengths (uniform in [L/2, 3L/2], as the benchmark draws them)")
    parser.add_argument("--sustained", type=float, default=0.0,
                        help="--fp8-ab: time each candidate over this many seconds of back-to-back replays (after "
                             "0.5 s untimed), the steady state under the GPU's power cap, instead of 7 short replays")
    parser.add_argument("--probe", action="store_true",
                        help="also time the load pipeline alone (s_q 1, h_q 16) and the WGMMA kernel without "
                             "its S MMAs, P V MMAs or softmax (FF_MLA_PROBE_SKIP), diagnostics")
    args = parser.parse_args()
    gpu = gpu_or_reason()
    if isinstance(gpu, str):
        return skip(gpu)
    torch, mla, device_name, slug, num_sms = gpu
    import torch.nn.functional as F

    out_path = args.out or REPO_ROOT / "bench" / "results" / f"mla_{slug}.json"
    if args.fp8_ab:
        return fp8_ab(args, torch, mla, device_name, num_sms, out_path)
    lengths = [4096, 8192] if args.quick else [1024, 4096, 8192, 16384, 32768]
    variants = [False] if args.quick else [False, True]
    generator = torch.Generator().manual_seed(2025)
    cases = []
    started = time.time()
    for variable in variants:
        for length in lengths:
            if variable:
                seqlens = torch.randint(length // 2, length * 3 // 2 + 1, (BATCH,), generator=generator)
            else:
                seqlens = torch.full((BATCH,), length)
            seqlens = seqlens.int()
            total = int(seqlens.sum())
            max_len = int(seqlens.max())
            blocks = (seqlens + PAGE - 1) // PAGE
            num_blocks = int(blocks.sum())
            max_blocks = int(blocks.max())
            block_table = torch.zeros((BATCH, max_blocks), dtype=torch.int32)
            physical = torch.randperm(num_blocks, generator=generator).int()
            offset = 0
            for i in range(BATCH):
                block_table[i, : blocks[i]] = physical[offset : offset + blocks[i]]
                offset += int(blocks[i])
            block_table = block_table.cuda()
            seqlens_gpu = seqlens.cuda()
            cache = torch.randn((num_blocks, PAGE, 1, 576), dtype=torch.bfloat16, device="cuda")
            cache_fp8 = quantize_fp8(cache)
            # The baselines' contiguous copy: (b, 1, L_max, 576), zero past each length, plus the mask.
            pages = block_table.long()
            dense = cache[pages].reshape(BATCH, max_blocks * PAGE, 576)[:, :max_len].unsqueeze(1).contiguous()
            positions = torch.arange(max_len, device="cuda")
            valid = positions[None, :] < seqlens_gpu[:, None]  # (b, L_max)
            dense.masked_fill_(~valid[:, None, :, None], 0)
            for s_q in (1, 2):
                for h_q in args.h_q:
                    q = torch.randn((BATCH, s_q, h_q, 576), dtype=torch.bfloat16, device="cuda")
                    metadata, splits = mla.get_mla_metadata(seqlens_gpu, s_q * h_q, 1, num_sms=num_sms)
                    flops = 2.0 * s_q * total * h_q * (576 + 512)
                    io_bytes = q.numel() * 2 + BATCH * s_q * h_q * 512 * 2
                    case = {"b": BATCH, "s_q": s_q, "h_q": h_q, "h_kv": 1, "mean_len": length,
                            "lengths": "variable" if variable else "fixed", "sum_len": total, "causal": False}

                    def ours(fp8: bool):
                        kv = cache_fp8 if fp8 else cache
                        return mla.flash_mla_with_kvcache(q, kv, block_table, seqlens_gpu, 512, metadata, splits,
                                                          is_fp8_kvcache=fp8, check_values=False)

                    # h_kv = 1: every query row of a sequence attends to the same keys, so SDPA sees one head
                    # of s_q * h_q rows (no GQA expansion of the cache, which would not fit at 32K).
                    q_heads = q.reshape(BATCH, 1, s_q * h_q, 576)
                    mask = valid[:, None, None, :] if variable else None

                    def sdpa():
                        return F.scaled_dot_product_attention(q_heads, dense, dense[..., :512], attn_mask=mask)

                    q_rows = q.reshape(BATCH, s_q * h_q, 576)
                    keys = dense.squeeze(1)
                    scale = 1 / math.sqrt(576)

                    def bmm_softmax():
                        scores = torch.bmm(q_rows, keys.transpose(1, 2)).float() * scale
                        if variable:
                            scores.masked_fill_(~valid[:, None, :], -math.inf)
                        weights = torch.softmax(scores, dim=-1).to(torch.bfloat16)
                        return torch.bmm(weights, keys[..., :512])

                    figures = {}
                    candidates = [
                        ("ours_bf16", lambda: ours(False), 576 * 2, {}),
                        ("ours_fp8", lambda: ours(True), 656, {}),
                        ("torch_sdpa", sdpa, 576 * 2, {}),
                        ("torch_bmm_softmax", bmm_softmax, 576 * 2, {}),
                    ]
                    if s_q * h_q >= 64:
                        # The WGMMA kernel with cp.async loads (FF_MLA_LOADS), and the mma.sync kernels on the
                        # shapes the WGMMA kernel now takes (FF_MLA_KERNEL).
                        candidates += [
                            ("ours_bf16_lean", lambda: ours(False), 576 * 2, {"FF_MLA_SCHEDULE": "lean"}),
                            ("ours_bf16_lean_bar3", lambda: ours(False), 576 * 2, {"FF_MLA_SCHEDULE": "lean_bar3"}),
                            ("ours_bf16_lean_fold", lambda: ours(False), 576 * 2, {"FF_MLA_SCHEDULE": "lean_fold"}),
                            ("ours_bf16_lean2", lambda: ours(False), 576 * 2, {"FF_MLA_SCHEDULE": "lean2"}),
                            ("ours_bf16_lean2_early", lambda: ours(False), 576 * 2,
                             {"FF_MLA_SCHEDULE": "lean2_early"}),
                            ("ours_bf16_pipelined", lambda: ours(False), 576 * 2, {"FF_MLA_SCHEDULE": "pipelined"}),
                            ("ours_bf16_seesaw", lambda: ours(False), 576 * 2, {"FF_MLA_SCHEDULE": "seesaw"}),
                            ("ours_bf16_cp_async", lambda: ours(False), 576 * 2, {"FF_MLA_LOADS": "cp_async"}),
                            ("ours_bf16_mma_sync", lambda: ours(False), 576 * 2, {"FF_MLA_KERNEL": "mma_sync"}),
                            ("ours_fp8_mma_sync", lambda: ours(True), 656, {"FF_MLA_KERNEL": "mma_sync"})]
                    else:
                        # The 16-bit cache's few-row mma.sync kernel, the default before the WGMMA kernel took
                        # these shapes too.
                        candidates += [("ours_bf16_mma_sync", lambda: ours(False), 576 * 2, {"FF_MLA_KERNEL": "mma_sync"})]
                    for name, function, kv_bytes_per_token, environment in candidates:
                        os.environ.update(environment)
                        try:
                            ms = time_graph(function, args.calls, args.repeats)
                        except Exception as error:  # a baseline that cannot run this shape is reported, not fatal
                            figures[name] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
                            torch.cuda.synchronize()
                            continue
                        finally:
                            for name_of_variable in environment:
                                os.environ.pop(name_of_variable, None)
                        moved = total * kv_bytes_per_token + io_bytes
                        figures[name] = {"ms": round(ms, 4), "GB/s": round(moved / ms / 1e6, 1),
                                         "TFLOPS": round(flops / ms / 1e9, 1)}
                        if name.startswith("ours"):
                            figures[name]["kernel"] = mla.last_cuda_kernel()
                    if args.probe and s_q * h_q >= 64:
                        # The bf16 WGMMA kernel (TMA loads, pipelined schedule without the lean changes: the
                        # probes exist there only)
                        # without its S MMAs (1), P V MMAs (2), softmax (4), all (7).
                        # NOTE: not `skip`, which would shadow the function that reports a skipped run.
                        for skipped_parts in (1, 2, 4, 7):
                            os.environ["FF_MLA_PROBE_SKIP"] = str(skipped_parts)
                            try:
                                ms = time_graph(lambda: ours(False), args.calls, args.repeats)
                            finally:
                                del os.environ["FF_MLA_PROBE_SKIP"]
                            figures[f"probe_skip_{skipped_parts}_bf16"] = {"ms": round(ms, 4)}
                    if args.probe and s_q == 1 and h_q < 64:
                        # The load pipeline alone (FF_MLA_PROBE_LOADS_ONLY): the memory ceiling of the design.
                        os.environ["FF_MLA_PROBE_LOADS_ONLY"] = "1"
                        try:
                            for fp8 in (False, True):
                                ms = time_graph(lambda: ours(fp8), args.calls, args.repeats)
                                moved = total * (656 if fp8 else 1152) + io_bytes
                                figures[f"probe_loads_only_{'fp8' if fp8 else 'bf16'}"] = {
                                    "ms": round(ms, 4), "GB/s": round(moved / ms / 1e6, 1)}
                        finally:
                            del os.environ["FF_MLA_PROBE_LOADS_ONLY"]
                    out_bf16, _ = ours(False)
                    out_fp8, _ = ours(True)
                    reference = bmm_softmax().reshape(BATCH, s_q, h_q, 512)
                    case["cos_diff_bf16_vs_bmm"] = cos_diff(out_bf16, reference)
                    case["cos_diff_fp8_vs_bmm"] = cos_diff(out_fp8, reference)
                    case.update(figures)
                    for baseline in ("torch_sdpa", "torch_bmm_softmax"):
                        if "ms" in figures.get(baseline, {}) and "ms" in figures["ours_bf16"]:
                            case[f"speedup_vs_{baseline}"] = round(figures[baseline]["ms"] / figures["ours_bf16"]["ms"], 2)
                    if "ms" in figures["ours_fp8"] and "ms" in figures["ours_bf16"]:
                        case["fp8_speedup_vs_bf16"] = round(figures["ours_bf16"]["ms"] / figures["ours_fp8"]["ms"], 2)
                    print(json.dumps(case), flush=True)
                    cases.append(case)
                    del q, metadata, splits
            del cache, cache_fp8, dense, valid
            torch.cuda.empty_cache()
            result = result_header(
                "mla decode (flash_mla_with_kvcache) sm_90a kernel vs torch SDPA and bmm+softmax", torch, device_name,
                num_sms, f"CUDA graph of {args.calls} calls, cudaEvent around replays, median of {args.repeats}")
            result |= {
                "kernel": ("s_q * h_q >= 64: WGMMA (m64n64k16 QK^T, m64n256k16 PV), bf16 cache loaded by TMA "
                           "with the lean pipelined warpgroup schedule (FP8: cp.async); fewer rows: mma.sync m16n8k16 + cp.async, FP8 with <= 32 rows fed from "
                           "4 raw FP8 stages filled by bulk copies (docs/mla.md); ours_bf16 names its kernel (the dispatch's default); "
                           "*_lean, *_lean_bar3 (3 mbarriers per stage), *_lean_fold (scale folded into the softmax's "
                           "FFMA, stmatrix stores of P), *_lean2 (both), *_lean2_early (both, S(j+1) issued behind "
                           "P V(j)): the lean TMA kernel and its refinements; *_pipelined: the bf16 TMA WGMMA kernel with the pipelined "
                           "schedule without the lean changes; *_seesaw: the bf16 TMA WGMMA kernel with the seesaw "
                           "warpgroup schedule; *_cp_async: the bf16 WGMMA kernel with its cp.async "
                           "loads; *_mma_sync: the mma.sync kernel forced on the WGMMA shapes"),
                "seconds": round(time.time() - started, 1),
                "cases": cases,
            }
            out_path.parent.mkdir(parents=True, exist_ok=True)
            if out_path.exists():  # keep the FP8 A/B section (--fp8-ab) of an earlier run
                earlier = json.loads(out_path.read_text())
                if "fp8_ab" in earlier and "fp8_ab" not in result:
                    result["fp8_ab"] = earlier["fp8_ab"]
            out_path.write_text(json.dumps(result, indent=2) + "\n")  # rewritten after every length
    print(f"wrote {out_path} ({len(cases)} cases, {time.time() - started:.0f} s)", file=sys.stderr)
    return 0


FP8_AB_KNOWN = {
    # name: (FP8 cache, environment)
    "bf16": (False, {}),
    "fp8_direct": (True, {"FF_MLA_FP8": "direct"}),
    "fp8_pair": (True, {"FF_MLA_FP8": "pair"}),
    "fp8_wide": (True, {"FF_MLA_FP8": "wide"}),
    "fp8_channels": (True, {"FF_MLA_FP8": "channels"}),
    "fp8_channels_split_s": (True, {"FF_MLA_FP8": "channels_split_s"}),
    "fp8_transposed": (True, {"FF_MLA_FP8": "transposed"}),
    "fp8_transposed_wg": (True, {"FF_MLA_FP8": "transposed_wg"}),
    # transposed_wg with the first V operands converted after its softmax barriers (before 2026-12-03)
    "fp8_transposed_wg_late_v": (True, {"FF_MLA_FP8": "transposed_wg", "FF_MLA_FP8_EARLY_V": "0"}),
    # transposed_wg without lazy rescaling, without the joined descriptors, without both (the kernel before
    # 2026-12-03 16:30 UTC), for A/B runs of each
    "fp8_transposed_wg_eager": (True, {"FF_MLA_FP8": "transposed_wg", "FF_MLA_LAZY": "0"}),
    "fp8_transposed_wg_full_desc": (True, {"FF_MLA_FP8": "transposed_wg", "FF_MLA_FP8_DESCRIPTORS": "full"}),
    "fp8_transposed_wg_before": (True, {"FF_MLA_FP8": "transposed_wg", "FF_MLA_LAZY": "0",
                                        "FF_MLA_FP8_DESCRIPTORS": "full"}),
    # transposed_wg with two barriers per block (the default before 2026-12-03 19:00 UTC), for A/B runs of the
    # one-barrier block
    "fp8_transposed_wg_two_barriers": (True, {"FF_MLA_FP8": "transposed_wg", "FF_MLA_FP8_ONE_BARRIER": "0"}),
    # the bf16 kernel with the eager running max (every block's max moves it, FF_MLA_LAZY=0), for A/B runs
    # of lazy rescaling
    "bf16_eager": (False, {"FF_MLA_LAZY": "0"}),
    # the KV cache loaded without the L2 evict-first policy (FF_MLA_KV_HINT=0), for A/B runs of it
    "bf16_nohint": (False, {"FF_MLA_KV_HINT": "0"}),
    "fp8_channels_nohint": (True, {"FF_MLA_FP8": "channels", "FF_MLA_KV_HINT": "0"}),
    # the bf16 WGMMA schedules (h_q >= 64, --ab-h-q 128), for A/B runs of them
    "bf16_lean": (False, {"FF_MLA_SCHEDULE": "lean"}),
    "bf16_lean_bar3": (False, {"FF_MLA_SCHEDULE": "lean_bar3"}),
    "bf16_pipelined": (False, {"FF_MLA_SCHEDULE": "pipelined"}),
    # probe (outputs of odd m-blocks meaningless): half the L2 -> SM traffic of h_q >= 128, the ceiling of a
    # 2-CTA multicast of each KV block
    "bf16_half_loads": (False, {"FF_MLA_PROBE_HALF_LOADS": "1"}),
    # the FP8 cache from 64 rows (--ab-h-q 128): lean2 fed by a dequantizing warpgroup (the default), and the
    # older dequantizing WGMMA kernel (FF_MLA_FP8_LEAN=0)
    "fp8_lean": (True, {"FF_MLA_FP8_LEAN": "1"}),
    "fp8_dequant_wgmma": (True, {"FF_MLA_FP8_LEAN": "0"}),
    # the lean FP8 kernel below 64 rows too (FF_MLA_KERNEL=wgmma: h_q 16, s_q 1 and 2)
    "fp8_lean_rows": (True, {"FF_MLA_KERNEL": "wgmma", "FF_MLA_FP8_LEAN": "1"}),
    # (without the prefetch) its split of each block's conversion: pairs converted before the P V of the block before
    "fp8_lean_early2": (True, {"FF_MLA_FP8_LEAN": "1", "FF_MLA_FP8_PREFETCH": "0", "FF_MLA_FP8_EARLY_PAIRS": "2"}),
    "fp8_lean_early0": (True, {"FF_MLA_FP8_LEAN": "1", "FF_MLA_FP8_PREFETCH": "0", "FF_MLA_FP8_EARLY_PAIRS": "0"}),
    "fp8_lean_early1": (True, {"FF_MLA_FP8_LEAN": "1", "FF_MLA_FP8_PREFETCH": "0", "FF_MLA_FP8_EARLY_PAIRS": "1"}),
    "fp8_lean_early3": (True, {"FF_MLA_FP8_LEAN": "1", "FF_MLA_FP8_PREFETCH": "0", "FF_MLA_FP8_EARLY_PAIRS": "3"}),
    "fp8_lean_early4": (True, {"FF_MLA_FP8_LEAN": "1", "FF_MLA_FP8_PREFETCH": "0", "FF_MLA_FP8_EARLY_PAIRS": "4"}),
    # pair 0 of each block loaded into registers a block ahead (prefetch1, the default), pairs 0 and 1
    # (prefetch2), none (prefetch0, the kernel before)
    "fp8_lean_prefetch2": (True, {"FF_MLA_FP8_LEAN": "1", "FF_MLA_FP8_PREFETCH": "2"}),
    "fp8_lean_prefetch1": (True, {"FF_MLA_FP8_LEAN": "1", "FF_MLA_FP8_PREFETCH": "1"}),
    "fp8_lean_prefetch0": (True, {"FF_MLA_FP8_LEAN": "1", "FF_MLA_FP8_PREFETCH": "0"}),
}
FP8_AB_DEFAULT = "bf16,fp8_channels,fp8_channels_split_s,fp8_pair"


def fp8_ab(args, torch, mla, device_name, num_sms, out_path) -> int:
    """The FP8 kernels for <= 32 rows against each other and the bf16 kernel (issue #7's FP8 target):
    b = 128, h_q 16, h_kv 1, fixed lengths 4K-32K (--ab-lengths; --ab-variable: also variable ones); every
    candidate once per round, the order shuffled (seeded) from round to round (the first-measured position moved
    figures by a few percent before; a rotation kept one candidate right behind the bf16 kernel in almost every
    round, and under the GPU's power cap the kernel measured right after it runs at a lower SM clock), medians
    over the rounds; cos_diff of each kernel's output against the direct FP8 one's (when a candidate) and
    the first candidate's (the bf16 reference)."""
    generator = torch.Generator().manual_seed(2026)
    started = time.time()
    candidates = [(name, *FP8_AB_KNOWN[name]) for name in args.candidates.split(",")]
    reference = candidates[0][0]
    cases = []
    variants = [(length, variable) for length in (int(x) for x in args.ab_lengths.split(","))
                for variable in ((False, True) if args.ab_variable else (False,))]
    for length, variable in variants:
        if variable:
            seqlens = torch.randint(length // 2, length * 3 // 2 + 1, (BATCH,), generator=generator).int()
        else:
            seqlens = torch.full((BATCH,), length, dtype=torch.int32)
        blocks = (int(seqlens.max()) + PAGE - 1) // PAGE
        num_blocks = BATCH * blocks
        block_table = torch.randperm(num_blocks, generator=generator).int().reshape(BATCH, blocks).cuda()
        seqlens_gpu = seqlens.cuda()
        cache = torch.randn((num_blocks, PAGE, 1, 576), dtype=torch.bfloat16, device="cuda")
        cache_fp8 = quantize_fp8(cache)
        total = int(seqlens.sum())
        for s_q in args.s_q:
            h_q = args.ab_h_q
            q = torch.randn((BATCH, s_q, h_q, 576), dtype=torch.bfloat16, device="cuda")
            metadata, splits = mla.get_mla_metadata(seqlens_gpu, s_q * h_q, 1, num_sms=num_sms)
            io_bytes = q.numel() * 2 + BATCH * s_q * h_q * 512 * 2

            def ours(fp8: bool):
                return mla.flash_mla_with_kvcache(q, cache_fp8 if fp8 else cache, block_table, seqlens_gpu, 512,
                                                  metadata, splits, is_fp8_kvcache=fp8, check_values=False)

            samples = {name: [] for name, _, _ in candidates}
            kernels, outputs = {}, {}
            for round_index in range(args.rounds):
                order = list(candidates)
                random.Random(1000 * length + 10 * s_q + round_index).shuffle(order)
                for name, fp8, environment in order:
                    os.environ.update(environment)
                    try:
                        if args.sustained > 0:
                            graph = capture_graph(lambda: ours(fp8), args.calls)
                            samples[name].append(sustained_ms(graph, args.calls, args.sustained))
                            del graph
                        else:
                            samples[name].append(time_graph(lambda: ours(fp8), args.calls, args.repeats))
                        if round_index == 0:
                            outputs[name] = ours(fp8)[0]
                            kernels[name] = mla.last_cuda_kernel()
                    finally:
                        for name_of_variable in environment:
                            os.environ.pop(name_of_variable, None)
            case = {"b": BATCH, "s_q": s_q, "h_q": h_q, "h_kv": 1, "mean_len": length,
                    "lengths": "variable" if variable else "fixed",
                    "sum_len": total, "causal": False, "rounds": args.rounds}
            for name, fp8, _ in candidates:
                ms = statistics.median(samples[name])
                moved = total * (656 if fp8 else 1152) + io_bytes
                flops = 2 * s_q * total * h_q * (576 + 512)
                case[name] = {"ms": round(ms, 4), "GB/s": round(moved / ms / 1e6, 1),
                              "TFLOPS": round(flops / ms / 1e9, 1), "kernel": kernels[name],
                              "ms_per_round": [round(x, 4) for x in samples[name]]}
                if fp8:
                    case[name]["speedup_vs_bf16"] = round(case[reference]["ms"] / ms, 3)
                    if "fp8_direct" in outputs:
                        case[name]["cos_diff_vs_fp8_direct"] = cos_diff(outputs[name], outputs["fp8_direct"])
                    case[name]["cos_diff_vs_bf16"] = cos_diff(outputs[name], outputs[reference])
                else:
                    case[name]["cos_diff_vs_bf16"] = cos_diff(outputs[name], outputs[reference])
            if "fp8_direct" in outputs:
                case["cos_diff_fp8_direct_vs_bf16"] = cos_diff(outputs["fp8_direct"], outputs[reference])
            print(json.dumps(case), file=sys.stderr, flush=True)
            cases.append(case)
            del q, metadata, splits, outputs
        del cache, cache_fp8, block_table
        torch.cuda.empty_cache()
    result = result_header(
        ("mla FP8 A/B (issue #7): the FP8-cache kernels for <= 32 rows vs the bf16 kernel, h_q 16" if args.ab_h_q == 16
         else f"mla A/B (issue #7): kernels in shuffled rounds, h_q {args.ab_h_q}"), torch, device_name,
        num_sms, (f"CUDA graph of {args.calls} calls, cudaEvent around replays, median of {args.repeats} replays; "
                  f"{args.rounds} rounds, candidate order shuffled (seeded) each round, median over rounds"
                  + (f"; sustained: each timing {args.sustained} s of back-to-back replays after 0.5 s untimed"
                     if args.sustained > 0 else "")))
    result |= {
        "seconds": round(time.time() - started, 1),
        "cases": cases,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out_path.read_text()) if out_path.exists() else {}
    if "fp8_ab" in existing or existing.get("benchmark", "").startswith("mla decode"):
        # Into a full benchmark's results file, the A/B is its "fp8_ab" section.
        merged = existing
        merged["fp8_ab"] = result
        out_path.write_text(json.dumps(merged, indent=2) + "\n")
    else:
        out_path.write_text(json.dumps(result, indent=2) + "\n")
    for case in cases:  # a short table last
        print(f"s_q {case['s_q']} {case['mean_len'] // 1024}K {case['lengths']}: " + "  ".join(
            f"{name} {case[name]['ms']:.4f} ms" + (f" ({case[name]['speedup_vs_bf16']:.2f}x)" if fp8 else "")
            + (f" {case[name]['TFLOPS']:.0f} TFLOPS" if case["h_q"] >= 64 else "")
            for name, fp8, _ in candidates if name in case), flush=True)
    print(f"wrote {out_path} ({len(cases)} cases, {time.time() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
