"""Records a real PyTorch profiler trace on a GPU machine and checks ff-trace's reading of it.

Matrix products run on the default stream while device-to-device copies and NCCL all-reduces (a
one-rank process group, which launches no kernel: NCCL needs two GPUs for that) run on a side stream,
so the trace has compute, "communication" and overlap between them, in exactly the format PyTorch
writes. ff-trace analyses it with the copies classified as communication (--comm-pattern), and the
script checks that the report finds the GPU kernels, the copies, and their overlap with compute.

    python3 bench/trace/torch_profile_sample.py --out OUT_DIR [--ff-trace build/bin/ff-trace]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--ff-trace", default=os.path.join(os.environ.get("FF_BUILD_DIR", "build"), "bin", "ff-trace"))
    args = parser.parse_args()

    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        print("torch_profile_sample: no GPU; nothing to do")
        return 0
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl", rank=0, world_size=1)
    device = torch.device("cuda")
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    b = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    buffer = torch.randn(64 << 20, device=device)
    copy_source = torch.randn(64 << 20, device=device)
    copy_target = torch.empty_like(copy_source)
    side = torch.cuda.Stream()
    torch.cuda.synchronize()

    def step():
        with torch.cuda.stream(side):
            for _ in range(4):
                dist.all_reduce(buffer)
                copy_target.copy_(copy_source)
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
    trace_path = out / "torch_trace.json"
    profile.export_chrome_trace(str(trace_path))
    dist.destroy_process_group()

    report_path = out / "torch_trace_report.json"
    result = subprocess.run([args.ff_trace, str(trace_path), "--top", "10", "--json", str(report_path),
                             "--svg", str(out / "torch_trace_timeline.svg"), "--comm-pattern", "Memcpy DtoD"],
                            capture_output=True, text=True, timeout=300)
    print(result.stdout)
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        return 1
    report = json.loads(report_path.read_text())
    gpu_processes = [p for p in report["processes"] if p["compute_ns"] > 0]
    checks = {
        "found GPU compute": bool(gpu_processes),
        "found the side-stream copies as communication": report["comm_ns"] > 0,
        "communication overlapped with compute": report["hidden_comm_ns"] > 0,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    print(json.dumps({"bench": "torch_trace_read", "device": torch.cuda.get_device_name(),
                      "trace_bytes": trace_path.stat().st_size, "comm_ns": report["comm_ns"],
                      "hidden_fraction": report["hidden_fraction"], "checks_passed": all(checks.values())}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
