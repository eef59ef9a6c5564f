"""Where the fixed per-call time of the memory-bound decode goes (h_q 16, s_q 1 or 2, b = 128).

For each length and cache kind: the call time in a CUDA graph (median of replays) with the default
schedule (num_sms parts) and with `--parts-alt` parts; fixed lengths, or with `--variable` lengths
uniform in [L/2, 3L/2] as the benchmark draws them; the kernels' own durations and the gaps between
them from torch.profiler (CUPTI kernel timestamps) over one graph replay; and the loads-only probe.
A line of JSON per case on stdout; `--out` writes them all.

Usage: PYTHONPATH=python python3 bench/mla/overhead_mla.py [--lengths 64,1024,4096,8192] [--s-q 1] [--variable]
       [--out x.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "python"))

from bench_mla import BATCH, PAGE, capture_graph, quantize_fp8, time_graph  # noqa: E402


def kernel_timeline(torch, function, calls: int):
    """Kernel names, durations and the gaps between consecutive kernels (microseconds) over one
    replay of a graph of `calls` calls."""
    graph = capture_graph(function, calls)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type.name == "CUDA" and "kernel" in e.name]
    events.sort(key=lambda e: e.time_range.start)
    rows = []
    previous_end = None
    for e in events:
        start, end = e.time_range.start, e.time_range.end
        rows.append({"kernel": e.name.split("<")[0], "us": round(end - start, 2),
                     "gap_before_us": None if previous_end is None else round(start - previous_end, 2)})
        previous_end = end
    del graph
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="64,1024,4096,8192")
    parser.add_argument("--parts-alt", type=int, default=128)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--s-q", type=int, default=1)
    parser.add_argument("--variable", action="store_true", help="lengths uniform in [L/2, 3L/2]")
    parser.add_argument("--out")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print(json.dumps({"skipped": "torch is not installed"}))
        return 0

    from fireflyer import mla

    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA GPU"}))
        return 0
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    generator = torch.Generator().manual_seed(7)
    results = []
    for length in (int(x) for x in args.lengths.split(",")):
        if args.variable:
            seqlens = torch.randint(length // 2, length * 3 // 2 + 1, (BATCH,), generator=generator).int().cuda()
        else:
            seqlens = torch.full((BATCH,), length, dtype=torch.int32, device="cuda")
        blocks = (int(seqlens.max().item()) + PAGE - 1) // PAGE
        block_table = torch.randperm(BATCH * blocks, generator=generator).int().reshape(BATCH, blocks).cuda()
        cache = torch.randn((BATCH * blocks, PAGE, 1, 576), dtype=torch.bfloat16, device="cuda")
        caches = {"bf16": cache, "fp8": quantize_fp8(cache)}
        q = torch.randn((BATCH, args.s_q, 16, 576), dtype=torch.bfloat16, device="cuda")
        for kind, kv in caches.items():
            case = {"length": length, "lengths": "variable" if args.variable else "fixed", "kind": kind, "b": BATCH,
                    "h_q": 16, "s_q": args.s_q}
            for parts in (num_sms, args.parts_alt):
                metadata, splits = mla.get_mla_metadata(seqlens, args.s_q * 16, 1, num_sms=parts)

                def call():
                    return mla.flash_mla_with_kvcache(q, kv, block_table, seqlens, 512, metadata, splits,
                                                      is_fp8_kvcache=kind == "fp8", check_values=False)

                case[f"ms_parts{parts}"] = round(time_graph(call, args.calls, args.repeats), 4)
                case[f"pieces_parts{parts}"] = int(splits[-1].item())
                if parts == num_sms:
                    case["kernel"] = (call(), mla.last_cuda_kernel())[1]
                    timeline = kernel_timeline(torch, call, args.calls)
                    case["timeline"] = timeline
                    decode = [r["us"] for r in timeline if "decode" in r["kernel"]]
                    combine = [r["us"] for r in timeline if "combine" in r["kernel"]]
                    gaps = [r["gap_before_us"] for r in timeline[1:]]
                    case["decode_us_median"] = statistics.median(decode) if decode else None
                    case["combine_us_median"] = statistics.median(combine) if combine else None
                    case["gap_us_median"] = statistics.median(gaps) if gaps else None
                    os.environ["FF_MLA_PROBE_LOADS_ONLY"] = "1"
                    try:
                        case["ms_probe_loads_only"] = round(time_graph(call, args.calls, args.repeats), 4)
                    finally:
                        os.environ.pop("FF_MLA_PROBE_LOADS_ONLY")
                    # The default again after the variants (order effects).
                    case["ms_default_again"] = round(time_graph(call, args.calls, args.repeats), 4)
            if kind == "fp8":  # beside its baseline: the bf16 case of the same length, measured just before
                case["fp8_speedup_vs_bf16"] = round(results[-1][f"ms_parts{num_sms}"] / case[f"ms_parts{num_sms}"], 3)
            print(json.dumps({k: v for k, v in case.items() if not k.startswith("timeline")}), flush=True)
            results.append(case)
        del caches, cache
        torch.cuda.empty_cache()
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(0), "cases": results},
                                                     indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
