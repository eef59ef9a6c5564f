"""Records a real PyTorch profiler trace on a GPU machine and checks ff-trace's reading of it.

Matrix products run on the default stream while communication runs on a side stream, so the trace
has compute, communication and overlap between them, in exactly the format PyTorch writes:
- with two or more GPUs: two ranks over NCCL (all-to-all and all-reduce kernels on the side stream),
  analysed with ff-trace's default patterns;
- with one GPU: a one-rank NCCL group launches no kernel, so device-to-device copies stand in for the
  communication and ff-trace is told so (--comm-pattern "Memcpy DtoD").
Then the script checks that the report finds the GPU kernels, the communication, and their overlap.

    python3 bench/trace/torch_profile_sample.py --out OUT_DIR [--ff-trace build/bin/ff-trace]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys


def record(rank: int, world_size: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    device = torch.device("cuda", rank)
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    b = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    buffer = torch.randn(64 << 20, device=device)
    send = torch.randn(world_size * (16 << 20), device=device)
    receive = torch.empty_like(send)
    copy_target = torch.empty_like(buffer)
    side = torch.cuda.Stream(device=device)
    torch.cuda.synchronize()

    def step():
        with torch.cuda.stream(side):
            for _ in range(4):
                if world_size > 1:
                    dist.all_to_all_single(receive, send)
                    dist.all_reduce(buffer)
                else:
                    copy_target.copy_(buffer)
        for _ in range(16):
            torch.matmul(a, b)
        torch.cuda.current_stream().wait_stream(side)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    profile.export_chrome_trace(os.path.join(out, f"torch_trace_rank{rank}.json"))
    dist.barrier()
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--ff-trace", default=os.path.join(os.environ.get("FF_BUILD_DIR", "build"), "bin", "ff-trace"))
    args = parser.parse_args()

    import torch
    import torch.multiprocessing as mp

    if not torch.cuda.is_available():
        print("torch_profile_sample: no GPU; nothing to do")
        return 0
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world_size = min(torch.cuda.device_count(), 2)
    if world_size > 1:
        mp.spawn(record, args=(world_size, str(out)), nprocs=world_size, join=True)
    else:
        record(0, 1, str(out))
    trace_path = out / "torch_trace_rank0.json"

    report_path = out / "torch_trace_report.json"
    command = [args.ff_trace, str(trace_path), "--top", "10", "--json", str(report_path),
               "--svg", str(out / "torch_trace_timeline.svg")]
    if world_size == 1:
        command += ["--comm-pattern", "Memcpy DtoD"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    print(result.stdout)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return 1
    report = json.loads(report_path.read_text())
    gpu_processes = [p for p in report["processes"] if p["compute_ns"] > 0]
    comm_kind = "NCCL kernels (default patterns)" if world_size > 1 else "side-stream copies (--comm-pattern)"
    checks = {
        "found GPU compute": bool(gpu_processes),
        f"found communication: {comm_kind}": report["comm_ns"] > 0,
        "communication overlapped with compute": report["hidden_comm_ns"] > 0,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    print(json.dumps({"bench": "torch_trace_read", "device": torch.cuda.get_device_name(), "ranks": world_size,
                      "trace_bytes": trace_path.stat().st_size, "comm_ns": report["comm_ns"],
                      "hidden_fraction": report["hidden_fraction"], "checks_passed": all(checks.values())}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
