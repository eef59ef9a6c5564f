"""One decode of a benchmark shape per cache kind, for a profiler (ncu -k regex:mla_decode_kernel).

Usage: PYTHONPATH=python ncu --clock-control none -k regex:mla_decode_kernel python3 bench/mla/profile_mla.py
       [--h-q 16] [--s-q 1] [--length 8192] [--kinds bf16,fp8]
Each kind runs once as warm-up (its first launch sets the kernel's shared-memory attribute) and once
more; profile the later launches (ncu's --launch-skip)."""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "python"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--h-q", type=int, default=16)
    parser.add_argument("--s-q", type=int, default=1)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--kinds", default="bf16,fp8")
    args = parser.parse_args()
    import torch

    from fireflyer import mla

    if not torch.cuda.is_available():
        print("no CUDA GPU")
        return 0
    b, length = args.batch, args.length
    blocks = (length + 63) // 64
    seqlens = torch.full((b,), length, dtype=torch.int32, device="cuda")
    block_table = torch.randperm(b * blocks, device="cuda").int().reshape(b, blocks)
    cache = torch.randn((b * blocks, 64, 1, 576), dtype=torch.bfloat16, device="cuda")
    q = torch.randn((b, args.s_q, args.h_q, 576), dtype=torch.bfloat16, device="cuda")
    metadata, splits = mla.get_mla_metadata(seqlens, args.s_q * args.h_q, 1)
    for kind in args.kinds.split(","):
        kv = mla.quantize_kvcache_fp8(cache) if kind == "fp8" else cache
        for _ in range(2):
            mla.flash_mla_with_kvcache(q, kv, block_table, seqlens, 512, metadata, splits, is_fp8_kvcache=kind == "fp8",
                                       check_values=False)
        torch.cuda.synchronize()
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
