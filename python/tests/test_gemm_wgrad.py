"""fireflyer.gemm's weight-gradient GEMMs (wgrad_gemm_fp8_fp8_fp32_nt, k_grouped_wgrad_gemm_fp8_fp8_fp32_nt, and
fp8_gemm_nt with a float32 d) through the binding with numpy: the CPU implementation against float64 references
computed here."""

from __future__ import annotations

import numpy as np
import pytest

from fireflyer import gemm

from test_gemm import TABLE


def codes(rng, shape):
    values = rng.integers(0, 256, size=shape, dtype=np.uint8)
    finite = ((values & 0x7F) != 0x7F) & (((values >> 3) & 15) <= 9)
    return np.where(finite, values, np.uint8(0x38))


def scales(rng, shape):
    return (rng.uniform(0.5, 2.0, size=shape) * 2.0 ** rng.integers(-8, 1, size=shape)).astype(np.float32)


def operands(rng, m, n, k):
    kb = -(-k // 128)
    return codes(rng, (m, k)), scales(rng, (m, kb)), codes(rng, (n, k)), scales(rng, (n, kb))


def dequantised(x, sx):
    """float64 rows of x (rows, k) times their per-1x128 scales sx (rows, kb)."""
    k = x.shape[1]
    return TABLE[x] * np.repeat(sx.astype(np.float64), 128, axis=1)[:, :k]


def reference(a, sa, b, sb, start):
    """start + A B^T in float64, and the sum of |terms| (the scale of fp32 rounding)."""
    a_full, b_full = dequantised(a, sa), dequantised(b, sb)
    return start + a_full @ b_full.T, np.abs(start) + np.abs(a_full) @ np.abs(b_full).T


def assert_close(out, expected, magnitude):
    assert np.all(np.abs(out.astype(np.float64) - expected) <= 1e-5 * magnitude + 1e-30)


@pytest.mark.parametrize("m,n,k", [(1, 4, 128), (65, 200, 256), (129, 132, 384), (4, 64, 200), (3, 130, 100)])
def test_wgrad_adds_the_scaled_product(m, n, k):
    rng = np.random.default_rng(m * 7 + n + k)
    a, sa, b, sb = operands(rng, m, n, k)
    out = rng.uniform(-4, 4, size=(m, n)).astype(np.float32)
    expected, magnitude = reference(a, sa, b, sb, out.astype(np.float64))
    gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), out)
    assert_close(out, expected, magnitude)


def test_wgrad_takes_transposed_and_tma_aligned_scales_with_the_same_bits():
    rng = np.random.default_rng(3)
    a, sa, b, sb = operands(rng, 6, 12, 384)
    start = rng.uniform(-1, 1, size=(6, 12)).astype(np.float32)
    plain, transposed, aligned = start.copy(), start.copy(), start.copy()
    gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), plain)
    # DeepGEMM passes (kb, rows) scales, contiguous: read as the transpose.
    gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, np.ascontiguousarray(sa.T)), (b, np.ascontiguousarray(sb.T)), transposed)
    gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, gemm.get_col_major_tma_aligned_tensor(sa)),
                                    (b, gemm.get_col_major_tma_aligned_tensor(sb)), aligned)
    assert plain.tobytes() == transposed.tobytes() == aligned.tobytes()


def test_k_grouped_wgrad_equals_a_dense_call_per_batch():
    rng = np.random.default_rng(11)
    m, n, sizes = 5, 12, [256, 0, 200, 128]
    batches = [operands(rng, m, n, k) for k in sizes]
    start = rng.uniform(-1, 1, size=(len(sizes), m, n)).astype(np.float32)
    flat_a = np.concatenate([a.reshape(-1) for a, _, _, _ in batches])
    flat_b = np.concatenate([b.reshape(-1) for _, _, b, _ in batches])
    # The scales of each batch transposed, (kb, rows), one batch after another.
    flat_sa = np.concatenate([sa.T for _, sa, _, _ in batches]).astype(np.float32)
    flat_sb = np.concatenate([sb.T for _, _, _, sb in batches]).astype(np.float32)
    out = start.copy()
    gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((flat_a, flat_sa), (flat_b, flat_sb), out, sizes)
    for g, (a, sa, b, sb) in enumerate(batches):
        single = start[g].copy()
        gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), single)
        assert out[g].tobytes() == single.tobytes(), f"batch {g}"
        expected, magnitude = reference(a, sa, b, sb, start[g].astype(np.float64))
        assert_close(out[g], expected, magnitude)
    assert out[1].tobytes() == start[1].tobytes()  # k = 0


def test_fp8_gemm_nt_with_a_float32_d_is_d_equals_c_plus_ab():
    """DeepGEMM v2's fp8_gemm_nt with a float32 d and the (1, 1, 128) recipe: d = c + a b^T, c None, d itself or
    another tensor."""
    rng = np.random.default_rng(5)
    a, sa, b, sb = operands(rng, 9, 16, 256)
    c = rng.uniform(-2, 2, size=(9, 16)).astype(np.float32)
    zeros = np.zeros((9, 16), np.float32)
    expected_ab, magnitude = reference(a, sa, b, sb, zeros.astype(np.float64))

    d = np.full((9, 16), np.nan, np.float32)
    gemm.fp8_gemm_nt((a, sa), (b, sb), d, recipe=(1, 1, 128))
    assert_close(d, expected_ab, magnitude)

    d_other = np.full((9, 16), np.nan, np.float32)
    gemm.fp8_gemm_nt((a, sa), (b, sb), d_other, c=c)
    in_place = c.copy()
    gemm.fp8_gemm_nt((a, sa), (b, sb), in_place, c=in_place, compiled_dims="nk")
    expected_c, magnitude_c = reference(a, sa, b, sb, c.astype(np.float64))
    assert_close(d_other, expected_c, magnitude_c)
    assert d_other.tobytes() == in_place.tobytes()

    untouched = np.full((9, 16), 7.0, np.float32)
    for options, message in (({"recipe": (1, 128, 128)}, r"recipe=\(1, 128, 128\) with a float32 d"),
                             ({"alpha": 2.0}, "alpha=2.0"), ({"beta": 0.5}, "beta=0.5")):
        with pytest.raises(NotImplementedError, match=message):
            gemm.fp8_gemm_nt((a, sa), (b, sb), untouched, c=untouched, **options)
    assert (untouched == 7.0).all()


def test_wgrad_bad_input_names_the_value():
    rng = np.random.default_rng(1)
    a, sa, b, sb = operands(rng, 4, 256, 256)
    out = np.full((4, 256), 3.0, np.float32)
    with pytest.raises(ValueError, match=r"b.scales has shape \[2, 2\]; expected \[256, 2\]"):
        gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, np.ones((2, 2), np.float32)), out)
    with pytest.raises(ValueError, match="out has dtype bfloat16; expected float32"):
        gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), np.zeros((4, 256), np.uint16))
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    with pytest.raises(ValueError, match=r"batch_sizes\[1\]=1.5 must be an integer"):
        gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((flat_a, sa.T.copy()), (flat_b, sb.T.copy()), out[None], [256, 1.5])
    with pytest.raises(ValueError, match="2 batches.* but batch_sizes has 1"):
        gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((flat_a, sa.T.copy()), (flat_b, sb.T.copy()),
                                                  np.zeros((2, 4, 256), np.float32), [256])
    assert (out == 3.0).all()


def test_wgrad_with_torch_cpu_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((64, 256)).astype(np.float32))  # output gradients (tokens, rows)
    y = torch.from_numpy(rng.standard_normal((32, 256)).astype(np.float32))
    a, sa = gemm.per_token_cast_to_fp8(x)
    b, sb = gemm.per_token_cast_to_fp8(y)
    out = torch.zeros((64, 32), dtype=torch.float32)
    gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), out)
    expected, magnitude = reference(a.view(torch.uint8).numpy(), sa.numpy(), b.view(torch.uint8).numpy(),
                                    sb.numpy(), np.zeros((64, 32)))
    assert_close(out.numpy(), expected, magnitude)
    assert gemm.calc_diff(out.numpy(), (x @ y.T).numpy()) < 1e-3


def test_v2_k_grouped_name_takes_deepgemms_transposed_scale_view():
    """k_grouped_fp8_gemm_nt_contiguous (DeepGEMM v2): scales as the (rows, sum of k/128) view DeepGEMM passes."""
    rng = np.random.default_rng(21)
    m, n, sizes = 4, 8, [128, 256]
    batches = [operands(rng, m, n, k) for k in sizes]
    flat_a = np.concatenate([a.reshape(-1) for a, _, _, _ in batches])
    flat_b = np.concatenate([b.reshape(-1) for _, _, b, _ in batches])
    sa_blocks = np.concatenate([sa.T for _, sa, _, _ in batches]).astype(np.float32)  # (3, m)
    sb_blocks = np.concatenate([sb.T for _, _, _, sb in batches]).astype(np.float32)  # (3, n)
    start = rng.uniform(-1, 1, size=(2, m, n)).astype(np.float32)
    v1 = start.copy()
    gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((flat_a, sa_blocks), (flat_b, sb_blocks), v1, sizes)
    v2 = start.copy()
    gemm.k_grouped_fp8_gemm_nt_contiguous((flat_a, sa_blocks.T), (flat_b, sb_blocks.T), v2, sizes,
                                          np.array(sizes, np.int32), v2, recipe=(1, 1, 128))
    assert v1.tobytes() == v2.tobytes()
    fresh = np.full((2, m, n), np.nan, np.float32)  # c None: d = a b^T
    gemm.k_grouped_fp8_gemm_nt_contiguous((flat_a, sa_blocks), (flat_b, sb_blocks), fresh, sizes)
    assert np.allclose(fresh, v1 - start, rtol=1e-5, atol=1e-5)
    with pytest.raises(NotImplementedError, match="use_psum_layout=True"):
        gemm.k_grouped_fp8_gemm_nt_contiguous((flat_a, sa_blocks), (flat_b, sb_blocks), v2, sizes,
                                              use_psum_layout=True)
