"""fireflyer.gemm's weight-gradient kernel on a GPU: against the CPU implementation (numpy through the same binding)
and torch's float64 matmul of the dequantised inputs. Skips without torch, a GPU, or kernels."""

from __future__ import annotations

import numpy as np
import pytest

from fireflyer import gemm

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)


def kernels_built() -> bool:
    a = torch.zeros(4, 128, device="cuda").to(torch.float8_e4m3fn)
    s = torch.ones(4, 1, device="cuda")
    out = torch.zeros(4, 4, device="cuda")
    try:
        gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, s), (a, s), out)
    except RuntimeError as error:
        if "no gemm CUDA kernels" in str(error):
            return False
        raise
    return True


if not kernels_built():
    pytest.skip("this build has no gemm CUDA kernels", allow_module_level=True)


def dequantised(q, s):
    """float64 (rows, k) of q (rows, k) e4m3 times its per-1x128 scales s (rows, kb)."""
    rows, k = q.shape
    return q.double() * s.double().repeat_interleave(128, 1)[:, :k]


def diff(x, y) -> float:
    x, y = x.double(), y.double()
    return 1.0 - 2.0 * (x * y).sum().item() / (x * x + y * y).sum().item()


def operands(m, n, k, seed):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    a, sa = gemm.per_token_cast_to_fp8(torch.randn(m, k, device="cuda", generator=generator))
    b, sb = gemm.per_token_cast_to_fp8(torch.randn(n, k, device="cuda", generator=generator))
    return a, sa, b, sb


@pytest.mark.parametrize("m,n,k", [(128, 128, 128), (129, 132, 384), (7, 4, 208), (1024, 2048, 4096),
                                   (300, 520, 1040)])
@pytest.mark.parametrize("layout", ["row_major", "tma_aligned", "transposed"])
def test_wgrad_matches_cpu_and_float64(m, n, k, layout):
    a, sa, b, sb = operands(m, n, k, m + n + k)
    start = torch.randn(m, n, device="cuda") * 8
    out = start.clone()
    if layout == "tma_aligned":
        sa_arg, sb_arg = gemm.get_col_major_tma_aligned_tensor(sa), gemm.get_col_major_tma_aligned_tensor(sb)
    elif layout == "transposed":  # DeepGEMM's (kb, rows) form
        sa_arg, sb_arg = sa.T.contiguous(), sb.T.contiguous()
    else:
        sa_arg, sb_arg = sa, sb
    gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, sa_arg), (b, sb_arg), out)
    torch.cuda.synchronize()

    cpu = start.cpu().numpy().copy()
    gemm.wgrad_gemm_fp8_fp8_fp32_nt((a.view(torch.uint8).cpu().numpy(), sa.cpu().numpy()),
                                    (b.view(torch.uint8).cpu().numpy(), sb.cpu().numpy()), cpu)
    reference = start.double() + dequantised(a, sa) @ dequantised(b, sb).T
    # The tensor cores sum each 128-wide K block of fp8 products with fewer mantissa bits than fp32 (why blocks are
    # promoted): ~1e-4 of an element's magnitude apart from the CPU's fp32 sums.
    assert diff(out, torch.from_numpy(cpu).cuda()) < 1e-6
    assert diff(out, reference) < 1e-6
    magnitude = start.double().abs() + dequantised(a, sa).abs() @ dequantised(b, sb).abs().T
    assert bool(((out.double() - reference).abs() <= 1e-3 * magnitude + 1e-30).all())


def test_k_grouped_wgrad_matches_a_loop_of_dense_calls():
    m, n, sizes = 264, 392, [512, 0, 208, 1024, 128]
    parts = [operands(m, n, k, 100 + g) if k else None for g, k in enumerate(sizes)]
    empty_fp8 = torch.empty(0, dtype=torch.float8_e4m3fn, device="cuda")
    flat_a = torch.cat([p[0].reshape(-1) if p else empty_fp8 for p in parts])
    flat_b = torch.cat([p[2].reshape(-1) if p else empty_fp8 for p in parts])
    flat_sa = torch.cat([p[1].T for p in parts if p]).contiguous()
    flat_sb = torch.cat([p[3].T for p in parts if p]).contiguous()
    start = torch.randn(len(sizes), m, n, device="cuda")
    out = start.clone()
    gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((flat_a, flat_sa), (flat_b, flat_sb), out, sizes)
    for g, p in enumerate(parts):
        expected = start[g].clone()
        if p:
            gemm.wgrad_gemm_fp8_fp8_fp32_nt((p[0], p[1]), (p[2], p[3]), expected)
        torch.cuda.synchronize()
        assert torch.equal(out[g], expected), f"batch {g} (k={sizes[g]})"


def test_fp8_gemm_nt_float32_d_on_the_gpu():
    a, sa, b, sb = operands(256, 384, 1024, 5)
    c = torch.randn(256, 384, device="cuda")
    d = torch.full((256, 384), float("nan"), device="cuda")
    gemm.fp8_gemm_nt((a, sa), (b, sb), d, c=c, recipe=(1, 1, 128))
    in_place = c.clone()
    gemm.fp8_gemm_nt((a, sa), (b, sb), in_place, c=in_place)
    torch.cuda.synchronize()
    assert torch.equal(d, in_place)
    reference = c.double() + dequantised(a, sa) @ dequantised(b, sb).T
    assert diff(d, reference) < 1e-6


def test_wgrad_gpu_layout_errors_name_the_value():
    a, sa, b, sb = operands(8, 8, 256, 1)
    out = torch.zeros(8, 6, device="cuda")
    with pytest.raises(ValueError, match="n=6 is not a multiple of 4"):
        gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b[:6], sb[:6]), out)
    with pytest.raises(ValueError, match="k=200 is not a multiple of 16"):
        gemm.wgrad_gemm_fp8_fp8_fp32_nt((a[:, :200], sa), (b[:, :200], sb), torch.zeros(8, 8, device="cuda"))
    assert bool((out == 0).all())
