"""Our GEMM and DeepGEMM's on the same inputs, one call each per shape inside a profiler window, for ncu.

Usage (GPU machine, after bench/baselines/run_on_gpu.sh build):
  PYTHONPATH=python ncu --profile-from-start off --section SpeedOfLight ... \
      python3 bench/baselines/profile_gemm_pair.py dense:64,7168,2048 dense:4096,32768,512
Each case is run once by both sides before the window (DeepGEMM's JIT, our first launch's shared-memory
attribute); inside it, per case: ours, then DeepGEMM's, each inside an NVTX range named `<case> ours` /
`<case> deep_gemm` (`<case>` as given, e.g. `dense:64,7168,2048`) (ncu --nvtx shows it), so every kernel a call launches is profiled, helpers included.
"""

from __future__ import annotations

import sys

from bench_anchors import case_label, gemm_case, gemm_functions, load_anchors


def parse_case(text: str):
    kind, dims = text.split(":")
    if kind not in ("dense", "contiguous", "masked"):
        raise SystemExit(f"case '{text}': kind '{kind}' is not dense, contiguous or masked")
    shape = tuple(int(x) for x in dims.split(","))
    if len(shape) != (3 if kind == "dense" else 4):
        raise SystemExit(f"case '{text}': expected {'m,n,k' if kind == 'dense' else 'groups,m,n,k'}")
    return kind, shape


def main() -> int:
    cases = [parse_case(arg) for arg in sys.argv[1:]] or [("dense", (64, 7168, 2048))]
    import torch

    from fireflyer import gemm

    deep_gemm, _, reasons = load_anchors()
    if deep_gemm is None or not torch.cuda.is_available():
        print(f"needs a GPU and DeepGEMM (bench/baselines/fetch.sh): {reasons}")
        return 1
    generator = torch.Generator().manual_seed(8)
    calls = []
    for kind, shape in cases:
        ours, anchor = gemm_functions(gemm, deep_gemm, kind, gemm_case(torch, kind, shape, generator))
        ours()
        anchor()
        calls.append((case_label(kind, shape), ours, anchor))
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for name, ours, anchor in calls:
        for side, function in (("ours", ours), ("deep_gemm", anchor)):
            torch.cuda.nvtx.range_push(f"{name} {side}")
            function()
            torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print("profiled:", ", ".join(name for name, _, _ in calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
