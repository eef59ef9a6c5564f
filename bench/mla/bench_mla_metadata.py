"""get_mla_metadata on the GPU (the kernel, no host synchronisation) beside the host path it replaces (copy the
lengths to the host, which waits for the stream, compute the schedule there, copy it back), per decode step.

Three figures per shape, lengths uniform in [L/2, 3L/2]:
- `ours_graph_us`: the kernel alone, in a CUDA graph of 10 calls (what it adds to a captured decode step; one call
  per step serves every layer);
- `*_behind_busy_stream_us`: how long the call takes to return to the caller when the stream still has ~1 ms of
  queued work (a decode step's layers): the host path waits for the queue to drain, the kernel is only enqueued;
  `ratio_behind_busy_stream` = host / ours;
- `*_wall_sync_us`: one call followed by a stream synchronisation on an idle stream (`ratio_wall_sync` = host / ours).
Medians. JSON with the device name in bench/results/mla_metadata_<gpu>.json.

Usage: PYTHONPATH=python python3 bench/mla/bench_mla_metadata.py [--out x.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "python"))

from bench_mla import REPO_ROOT, gpu_or_reason, result_header, skip, time_graph  # noqa: E402


def wall_us(torch, function, repeats: int, busy_cycles: int = 0) -> float:
    """Median microseconds until function() returns (after `busy_cycles` of GPU sleep queued first, then waited
    for outside the timing), or, with busy_cycles 0, of function() + a stream synchronisation."""
    samples = []
    for _ in range(repeats):
        if busy_cycles:
            torch.cuda._sleep(busy_cycles)
        start = time.perf_counter()
        function()
        if not busy_cycles:
            torch.cuda.current_stream().synchronize()
        samples.append((time.perf_counter() - start) * 1e6)
        torch.cuda.current_stream().synchronize()
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out")
    args = parser.parse_args()
    gpu = gpu_or_reason()
    if isinstance(gpu, str):
        return skip(gpu)
    torch, mla, device_name, slug, num_sms = gpu
    busy_cycles = 2_000_000  # queued GPU sleep: ~1 ms at 1.98 GHz
    generator = torch.Generator().manual_seed(5)
    cases = []
    for batch in (1, 32, 128, 512, 4096):
        for length, rows in ((8192, 16), (8192, 128), (32768, 128)):
            lengths = torch.randint(length // 2, length * 3 // 2 + 1, (batch,), generator=generator).int().cuda()

            def ours():
                return mla.get_mla_metadata(lengths, rows, 1, num_sms=num_sms)

            def host_path():
                metadata, splits = mla.get_mla_metadata(lengths.cpu().numpy(), rows, 1, num_sms=num_sms)
                return torch.from_numpy(metadata).cuda(), torch.from_numpy(splits).cuda()

            for expected, got in zip(host_path(), ours()):
                assert torch.equal(expected, got), "the kernel's schedule differs from the host's"
            ours_us = wall_us(torch, ours, args.repeats)
            host_us = wall_us(torch, host_path, args.repeats)
            ours_busy_us = wall_us(torch, ours, args.repeats // 4, busy_cycles)
            host_busy_us = wall_us(torch, host_path, args.repeats // 4, busy_cycles)
            graph_us = time_graph(ours, 10, 11) * 1e3
            case = {"b": batch, "length": length, "num_q_tokens_per_head_k": rows, "h_kv": 1,
                    "ours_graph_us": round(graph_us, 2),
                    "ours_behind_busy_stream_us": round(ours_busy_us, 2),
                    "host_path_behind_busy_stream_us": round(host_busy_us, 2),
                    "ratio_behind_busy_stream": round(host_busy_us / ours_busy_us, 2),
                    "ours_wall_sync_us": round(ours_us, 2), "host_path_wall_sync_us": round(host_us, 2),
                    "ratio_wall_sync": round(host_us / ours_us, 3)}
            print(json.dumps(case), flush=True)
            cases.append(case)
    result = result_header("get_mla_metadata: the GPU kernel vs the host path (copy lengths, compute, copy back)",
                           torch, device_name, num_sms,
                           f"medians; wall times with time.perf_counter ({args.repeats} calls idle, {args.repeats // 4} "
                           f"behind {busy_cycles} cycles of queued GPU sleep); ours_graph_us: the kernel in a CUDA "
                           "graph of 10 calls, cudaEvent timing")
    result["cases"] = cases
    out_path = pathlib.Path(args.out) if args.out else REPO_ROOT / "bench" / "results" / f"mla_metadata_{slug}.json"
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
