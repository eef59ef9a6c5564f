"""Benchmark of fireflyer.ep's CUDA intranode backend: N rank processes on ONE GPU, or (EP_BENCH_SPREAD=1)
one process per GPU over NVLink, rank r on GPU r % device_count.

Normal mode: 4096 tokens per rank, hidden 7168, top-8 of 256 experts, FP8 dispatch (per-128 scales) and
BF16 combine. Low-latency mode: 128 tokens per rank, FP8 dispatch, BF16 combine. Byte accounting as
DeepEP's tests: normal dispatch = received rows x hidden x 2 x (1 + 4/128)/2 (FP8 with scales), combine
= received rows x hidden x 2; low-latency dispatch = selections x (hidden + hidden/128 x 4 + 16),
combine = selections x hidden x 2, where selections are this rank's valid (token, expert) pairs.
GB/s is per rank (bytes / time), as DeepEP prints it; the time is the rank's wall time per call
(torch.cuda.synchronize around a loop), averaged over ranks.

On one GPU, all N processes share it: this measures HBM-to-HBM copies and the protocol's overheads (host
barriers, time-sliced kernels of different processes), NOT NVLink. Spread over GPUs, the same kernels
write into peers' memory over NVLink, and the NCCL baseline runs and is timed (one rank per GPU). The baseline in the same run is
torch.distributed.all_to_all_single over NCCL where it runs (NCCL refuses two ranks on one GPU; the
refusal is recorded), and a single-process torch copy (index_select) of the same total bytes, the HBM
ceiling for moving these rows on this GPU.

Writes one JSON line per case and bench/results/ep_<device>.json. Exits 0 with a skip line without a GPU.
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

_WORKER = r'''
import json, os, sys, time
import torch
from fireflyer import ep

group, rank, num_ranks, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
num_sms = int(os.environ.get("EP_NUM_SMS", "24"))
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

def timed(fn, iterations):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations

ep.Buffer.set_num_sms(num_sms)
buffer = ep.Buffer((group, rank, num_ranks), num_nvl_bytes=1 << 30, timeout_s=60, backend="cuda")
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
    t_dispatch = timed(lambda: buffer.dispatch((codes, scales), **args), 10)
    t_cached = timed(lambda: buffer.dispatch((codes, scales), handle=handle), 10)
    recv_bf16 = torch.randn((num_recv, hidden), device=device, dtype=torch.bfloat16)
    t_combine = timed(lambda: buffer.combine(recv_bf16, handle, topk_weights=recv_w), 10)
    bf16_bytes = num_recv * hidden * 2
    results = dict(num_recv_tokens=num_recv, dispatch_us=t_dispatch * 1e6, cached_dispatch_us=t_cached * 1e6,
                   combine_us=t_combine * 1e6, dispatch_bytes=bf16_bytes * (1 + 4 / 128) / 2, combine_bytes=bf16_bytes)
else:
    num_tokens = 128
    x = torch.randn((num_tokens, hidden), device=device, dtype=torch.bfloat16)
    topk_idx, topk_weights = routing(num_tokens)
    recv, count, handle, event, hook = buffer.low_latency_dispatch(x, topk_idx, num_tokens, num_experts, use_fp8=True)
    expert_out = torch.randn((num_experts // num_ranks, num_tokens * num_ranks, hidden), device=device,
                             dtype=torch.bfloat16)
    t_dispatch = timed(lambda: buffer.low_latency_dispatch(x, topk_idx, num_tokens, num_experts, use_fp8=True), 50)
    # The combine needs the layout of the latest dispatch, which the timed dispatches above left.
    t_combine = timed(lambda: buffer.low_latency_combine(expert_out, topk_idx, topk_weights, handle), 50)
    selections = int((topk_idx != -1).sum())
    results = dict(dispatch_us=t_dispatch * 1e6, combine_us=t_combine * 1e6,
                   dispatch_bytes=selections * (hidden + hidden / 128 * 4 + 16), combine_bytes=selections * hidden * 2)
buffer.synchronize()
buffer.close()
print("RESULT " + json.dumps(results), flush=True)
'''

_NCCL_WORKER = r'''
import json, os, sys, time
import torch, torch.distributed as dist
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
for _ in range(3):
    dist.all_to_all_single(out, x)
torch.cuda.synchronize()
dist.barrier()
start = time.perf_counter()
for _ in range(10):
    dist.all_to_all_single(out, x)
torch.cuda.synchronize()
seconds = (time.perf_counter() - start) / 10
dist.destroy_process_group()
print("RESULT " + json.dumps(dict(us=seconds * 1e6, bytes=x.numel() * 2 * (num_ranks - 1) / num_ranks)), flush=True)
'''


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


def _copy_baseline(total_rows: int, row_bytes: int) -> float:
    """Seconds for one process to gather total_rows rows of row_bytes (uint8) on the GPU (CUDA events)."""
    import torch

    rows = torch.randint(0, 255, (8192, row_bytes), dtype=torch.uint8, device="cuda")
    index = torch.randint(0, 8192, (total_rows,), device="cuda")
    out = torch.empty((total_rows, row_bytes), dtype=torch.uint8, device="cuda")
    for _ in range(3):
        torch.index_select(rows, 0, index, out=out)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        torch.index_select(rows, 0, index, out=out)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 20 / 1000


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
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), PYTHONUNBUFFERED="1")
    rank_counts = [int(n) for n in os.environ.get("EP_BENCH_RANKS", "2,4,8").split(",")]
    cases = []
    for num_ranks in rank_counts:
        for mode in ("normal", "low_latency"):
            group = f"bench_{mode}_{uuid.uuid4().hex[:8]}"
            outputs = _run(_WORKER, [[group, str(r), str(num_ranks), mode] for r in range(num_ranks)], env, 300)
            results = []
            for code, stdout, stderr in outputs:
                line = [row for row in stdout.splitlines() if row.startswith("RESULT ")]
                if code != 0 or not line:
                    print(json.dumps({"bench": "ep", "mode": mode, "num_ranks": num_ranks, "error": stderr[-2000:]}))
                    return 1
                results.append(json.loads(line[0][len("RESULT "):]))
            mean = lambda key: sum(r[key] for r in results) / len(results)
            case = {"bench": "ep", "device": device_name, "mode": mode, "num_ranks": num_ranks,
                    "ranks_share_one_gpu": num_gpus < num_ranks, "num_gpus": min(num_gpus, num_ranks),
                    "num_sms": int(os.environ.get("EP_NUM_SMS", "24")),
                    "hidden": 7168, "num_topk": 8, "num_experts": 256,
                    "tokens_per_rank": 4096 if mode == "normal" else 128}
            for op in ("dispatch", "combine"):
                seconds = mean(f"{op}_us") / 1e6
                case[f"{op}_us"] = round(seconds * 1e6, 1)
                case[f"{op}_gb_per_s_per_rank"] = round(mean(f"{op}_bytes") / seconds / 1e9, 2)
                # Baseline: one process gathering every rank's rows at once (the HBM ceiling of the copy).
                total_bytes = sum(r[f"{op}_bytes"] for r in results)
                row_bytes = 7168 * 2 if op == "combine" else 7168 + 7168 // 128 * 4
                baseline_s = _copy_baseline(int(total_bytes // row_bytes), row_bytes)
                case[f"{op}_baseline_torch_copy_us"] = round(baseline_s * 1e6, 1)
                case[f"{op}_ratio_to_copy"] = round(baseline_s / seconds, 3)
            if mode == "normal":
                case["cached_dispatch_us"] = round(mean("cached_dispatch_us"), 1)
                case["num_recv_tokens_mean"] = round(mean("num_recv_tokens"), 1)
            cases.append(case)
            print(json.dumps(case), flush=True)

    # torch.distributed all_to_all_single over NCCL: one rank per GPU when spread, else 2 ranks on this GPU.
    port = str(29500 + os.getpid() % 1000)
    nccl_ranks = max(2, num_gpus)
    outputs = _run(_NCCL_WORKER, [[str(r), str(nccl_ranks), port] for r in range(nccl_ranks)], env, 60)
    lines = [[row for row in stdout.splitlines() if row.startswith("RESULT ")] for _, stdout, _ in outputs]
    if all(code == 0 for code, _, _ in outputs) and all(lines):
        timings = [json.loads(line[0][len("RESULT "):]) for line in lines]
        seconds = sum(t["us"] for t in timings) / len(timings) / 1e6
        nccl = {"baseline": "torch.distributed.all_to_all_single (NCCL)", "ran": True, "num_ranks": nccl_ranks,
                "num_gpus": num_gpus, "rows_bf16_hidden_7168": int(os.environ.get("EP_NCCL_ROWS", "8192")),
                "us": round(seconds * 1e6, 1), "gb_per_s_per_rank": round(timings[0]["bytes"] / seconds / 1e9, 2)}
    else:
        def reason(code: int, stderr: str) -> str:
            lines = [line for line in stderr.splitlines() if "rror" in line and "destroy_process_group" not in line]
            return lines[-1][-500:] if lines else f"exit {code}, no error line on stderr"

        errors = [reason(code, stderr) for code, _, stderr in outputs]
        nccl = {"baseline": "torch.distributed.all_to_all_single (NCCL)", "ran": False, "errors": errors[:2]}
    print(json.dumps(nccl), flush=True)
    short = device_name.lower().replace("nvidia ", "").split()[0]
    suffix = f"_x{num_gpus}" if spread else ""
    out = pathlib.Path(os.environ.get("EP_BENCH_OUT", ROOT / "bench" / "results" / f"ep_{short}{suffix}.json"))
    out.write_text(json.dumps({
        "device": device_name,
        "note": (f"Ranks spread over {num_gpus} GPUs (rank r on GPU r % {num_gpus}), peers written over NVLink. " if spread
                 else "") + ("N rank processes share ONE GPU where ranks > GPUs: figures are HBM-to-HBM copies plus protocol overheads (host "
                 "barriers, time-sliced kernels of different processes), not NVLink. Normal mode: 4096 tokens per "
                 "rank, hidden 7168, top-8 of 256 experts, FP8 dispatch, BF16 combine; low-latency: 128 tokens per "
                 "rank. Bytes as DeepEP's tests; GB/s per rank. Baseline: one process gathering all ranks' rows "
                 "with torch.index_select (CUDA events), same bytes."),
        "cases": cases,
        "nccl_all_to_all_single": nccl,
    }, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
