"""fireflyer.gemm's sm_90a kernels on a GPU: against the CPU implementation (numpy through the same binding) and
against torch bf16 matmul of the dequantised inputs, calc_diff < 1e-3. Skips without torch, a GPU, or kernels."""

from __future__ import annotations

import numpy as np
import pytest

from fireflyer import gemm

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)


def kernels_built() -> bool:
    a = torch.zeros(1, 128, device="cuda").to(torch.float8_e4m3fn)
    s = torch.ones(1, 1, device="cuda")
    out = torch.empty(1, 128, device="cuda", dtype=torch.bfloat16)
    b = torch.zeros(128, 128, device="cuda").to(torch.float8_e4m3fn)
    try:
        gemm.gemm_fp8_fp8_bf16_nt((a, s), (b, s), out)
    except RuntimeError as error:
        if "no gemm CUDA kernels" in str(error):
            return False
        raise
    return True


if not kernels_built():
    pytest.skip("this build has no gemm CUDA kernels", allow_module_level=True)


def diff(x, y) -> float:
    x = x.double()
    y = y.double()
    return 1.0 - 2.0 * (x * y).sum().item() / (x * x + y * y).sum().item()


def dequantise_rows(q, s):
    *lead, k = q.shape
    return (q.float().view(*lead, k // 128, 128) * s.float().unsqueeze(-1)).view(*lead, k)


def dequantise_blocks(q, s):
    n, k = q.shape
    s = s.float().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    return q.float() * s


def cpu_result(fn, *arrays):
    """Runs fn over the numpy copies of the given torch tensors (the CPU implementation); returns float32 torch."""

    def to_numpy(value):
        if isinstance(value, tuple):
            return tuple(to_numpy(v) for v in value)
        if value.dtype == torch.float8_e4m3fn:
            return value.view(torch.uint8).cpu().numpy()
        if value.dtype == torch.bfloat16:
            return value.view(torch.int16).cpu().numpy().view(np.uint16)
        return value.cpu().contiguous().numpy()

    converted = [to_numpy(a) for a in arrays]
    fn(*converted)
    return converted


def force_config(monkeypatch, config: str) -> None:
    """FF_GEMM_TILE_CONFIG for one test ("" = the heuristic's choice)."""
    if config:
        monkeypatch.setenv("FF_GEMM_TILE_CONFIG", config)
    else:
        monkeypatch.delenv("FF_GEMM_TILE_CONFIG", raising=False)


@pytest.mark.parametrize("m,n,k", [(1, 128, 128), (65, 200, 256), (129, 256, 384), (256, 2112, 7168),
                                   (257, 320, 640)])
@pytest.mark.parametrize("layout", ["row_major", "tma_column_major"])
@pytest.mark.parametrize("config", ["", "cooperative_128x192", "cooperative_128x112", "cooperative_128x128_overlap",
                                    "cooperative_128x128_stagger", "pingpong_64x64", "pingpong_64x32",
                                    "pingpong_64x16", "pingpong_64x192", "pingpong_64x16_overlap",
                                    "pingpong_64x32_overlap", "pingpong_64x64_overlap", "pingpong_64x128_overlap",
                                    "cooperative_256x128",
                                    "cooperative_256x128_cluster1x2"])
def test_dense_matches_cpu_and_dequantised_matmul(m, n, k, layout, config, monkeypatch):
    force_config(monkeypatch, config)
    torch.manual_seed(m + n + k)
    x = torch.randn(m, k, device="cuda")
    w = torch.randn(n, k, device="cuda")
    a, sa = gemm.per_token_cast_to_fp8(x)
    b, sb = gemm.per_block_cast_to_fp8(w)
    if layout == "tma_column_major":
        sa = gemm.get_col_major_tma_aligned_tensor(sa)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), out)
    torch.cuda.synchronize()
    assert not out.isnan().any()
    reference = dequantise_rows(a, sa) @ dequantise_blocks(b, sb).t()
    assert diff(out, reference) < 1e-3
    out_cpu = torch.empty(m, n, dtype=torch.bfloat16)
    _, _, out_np = cpu_result(lambda l, r, o: gemm.gemm_fp8_fp8_bf16_nt(l, r, o), (a, sa), (b, sb), out_cpu)
    cpu = torch.from_numpy(gemm.bf16_to_float32(out_np))
    assert diff(out.float().cpu(), cpu) < 1e-3


# Segments (group, rows), each padded to a multiple of 128 rows. As 256-row tiles (blocks 2t, 2t + 1): "three" has a
# tile of groups 1 and 0 and a last tile of one block; "five" has three tiles of two groups each (1/0, 2/1, 1/0),
# where indexed_256x128_cluster1x2 runs one pass over K per group.
CONTIGUOUS_SEGMENTS = {"three": [(1, 100), (0, 128), (2, 3)],
                       "five": [(1, 100), (0, 128), (2, 3), (1, 256), (0, 1)]}


@pytest.mark.parametrize("segments", ["three", "five"])
@pytest.mark.parametrize("config", ["", "indexed_128x192", "cooperative_128x192", "cooperative_128x112",
                                    "indexed_128x128_overlap", "indexed_128x128_stagger",
                                    "indexed_256x128_cluster1x2"])
def test_contiguous_matches_dequantised_matmul_and_zero_fills_padding(config, segments, monkeypatch):
    force_config(monkeypatch, config)
    torch.manual_seed(1)
    groups, n, k = 3, 256, 512
    segments = CONTIGUOUS_SEGMENTS[segments]
    indices = []
    for group, rows in segments:
        indices += [group] * rows + [-1] * (-rows % 128)
    m = len(indices)
    m_indices = torch.tensor(indices, dtype=torch.int32, device="cuda")
    a, sa = gemm.per_token_cast_to_fp8(torch.randn(m, k, device="cuda"))
    casts = [gemm.per_block_cast_to_fp8(torch.randn(n, k, device="cuda")) for _ in range(groups)]
    b = torch.stack([q for q, _ in casts])
    sb = torch.stack([s for _, s in casts])
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, sa), (b, sb), out, m_indices)
    torch.cuda.synchronize()
    deq_a = dequantise_rows(a, sa)
    for row_begin, (group, rows) in zip(np.cumsum([0] + [r + (-r % 128) for _, r in segments[:-1]]), segments):
        reference = deq_a[row_begin:row_begin + rows] @ dequantise_blocks(b[group], sb[group]).t()
        assert diff(out[row_begin:row_begin + rows], reference) < 1e-3
    padding = m_indices < 0
    assert (out[padding] == 0).all()


@pytest.mark.parametrize("layout", ["row_major", "tma_column_major"])
@pytest.mark.parametrize("config", ["", "cooperative_128x192", "cooperative_128x112", "cooperative_128x128_overlap",
                                    "cooperative_128x128_stagger", "masked_128x128_overlap",
                                    "masked_pingpong_64x128"])
def test_masked_leaves_rows_beyond_masked_m_untouched(config, layout, monkeypatch):
    force_config(monkeypatch, config)
    torch.manual_seed(2)
    groups, m_max, n, k = 4, 96, 384, 256
    masked = [0, 1, 50, 96]
    masked_m = torch.tensor(masked, dtype=torch.int32, device="cuda")
    a, sa = gemm.per_token_cast_to_fp8(torch.randn(groups * m_max, k, device="cuda"))
    a = a.view(groups, m_max, k)
    sa = sa.view(groups, m_max, k // 128)
    if layout == "tma_column_major":
        sa = gemm.get_col_major_tma_aligned_tensor(sa)
    casts = [gemm.per_block_cast_to_fp8(torch.randn(n, k, device="cuda")) for _ in range(groups)]
    b = torch.stack([q for q, _ in casts])
    sb = torch.stack([s for _, s in casts])
    sentinel = torch.tensor(12345.0, dtype=torch.bfloat16)
    out = torch.full((groups, m_max, n), sentinel.item(), device="cuda", dtype=torch.bfloat16)
    gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((a, sa), (b, sb), out, masked_m, 48)
    torch.cuda.synchronize()
    for g, rows in enumerate(masked):
        assert (out[g, rows:] == sentinel.item()).all()
        if rows:
            reference = dequantise_rows(a[g, :rows], sa[g, :rows]) @ dequantise_blocks(b[g], sb[g]).t()
            assert diff(out[g, :rows], reference) < 1e-3


def test_gpu_layout_errors_name_the_value():
    a = torch.zeros(4, 200, device="cuda").to(torch.float8_e4m3fn)
    sa = torch.ones(4, 2, device="cuda")
    b = torch.zeros(128, 200, device="cuda").to(torch.float8_e4m3fn)
    sb = torch.ones(1, 2, device="cuda")
    out = torch.empty(4, 128, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="k=200 is not a multiple of 128"):
        gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), out)
