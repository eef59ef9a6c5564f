"""Benchmark of fireflyer.ep's CUDA intranode backend: N rank processes on ONE GPU, or (EP_BENCH_SPREAD=1)
one process per GPU over NVLink, rank r on GPU r % device_count.

Normal mode: 4096 tokens per rank, hidden 7168, top-8 of 256 experts, FP8 dispatch (per-128 scales) and
BF16 combine. Low-latency mode: 128 tokens per rank, FP8 dispatch, BF16 combine, in the loop a model runs:
dispatch -> receive hook -> combine -> receive hook per iteration. Byte accounting as DeepEP's tests:
normal dispatch = received rows x (hidden + hidden/128 x 4) (FP8 with scales), combine = received rows x
hidden x 2; low-latency dispatch = selections x (hidden + hidden/128 x 4 + 16), combine = selections x
hidden x 2, where selections are this rank's valid (token, expert) pairs. GB/s is per rank.

Timing, per rank, medians over the timed iterations after warm-ups, averaged over ranks:
- whole call (`us`, `gb_per_s_per_rank`): CUDA events recorded on the stream before and after the Python
  call, the stream synchronised after each iteration and the ranks aligned by a host barrier before it
  (outside the timing), so host work inside the call (planning, waits) counts but another rank's lateness
  mostly does not;
- host wall time of the call (`host_us`);
- kernels (`kernels_us`): the library's own CUDA events around each phase's kernels (notify, dispatch_send,
  dispatch_recv, combine_send, combine_recv, ll_*); kernel-only GB/s = bytes / (send + receive kernels),
  so the host overhead is the whole call minus the kernels;
- back to back (`loop_us`): the mean per iteration of a loop with no synchronisation in it.
NCCL torch.distributed.all_to_all_single is timed the same way in the same run (one rank per GPU; NCCL
refuses two ranks on one GPU, and the refusal is recorded).

Environment: EP_BENCH_SPREAD=1, EP_BENCH_RANKS (default 2,4,8), EP_NUM_SMS (comma list, default 24: the
normal mode runs once per value), EP_BENCH_ITERS (20), EP_BENCH_HOST_LAYOUT=1 (also run the host-planned
normal mode, FF_EP_NORMAL_LAYOUT=host), EP_BENCH_MODES (default normal,low_latency), EP_BENCH_OUT.
Writes one JSON line per case and bench/results/ep_<device>[_x<gpus>].json. Exits 0 with a skip line
without a GPU.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

_TIMING = r"""
import statistics, time
import torch

def median(values):
    return statistics.median(values) if values else None

def timed(fn, iterations, warmup=5, kernels=None, barrier=None):
    # Whole call (events around it, synchronised per iteration, the ranks aligned by a host barrier before
    # each call so that one rank's lateness does not count as another's time), host wall time, library
    # kernel phases.
    for _ in range(warmup):
        fn()
        torch.cuda.synchronize()
    if kernels is not None:
        kernels()
    whole, host, phases = [], [], {}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(iterations):
        torch.cuda.synchronize()
        if barrier is not None:
            barrier()
        start.record()
        began = time.perf_counter()
        fn()
        host.append((time.perf_counter() - began) * 1e6)
        end.record()
        torch.cuda.synchronize()
        whole.append(start.elapsed_time(end) * 1e3)
        if kernels is not None:
            for name, us in kernels().items():
                phases.setdefault(name, []).append(us)
    return dict(us=median(whole), host_us=median(host), kernels_us={k: median(v) for k, v in phases.items()})

def loop(fn, iterations):
    # Back to back, no synchronisation inside: mean per iteration.
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / iterations
"""

_WORKER = _TIMING + r"""
import json, os, sys
import numpy as np
from fireflyer import ep

group, rank, num_ranks, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
num_sms = int(os.environ.get("EP_NUM_SMS_ONE", "24"))
iterations = int(os.environ.get("EP_BENCH_ITERS", "20"))
hidden, num_topk, num_experts = 7168, 8, 256
spread = os.environ.get("EP_BENCH_SPREAD") == "1"
device = torch.device("cuda", rank % torch.cuda.device_count() if spread else 0)
torch.cuda.set_device(device)
torch.manual_seed(1234 + rank)

def routing(num_tokens):
    scores = torch.randn((num_tokens, num_experts), device=device).abs() + 1
    topk_idx = torch.topk(scores, num_topk, dim=-1, sorted=False).indices
    topk_weights = torch.rand((num_tokens, num_topk), device=device)
    return topk_idx, topk_weights

ep.Buffer.set_num_sms(num_sms)
buffer = ep.Buffer((group, rank, num_ranks), num_nvl_bytes=1 << 30, timeout_s=60, backend="cuda")
buffer.set_profiling(True)
kernels = buffer.kernel_times_us
# Host barrier of the ranks (a one-row dispatch on a CPU-backend buffer of the same ranks), outside the timing.
barrier_buffer = ep.Buffer((group + "_barrier", rank, num_ranks), num_nvl_bytes=1 << 20, timeout_s=60, backend="cpu")
barrier_x = np.zeros((1, 128), np.float32)
barrier_topk = np.zeros((1, 1), np.int64)
barrier_per_expert = barrier_buffer.get_dispatch_layout(barrier_topk, num_ranks)[2]

def barrier():
    barrier_buffer.dispatch(barrier_x, topk_idx=barrier_topk, num_tokens_per_expert=barrier_per_expert)
results = {}
if mode == "normal":
    num_tokens = 4096
    x = torch.randn((num_tokens, hidden), device=device, dtype=torch.bfloat16)
    x_fp8 = x.float().view(num_tokens, hidden // 128, 128)
    amax = x_fp8.abs().amax(dim=-1).clamp(min=1e-4)
    scales = (amax / 448).contiguous()
    codes = (x_fp8 / scales.unsqueeze(-1)).to(torch.float8_e4m3fn).view(num_tokens, hidden)
    topk_idx, topk_weights = routing(num_tokens)
    per_rank, _, per_expert, in_rank = buffer.get_dispatch_layout(topk_idx, num_experts)
    args = dict(topk_idx=topk_idx, topk_weights=topk_weights, num_tokens_per_rank=per_rank, is_token_in_rank=in_rank,
                num_tokens_per_expert=per_expert)
    recv, recv_idx, recv_w, counts, handle = buffer.dispatch((codes, scales), **args)
    num_recv = recv[0].shape[0]
    recv_bf16 = torch.randn((num_recv, hidden), device=device, dtype=torch.bfloat16)
    dispatch = lambda: buffer.dispatch((codes, scales), **args)
    cached = lambda: buffer.dispatch((codes, scales), handle=handle)
    combine = lambda: buffer.combine(recv_bf16, handle, topk_weights=recv_w)
    for name, fn in (("dispatch", dispatch), ("cached_dispatch", cached), ("combine", combine)):
        results[name] = timed(fn, iterations, kernels=kernels, barrier=barrier)
        results[name]["loop_us"] = loop(fn, iterations)
    results["num_recv_tokens"] = num_recv
    results["dispatch_bytes"] = num_recv * (hidden + hidden // 128 * 4)
    results["combine_bytes"] = num_recv * hidden * 2
else:
    num_tokens = 128
    x = torch.randn((num_tokens, hidden), device=device, dtype=torch.bfloat16)
    topk_idx, topk_weights = routing(num_tokens)
    expert_out = torch.randn((num_experts // num_ranks, num_tokens * num_ranks, hidden), device=device,
                             dtype=torch.bfloat16)
    state = {}

    def dispatch_send():
        state["d"] = buffer.low_latency_dispatch(x, topk_idx, num_tokens, num_experts, use_fp8=True,
                                                 return_recv_hook=True)

    def dispatch_hook():
        state["d"][4]()

    def combine_send():
        state["c"] = buffer.low_latency_combine(expert_out, topk_idx, topk_weights, state["d"][2],
                                                return_recv_hook=True)

    def combine_hook():
        state["c"][2]()

    steps = {"dispatch_send": dispatch_send, "dispatch_hook": dispatch_hook, "combine_send": combine_send,
             "combine_hook": combine_hook}

    def iteration():
        for step in steps.values():
            step()

    for _ in range(5):
        iteration()
    torch.cuda.synchronize()
    kernels()
    samples = {name: [] for name in steps}
    host = {name: [] for name in steps}
    phases = {}
    events = [torch.cuda.Event(enable_timing=True) for _ in range(len(steps) + 1)]
    for _ in range(iterations * 5):
        torch.cuda.synchronize()
        barrier()
        events[0].record()
        for i, (name, step) in enumerate(steps.items()):
            began = time.perf_counter()
            step()
            host[name].append((time.perf_counter() - began) * 1e6)
            events[i + 1].record()
        torch.cuda.synchronize()
        for i, name in enumerate(steps):
            samples[name].append(events[i].elapsed_time(events[i + 1]) * 1e3)
        for name, us in kernels().items():
            phases.setdefault(name, []).append(us)
    for op in ("dispatch", "combine"):
        whole = [a + b for a, b in zip(samples[op + "_send"], samples[op + "_hook"])]
        results[op] = dict(us=median(whole), send_us=median(samples[op + "_send"]),
                           hook_us=median(samples[op + "_hook"]),
                           host_us=median(host[op + "_send"]) + median(host[op + "_hook"]),
                           kernels_us={k: median(v) for k, v in phases.items() if k.startswith("ll_" + op)})
    results["iteration_loop_us"] = loop(iteration, iterations * 5)
    selections = int((topk_idx != -1).sum())
    results["dispatch_bytes"] = selections * (hidden + hidden / 128 * 4 + 16)
    results["combine_bytes"] = selections * hidden * 2
buffer.synchronize()
buffer.close()
barrier_buffer.close()
print("RESULT " + json.dumps(results), flush=True)
"""

_NCCL_WORKER = _TIMING + r"""
import json, os, sys
import torch.distributed as dist
rank, num_ranks, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
spread = os.environ.get("EP_BENCH_SPREAD") == "1"
device = torch.device("cuda", rank % torch.cuda.device_count() if spread else 0)
torch.cuda.set_device(device)
dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=num_ranks,
                        device_id=device)
# As many bf16 rows as a normal-mode rank receives (4096 tokens x ~8 experts spread over the ranks).
rows = int(os.environ.get("EP_NCCL_ROWS", "8192")) // num_ranks * num_ranks
x = torch.randn((rows, 7168), device=device, dtype=torch.bfloat16)
out = torch.empty_like(x)
dist.barrier()
result = timed(lambda: dist.all_to_all_single(out, x), int(os.environ.get("EP_BENCH_ITERS", "20")),
               barrier=dist.barrier)
result["loop_us"] = loop(lambda: dist.all_to_all_single(out, x), 20)
result["bytes_to_peers"] = x.numel() * 2 * (num_ranks - 1) / num_ranks
result["bytes_total"] = x.numel() * 2
dist.destroy_process_group()
print("RESULT " + json.dumps(result), flush=True)
"""


def _run(script: str, args_per_rank: list[list[str]], env: dict, timeout_s: float) -> list[tuple[int, str, str]]:
    processes = [subprocess.Popen([sys.executable, "-c", script, *args], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for args in args_per_rank]
    deadline = time.monotonic() + timeout_s
    outputs = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            stdout, stderr = "", "timed out"
            process.returncode = -1
        outputs.append((process.returncode, stdout, stderr))
    return outputs


def _mean(results: list[dict], *keys: str) -> float | None:
    values = []
    for result in results:
        value = result
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return None
        values.append(value)
    return sum(values) / len(values)


def _gb(num_bytes: float | None, us: float | None) -> float | None:
    return None if not us or num_bytes is None else round(num_bytes / us / 1e3, 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _case(results: list[dict], mode: str) -> dict:
    """Per-op figures averaged over ranks."""
    case = {}
    ops = ("dispatch", "cached_dispatch", "combine") if mode == "normal" else ("dispatch", "combine")
    for op in ops:
        num_bytes = _mean(results, ("dispatch" if op == "cached_dispatch" else op) + "_bytes")
        whole = _mean(results, op, "us")
        row = {"us": _round(whole), "gb_per_s_per_rank": _gb(num_bytes, whole),
               "host_us": _round(_mean(results, op, "host_us"))}
        if mode == "normal":
            row["loop_us"] = _round(_mean(results, op, "loop_us"))
            row["loop_gb_per_s_per_rank"] = _gb(num_bytes, row["loop_us"])
        else:
            row["send_us"] = _round(_mean(results, op, "send_us"))
            row["hook_us"] = _round(_mean(results, op, "hook_us"))
        names = sorted({name for result in results for name in result[op]["kernels_us"]})
        row["kernels_us"] = {name: _round(_mean(results, op, "kernels_us", name)) for name in names}
        # Kernel-only: the send and receive kernels of the op (the notify kernel is the layout, shown apart).
        moving = [us for name, us in row["kernels_us"].items() if us is not None and name != "notify"]
        if moving:
            row["kernel_only_us"] = round(sum(moving), 1)
            row["kernel_only_gb_per_s_per_rank"] = _gb(num_bytes, sum(moving))
            send = [us for name, us in row["kernels_us"].items() if name.endswith("_send") and us]
            if send:
                row["send_kernel_gb_per_s_per_rank"] = _gb(num_bytes, send[0])
        row["bytes_per_rank"] = num_bytes
        case[op] = row
    return case


def main() -> int:
    try:
        import torch
        from fireflyer import _C
    except ImportError as error:
        print(json.dumps({"bench": "ep", "skipped": f"import failed: {error}"}))
        return 0
    if not torch.cuda.is_available() or not _C.ep.cuda_backend_built():
        print(json.dumps({"bench": "ep", "skipped": "no CUDA GPU or the ep CUDA backend is not built"}))
        return 0
    device_name = torch.cuda.get_device_name(0)
    spread = os.environ.get("EP_BENCH_SPREAD") == "1"
    num_gpus = torch.cuda.device_count() if spread else 1
    base_env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), PYTHONUNBUFFERED="1")
    rank_counts = [int(n) for n in os.environ.get("EP_BENCH_RANKS", "2,4,8").split(",")]
    sms_list = [int(n) for n in os.environ.get("EP_NUM_SMS", "24").split(",")]
    runs = [("normal", sms, {}) for sms in sms_list] + [("low_latency", sms_list[0], {})]
    if os.environ.get("EP_BENCH_HOST_LAYOUT") == "1":
        runs.append(("normal", sms_list[0], {"FF_EP_NORMAL_LAYOUT": "host"}))
    modes = os.environ.get("EP_BENCH_MODES", "normal,low_latency").split(",")
    runs = [run for run in runs if run[0] in modes]
    cases = []
    for num_ranks in rank_counts:
        for mode, sms, extra_env in runs:
            env = dict(base_env, EP_NUM_SMS_ONE=str(sms), **extra_env)
            group = f"bench_{mode}_{uuid.uuid4().hex[:8]}"
            outputs = _run(_WORKER, [[group, str(r), str(num_ranks), mode] for r in range(num_ranks)], env, 300)
            results = []
            for code, stdout, stderr in outputs:
                line = [row for row in stdout.splitlines() if row.startswith("RESULT ")]
                if code != 0 or not line:
                    print(json.dumps({"bench": "ep", "mode": mode, "num_ranks": num_ranks, "error": stderr[-3000:]}))
                    return 1
                results.append(json.loads(line[0][len("RESULT "):]))
            case = {"bench": "ep", "device": device_name, "mode": mode, "num_ranks": num_ranks,
                    "normal_layout": extra_env.get("FF_EP_NORMAL_LAYOUT", "gpu") if mode == "normal" else None,
                    "ranks_share_one_gpu": num_gpus < num_ranks, "num_gpus": min(num_gpus, num_ranks),
                    "num_sms": sms, "hidden": 7168, "num_topk": 8, "num_experts": 256,
                    "tokens_per_rank": 4096 if mode == "normal" else 128}
            case.update(_case(results, mode))
            if mode == "normal":
                case["num_recv_tokens_mean"] = round(_mean(results, "num_recv_tokens"), 1)
            else:
                case["iteration_loop_us"] = _round(_mean(results, "iteration_loop_us"))
            cases.append(case)
            print(json.dumps(case), flush=True)

    # torch.distributed all_to_all_single over NCCL: one rank per GPU when spread, else 2 ranks on this GPU.
    port = str(29500 + os.getpid() % 1000)
    nccl_ranks = max(2, num_gpus)
    outputs = _run(_NCCL_WORKER, [[str(r), str(nccl_ranks), port] for r in range(nccl_ranks)], base_env, 120)
    lines = [[row for row in stdout.splitlines() if row.startswith("RESULT ")] for _, stdout, _ in outputs]
    if all(code == 0 for code, _, _ in outputs) and all(lines):
        timings = [json.loads(line[0][len("RESULT "):]) for line in lines]
        whole = _mean(timings, "us")
        loop_us = _mean(timings, "loop_us")
        nccl = {"baseline": "torch.distributed.all_to_all_single (NCCL)", "ran": True, "num_ranks": nccl_ranks,
                "num_gpus": num_gpus, "rows_bf16_hidden_7168": int(os.environ.get("EP_NCCL_ROWS", "8192")),
                "us": _round(whole), "host_us": _round(_mean(timings, "host_us")), "loop_us": _round(loop_us),
                "gb_per_s_per_rank_to_peers": _gb(timings[0]["bytes_to_peers"], whole),
                "gb_per_s_per_rank_total": _gb(timings[0]["bytes_total"], whole),
                "loop_gb_per_s_per_rank_total": _gb(timings[0]["bytes_total"], loop_us)}
    else:
        def reason(code: int, stderr: str) -> str:
            lines = [line for line in stderr.splitlines() if "rror" in line and "destroy_process_group" not in line]
            return lines[-1][-500:] if lines else f"exit {code}, no error line on stderr"

        errors = [reason(code, stderr) for code, _, stderr in outputs]
        nccl = {"baseline": "torch.distributed.all_to_all_single (NCCL)", "ran": False, "errors": errors[:2]}
    print(json.dumps(nccl), flush=True)
    # Ratio to NCCL in the same run: our whole-call GB/s over NCCL's, both counting a rank's rows to itself
    # (DeepEP's accounting for ours; all of all_to_all_single's input for NCCL's).
    if nccl.get("ran"):
        for case in cases:
            for op in ("dispatch", "cached_dispatch", "combine"):
                if case["mode"] == "normal" and case.get(op, {}).get("gb_per_s_per_rank"):
                    case[op]["ratio_to_nccl"] = round(case[op]["gb_per_s_per_rank"] / nccl["gb_per_s_per_rank_total"],
                                                      3)
    short = device_name.lower().replace("nvidia ", "").split()[0]
    suffix = f"_x{num_gpus}" if spread else ""
    out = pathlib.Path(os.environ.get("EP_BENCH_OUT", ROOT / "bench" / "results" / f"ep_{short}{suffix}.json"))
    out.write_text(json.dumps({
        "device": device_name,
        "note": (f"Ranks spread over {num_gpus} GPUs (rank r on GPU r % {num_gpus}), peers written over NVLink. "
                 if spread else "N rank processes share ONE GPU: HBM-to-HBM copies plus protocol overheads, not "
                 "NVLink. ") + ("Normal mode: 4096 tokens per rank, hidden 7168, top-8 of 256 experts, FP8 "
                 "dispatch, BF16 combine; low-latency: 128 tokens per rank, loop dispatch -> hook -> combine -> "
                 "hook. Bytes as DeepEP's tests (a rank's rows to itself included); GB/s per rank. 'us' = CUDA "
                 "events around the whole call (host work included), stream synchronised per iteration, median; "
                 "'kernels_us' = the library's events around each phase's kernels; 'loop_us' = back-to-back loop "
                 "mean. NCCL all_to_all_single timed the same way in the same run."),
        "cases": cases,
        "nccl_all_to_all_single": nccl,
    }, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
