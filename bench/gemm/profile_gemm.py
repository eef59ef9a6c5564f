"""One call of the dense FP8 GEMM per 128x128 consumer, for Nsight Compute (one kernel launch each, in this order:
cooperative_128x128, cooperative_128x128_overlap, cooperative_128x128_stagger), on 4096 x 4096 x 7168:

  ncu --clock-control none -k regex:device_kernel -c 3 --section SpeedOfLight --section WarpStateStats \\
      python3 bench/gemm/profile_gemm.py

Exits 0 with a message without torch or a CUDA GPU.
"""

from __future__ import annotations

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "python"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_gemm import import_cuda_torch  # noqa: E402

CONFIGS = ["cooperative_128x128", "cooperative_128x128_overlap", "cooperative_128x128_stagger"]


def main() -> int:
    torch = import_cuda_torch("profile_gemm")
    if torch is None:
        return 0
    from fireflyer import gemm

    m, n, k = 4096, 4096, 7168
    torch.manual_seed(0)
    a = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
    sa = gemm.get_col_major_tma_aligned_tensor(torch.rand(m, k // 128, device="cuda") + 0.5)
    sb = torch.rand(n // 128, k // 128, device="cuda") + 0.5
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    for config in CONFIGS:
        os.environ["FF_GEMM_TILE_CONFIG"] = config
        gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), out)
        torch.cuda.synchronize()
        print(f"profile_gemm: {config} {m}x{n}x{k} done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
