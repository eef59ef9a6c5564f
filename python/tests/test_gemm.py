"""fireflyer.gemm through the binding with numpy: the CPU implementation against float64 references computed here."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fireflyer import gemm


def e4m3_table() -> np.ndarray:
    """float64 value of every e4m3fn code from the format's definition (independent of the extension)."""
    codes = np.arange(256)
    sign = np.where(codes >= 128, -1.0, 1.0)
    exponent = (codes >> 3) & 15
    mantissa = (codes & 7).astype(np.float64)
    magnitude = np.where(exponent == 0, mantissa / 8 * 2.0**-6, (1 + mantissa / 8) * 2.0 ** (exponent - 7.0))
    values = sign * magnitude
    values[(exponent == 15) & (codes & 7 == 7)] = np.nan
    return values


TABLE = e4m3_table()


def bf16_values(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def random_operands(rng, shape_a, shape_b):
    """Random finite e4m3 codes with |value| <= 7.5 and random power-of-two-ish scales."""

    def codes(shape):
        values = rng.integers(0, 256, size=shape, dtype=np.uint8)
        finite = ((values & 0x7F) != 0x7F) & (((values >> 3) & 15) <= 9)
        return np.where(finite, values, np.uint8(0x38))

    def scales(shape):
        return (rng.uniform(0.5, 2.0, size=shape) * 2.0 ** rng.integers(-8, 1, size=shape)).astype(np.float32)

    k = shape_a[-1]
    kb = -(-k // 128)
    a, b = codes(shape_a), codes(shape_b)
    sa = scales(shape_a[:-1] + (kb,))
    sb = scales(shape_b[:-2] + (-(-shape_b[-2] // 128), kb))
    return a, sa, b, sb


def reference(a, sa, b, sb) -> np.ndarray:
    """float64 dequantise-then-matmul of one group: a (m, k), sa (m, kb), b (n, k), sb (nb, kb)."""
    k = a.shape[1]
    a_full = TABLE[a] * np.repeat(sa.astype(np.float64), 128, axis=1)[:, :k]
    scale_b = np.repeat(np.repeat(sb.astype(np.float64), 128, axis=0), 128, axis=1)[: b.shape[0], :k]
    return a_full @ (TABLE[b] * scale_b).T


@pytest.mark.parametrize("m,n,k", [(1, 112, 128), (65, 200, 256), (129, 128, 384), (4, 64, 200), (3, 130, 100)])
def test_dense_matches_float64_reference(m, n, k):
    rng = np.random.default_rng(m * 1000 + n + k)
    a, sa, b, sb = random_operands(rng, (m, k), (n, k))
    out = np.full((m, n), 0x7FC0, dtype=np.uint16)
    gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), out)
    expected = reference(a, sa, b, sb)
    actual = bf16_values(out)
    assert gemm.calc_diff(actual, expected) < 1e-5
    np.testing.assert_allclose(actual, expected, rtol=2.0**-8, atol=1e-6)


def test_e4m3_and_bf16_conversions():
    decoded = gemm.e4m3_to_float32(np.arange(256, dtype=np.uint8)).astype(np.float64)
    np.testing.assert_array_equal(decoded, TABLE)  # NaN positions equal too
    assert gemm.float32_to_e4m3(np.array([448.0, 464.0, 470.0, -1.0], np.float32)).tolist() == [0x7E, 0x7E, 0x7F, 0xB8]
    assert gemm.float32_to_bf16(np.array([1.0, 1.0 + 2.0**-8, -2.0], np.float32)).tolist() == [0x3F80, 0x3F80, 0xC000]


def test_quantised_gemm_close_to_float_product_and_casts_follow_the_anchor_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((33, 200)).astype(np.float32)
    w = rng.standard_normal((130, 200)).astype(np.float32)
    a, sa = gemm.per_token_cast_to_fp8(x)
    b, sb = gemm.per_block_cast_to_fp8(w)
    assert a.dtype == np.uint8 and a.shape == (33, 200) and sa.shape == (33, 2)
    assert b.shape == (130, 200) and sb.shape == (2, 2)
    # The anchor's formula in float32: amax per 1x128 (zero padded), clamp 1e-4, x * (448 / amax), where torch
    # evaluates 448 / amax as reciprocal(amax) * 448.
    padded = np.zeros((33, 256), np.float32)
    padded[:, :200] = x
    amax = np.maximum(np.abs(padded).reshape(33, 2, 128).max(axis=2), np.float32(1e-4))
    np.testing.assert_array_equal(sa, amax / np.float32(448.0))
    inverse = (np.float32(1.0) / amax) * np.float32(448.0)
    scaled = (padded.reshape(33, 2, 128) * inverse[:, :, None]).reshape(33, 256)[:, :200]
    np.testing.assert_array_equal(a, gemm.float32_to_e4m3(np.ascontiguousarray(scaled)))
    out = np.empty((33, 130), np.uint16)
    gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), out)
    diff = gemm.calc_diff(bf16_values(out), x.astype(np.float64) @ w.T.astype(np.float64))
    assert 0.0 < diff < 1e-3


def test_col_major_tma_aligned_tensor_layout_and_use():
    rng = np.random.default_rng(1)
    a, sa, b, sb = random_operands(rng, (65, 256), (64, 256))
    aligned = gemm.get_col_major_tma_aligned_tensor(sa)
    assert aligned.shape == (65, 2)
    assert tuple(s // 4 for s in aligned.strides) == (1, 68)
    np.testing.assert_array_equal(aligned, sa)
    assert gemm.get_col_major_tma_aligned_tensor(aligned) is aligned
    grouped = gemm.get_col_major_tma_aligned_tensor(np.stack([sa, sa * 2]))
    assert tuple(s // 4 for s in grouped.strides) == (68 * 2, 1, 68)
    out_row_major = np.empty((65, 64), np.uint16)
    out_aligned = np.empty((65, 64), np.uint16)
    gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), out_row_major)
    gemm.gemm_fp8_fp8_bf16_nt((a, aligned), (b, sb), out_aligned)
    np.testing.assert_array_equal(out_aligned, out_row_major)
    assert gemm.get_tma_aligned_size(65, 4) == 68


def test_grouped_contiguous_with_padding_rows():
    rng = np.random.default_rng(2)
    alignment = gemm.get_m_alignment_for_contiguous_layout()
    assert alignment == 128
    groups, n, k = 3, 200, 256
    sizes = [5, 131, 0]
    m_indices = []
    for group, size in enumerate(sizes):
        padded = -(-size // alignment) * alignment
        m_indices += [group] * size + [-1] * (padded - size)
    m_indices = np.array(m_indices + [-1] * alignment, dtype=np.int32)  # plus a block of pure padding
    m_sum = len(m_indices)
    a, sa, b, sb = random_operands(rng, (m_sum, k), (groups, n, k))
    a[m_indices < 0] = 0x7F  # NaN in padding rows must not reach the output
    out = np.full((m_sum, n), 0x7FC0, dtype=np.uint16)
    gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, sa), (b, sb), out, m_indices)
    assert (out[m_indices < 0] == 0).all()
    for group in range(groups):
        rows = m_indices == group
        if rows.any():
            expected = reference(a[rows], sa[rows], b[group], sb[group])
            assert gemm.calc_diff(bf16_values(out[rows]), expected) < 1e-5


def test_grouped_masked_leaves_rows_beyond_masked_m_untouched():
    rng = np.random.default_rng(3)
    groups, m_max, n, k = 3, 65, 112, 200
    a, sa, b, sb = random_operands(rng, (groups, m_max, k), (groups, n, k))
    masked_m = np.array([0, 17, m_max], dtype=np.int32)
    out = np.full((groups, m_max, n), 0x1234, dtype=np.uint16)
    gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((a, sa), (b, sb), out, masked_m, expected_m=32)
    for group in range(groups):
        valid = masked_m[group]
        assert (out[group, valid:] == 0x1234).all()
        if valid:
            expected = reference(a[group, :valid], sa[group, :valid], b[group], sb[group])
            assert gemm.calc_diff(bf16_values(out[group, :valid]), expected) < 1e-5


def _dense_args():
    rng = np.random.default_rng(4)
    a, sa, b, sb = random_operands(rng, (65, 256), (200, 256))
    return a, sa, b, sb, np.empty((65, 200), np.uint16)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda x: x.update(a=x["a"].astype(np.float64)), "a has dtype float64; expected float8_e4m3fn"),
        (lambda x: x.update(a=x["a"].astype(np.float32)), "a.data has dtype float32; expected float8_e4m3fn"),
        (lambda x: x.update(sa=x["sa"][:, :1]), "a.scales has shape [65, 1]; expected [65, 2]"),
        (lambda x: x.update(sb=x["sb"][:1]), "b.scales has shape [1, 2]; expected [2, 2]"),
        (lambda x: x.update(b=x["b"][:, :128]), "k mismatch: a.data has shape [65, 256] (k=256) but b.data"),
        (lambda x: x.update(out=np.empty((65, 199), np.uint16)), "out has shape [65, 199]; expected [65, 200]"),
    ],
)
def test_dense_bad_input_names_the_value(mutate, message):
    a, sa, b, sb, out = _dense_args()
    args = dict(a=a, sa=sa, b=b, sb=sb, out=out)
    mutate(args)
    with pytest.raises(ValueError, match=re.escape(message)):
        gemm.gemm_fp8_fp8_bf16_nt((args["a"], args["sa"]), (args["b"], args["sb"]), args["out"])


def test_grouped_bad_indices_and_counts():
    rng = np.random.default_rng(5)
    a, sa, b, sb = random_operands(rng, (256, 128), (2, 64, 128))
    out = np.empty((256, 64), np.uint16)
    m_indices = np.zeros(256, np.int32)
    m_indices[100:] = 1  # group 1 starts mid-block
    with pytest.raises(ValueError, match=r"m_indices\[100\] = 1 but m_indices\[0\] = 0 in the same aligned block"):
        gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, sa), (b, sb), out, m_indices)
    m_indices[:] = 0
    m_indices[7] = 5
    with pytest.raises(ValueError, match=r"m_indices\[7\] = 5 is out of range"):
        gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, sa), (b, sb), out, m_indices)
    with pytest.raises(ValueError, match="m_indices has dtype int64; expected int32"):
        gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, sa), (b, sb), out, np.zeros(256, np.int64))
    a3, sa3, b3, sb3 = random_operands(rng, (2, 8, 128), (2, 16, 128))
    out3 = np.empty((2, 8, 16), np.uint16)
    with pytest.raises(ValueError, match=r"masked_m\[1\] = 9 is out of range \[0, 8\]"):
        gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((a3, sa3), (b3, sb3), out3, np.array([1, 9], np.int32), 4)
    with pytest.raises(ValueError, match="expected_m"):
        gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((a3, sa3), (b3, sb3), out3, np.array([1, 1], np.int32), 1.5)


def test_num_sms():
    before = gemm.get_num_sms()
    assert before >= 1
    gemm.set_num_sms(1)
    assert gemm.get_num_sms() == 1
    with pytest.raises(ValueError, match="num_sms=0 must be >= 1"):
        gemm.set_num_sms(0)
    gemm.set_num_sms(before)


def test_ml_dtypes_arrays_are_viewed_in_place():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(6)
    a, sa, b, sb = random_operands(rng, (4, 128), (64, 128))
    out = np.zeros((4, 64), ml_dtypes.bfloat16)
    gemm.gemm_fp8_fp8_bf16_nt((a.view(ml_dtypes.float8_e4m3fn), sa), (b.view(ml_dtypes.float8_e4m3fn), sb), out)
    assert gemm.calc_diff(out.astype(np.float64), reference(a, sa, b, sb)) < 1e-5


def test_torch_tensors_match_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((65, 256)).astype(np.float32)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    a, sa = gemm.per_token_cast_to_fp8(torch.from_numpy(x).bfloat16())
    b, sb = gemm.per_block_cast_to_fp8(torch.from_numpy(w))
    assert a.dtype == torch.float8_e4m3fn
    # The anchor's own formula in torch, bit for bit.
    amax = torch.from_numpy(x).bfloat16().view(65, 2, 128).abs().float().amax(dim=2).clamp(1e-4)
    expected_a = (torch.from_numpy(x).bfloat16().view(65, 2, 128) * (448.0 / amax.unsqueeze(2))).to(torch.float8_e4m3fn)
    assert torch.equal(a.view(torch.uint8), expected_a.view(65, 256).view(torch.uint8))
    assert torch.equal(sa, amax / 448.0)
    out = torch.empty((65, 64), dtype=torch.bfloat16)
    gemm.gemm_fp8_fp8_bf16_nt((a, gemm.get_col_major_tma_aligned_tensor(sa)), (b, sb), out)
    expected = reference(a.view(torch.uint8).numpy(), sa.numpy(), b.view(torch.uint8).numpy(), sb.numpy())
    assert gemm.calc_diff(out.float().numpy(), expected) < 1e-5


def test_deepgemm_v2_names_compute_the_same_and_refuse_what_they_cannot():
    """fp8_gemm_nt and the m_grouped_fp8_gemm_nt_* names (DeepGEMM v2) give the v1 functions' results; their
    options that would change the result are refused, naming the option, before anything is written."""
    a, sa, b, sb, _ = _dense_args()
    v1, v2 = np.empty((65, 200), np.uint16), np.empty((65, 200), np.uint16)
    gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), v1)
    gemm.fp8_gemm_nt((a, sa), (b, sb), v2, c=None, recipe=(1, 128, 128), compiled_dims="nk",
                     disable_ue8m0_cast=True)
    assert (v1 == v2).all()
    untouched = np.full((65, 200), 0x1234, np.uint16)
    for options, message in (({"c": v1}, "c .D = C"), ({"recipe": (1, 1, 128)}, "recipe=.1, 1, 128."),
                             ({"alpha": 2.0}, "alpha=2.0"), ({"stream": 7}, "stream=7")):
        with pytest.raises(NotImplementedError, match=message):
            gemm.fp8_gemm_nt((a, sa), (b, sb), untouched, **options)
    assert (untouched == 0x1234).all()
    with pytest.raises(TypeError, match="recipes"):
        gemm.fp8_gemm_nt((a, sa), (b, sb), untouched, recipes=None)

    rng = np.random.default_rng(9)
    assert gemm.get_mk_alignment_for_contiguous_layout() == 128
    m_indices = np.array([0] * 3 + [-1] * 125 + [1] * 128, dtype=np.int32)
    ga, gsa, gb, gsb = random_operands(rng, (256, 256), (2, 112, 256))
    v1, v2 = np.empty((256, 112), np.uint16), np.empty((256, 112), np.uint16)
    gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((ga, gsa), (gb, gsb), v1, m_indices)
    gemm.m_grouped_fp8_gemm_nt_contiguous((ga, gsa), (gb, gsb), v2, m_indices, disable_ue8m0_cast=False)
    assert (v1 == v2).all()
    ma, msa, mb, msb = random_operands(rng, (2, 65, 256), (2, 112, 256))
    masked_m = np.array([17, 65], np.int32)
    v1, v2 = np.zeros((2, 65, 112), np.uint16), np.zeros((2, 65, 112), np.uint16)
    gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((ma, msa), (mb, msb), v1, masked_m, 32)
    gemm.m_grouped_fp8_gemm_nt_masked((ma, msa), (mb, msb), v2, masked_m, 32, recipe=None)
    assert (v1 == v2).all()
    with pytest.raises(NotImplementedError, match="recipe"):
        gemm.m_grouped_fp8_gemm_nt_masked((ma, msa), (mb, msb), v2, masked_m, 32, recipe=(1, 128, 1))
    scales = rng.uniform(size=(130, 2)).astype(np.float32)
    assert (gemm.get_mn_major_tma_aligned_tensor(scales) == gemm.get_col_major_tma_aligned_tensor(scales)).all()
