"""Tests of fireflyer.mla through the binding with numpy inputs: the schedule's invariants, the CPU
decode against float64 attention computed here (bf16 bit patterns, fp16, FP8 cache decoded here
independently; causal; NaN in every cache slot that must not be read), and error messages."""

from __future__ import annotations

import numpy as np
import pytest

from fireflyer import mla

NAN_BF16 = np.uint16(0x7FC0)


def to_bf16(values: np.ndarray) -> np.ndarray:
    """float -> bf16 bit patterns, rounding to nearest even."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def decode_e4m3(codes: np.ndarray) -> np.ndarray:
    codes = codes.astype(np.int64)
    exponent, mantissa = (codes >> 3) & 15, codes & 7
    magnitude = np.where(exponent == 0, mantissa / 8.0 * 2.0**-6, (1 + mantissa / 8.0) * 2.0 ** (exponent - 7.0))
    value = np.where(codes & 0x80, -magnitude, magnitude)
    return np.where((exponent == 15) & (mantissa == 7), np.nan, value)


def dequantize_fp8(cache: np.ndarray) -> np.ndarray:
    """(..., 656) bytes -> (..., 576) float64, from the documented layout."""
    latent = decode_e4m3(cache[..., :512])
    scales = np.ascontiguousarray(cache[..., 512:528]).view(np.float32).astype(np.float64)
    rope = from_bf16(np.ascontiguousarray(cache[..., 528:656]).view(np.uint16)).astype(np.float64)
    return np.concatenate([latent * np.repeat(scales, 128, axis=-1), rope], axis=-1)


def make_case(seqlens, s_q, h_q, seed, h_kv=1, dtype="bf16"):
    rng = np.random.default_rng(seed)
    b = len(seqlens)
    blocks = [(n + 63) // 64 for n in seqlens]
    num_blocks = sum(blocks) + 2
    max_blocks = max(blocks) + 1
    physical = rng.permutation(num_blocks)
    block_table = np.full((b, max_blocks), -1, dtype=np.int32)
    cache = np.full((num_blocks, 64, h_kv, 576), np.nan, dtype=np.float32)
    used = 0
    for i, n in enumerate(seqlens):
        block_table[i, : blocks[i]] = physical[used : used + blocks[i]]
        used += blocks[i]
        for token in range(n):
            cache[block_table[i, token // 64], token % 64] = rng.standard_normal((h_kv, 576))
    q = rng.standard_normal((b, s_q, h_q, 576)).astype(np.float32)
    if dtype == "bf16":
        q, cache = to_bf16(q), to_bf16(cache)
    else:
        q, cache = q.astype(np.float16), cache.astype(np.float16)
    return q, cache, block_table, np.asarray(seqlens, dtype=np.int32)


def as_float(x):
    return from_bf16(x).astype(np.float64) if x.dtype == np.uint16 else x.astype(np.float64)


def reference(q, cache_values, block_table, seqlens, causal):
    """float64 attention from the definition: (out (b, s_q, h_q, 512), lse (b, h_q, s_q))."""
    b, s_q, h_q, _ = q.shape
    h_kv = cache_values.shape[2]
    group = h_q // h_kv
    out = np.zeros((b, s_q, h_q, 512))
    lse = np.full((b, h_q, s_q), np.inf)
    for i, n in enumerate(seqlens):
        keys = np.stack([cache_values[block_table[i, t // 64], t % 64] for t in range(n)]) if n else np.zeros((0, h_kv, 576))
        for s in range(s_q):
            visible = min(max(n - s_q + s + 1, 0), n) if causal else n
            if visible == 0:
                continue
            for h in range(h_q):
                k = keys[:visible, h // group]
                scores = k @ q[i, s, h] / np.sqrt(576.0)
                top = scores.max()
                weights = np.exp(scores - top)
                out[i, s, h] = weights @ k[:, :512] / weights.sum()
                lse[i, h, s] = top + np.log(weights.sum())
    return out, lse


def cos_diff(x, y):
    return 1 - 2 * (x * y).sum() / max((x * x + y * y).sum(), 1e-300)


def check(out, lse, expected_out, expected_lse):
    out = as_float(out)
    assert np.isfinite(out).all(), "an unused cache slot was read"
    assert cos_diff(out, expected_out) < 1e-5
    np.testing.assert_allclose(out, expected_out, atol=1e-2, rtol=1e-2)
    assert np.array_equal(np.isinf(lse), np.isinf(expected_lse))
    finite = np.isfinite(expected_lse)
    np.testing.assert_allclose(lse[finite], expected_lse[finite], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "seqlens, s_q, h_q, causal, num_sms",
    [
        ([300, 1, 0, 65], 1, 16, False, 132),
        ([150, 2, 77], 2, 64, True, 132),
        ([700, 30], 2, 16, True, 4),  # splits over parts: exercises the combine step
    ],
)
def test_bf16_matches_float64(seqlens, s_q, h_q, causal, num_sms):
    q, cache, block_table, lengths = make_case(seqlens, s_q, h_q, seed=len(seqlens) + s_q)
    metadata, splits = mla.get_mla_metadata(lengths, s_q * h_q, 1, num_sms=num_sms)
    out, lse = mla.flash_mla_with_kvcache(q, cache, block_table, lengths, 512, metadata, splits, causal=causal)
    assert out.dtype == np.uint16 and out.shape == (len(seqlens), s_q, h_q, 512)
    assert lse.dtype == np.float32 and lse.shape == (len(seqlens), h_q, s_q)
    check(out, lse, *reference(as_float(q), as_float(cache), block_table, lengths, causal))
    if 0 in seqlens:
        i = seqlens.index(0)
        assert (as_float(out[i]) == 0).all() and np.isposinf(lse[i]).all()


def test_fp16_and_softmax_scale():
    q, cache, block_table, lengths = make_case([90, 5], 1, 32, seed=11, h_kv=2, dtype="fp16")
    metadata, splits = mla.get_mla_metadata(lengths, 16, 2)
    out, lse = mla.flash_mla_with_kvcache(q, cache, block_table, lengths, 512, metadata, splits,
                                          softmax_scale=1 / np.sqrt(576.0))
    assert out.dtype == np.float16
    check(out, lse, *reference(as_float(q), as_float(cache), block_table, lengths, False))


def test_fp8_cache_matches_float64_on_the_dequantized_cache():
    q, cache, block_table, lengths = make_case([200, 0, 64, 1], 2, 16, seed=5)
    fp8 = mla.quantize_kvcache_fp8(cache)
    assert fp8.dtype == np.uint8 and fp8.shape == cache.shape[:3] + (656,)
    values = dequantize_fp8(fp8)
    # Quantization error is bounded by half an e4m3 step (2^-4 relative) of each group's scale.
    used = np.isfinite(values).all(axis=-1)
    assert np.abs(values[used] - as_float(cache)[used]).max() < 0.3
    metadata, splits = mla.get_mla_metadata(lengths, 32, 1, num_sms=6)
    out, lse = mla.flash_mla_with_kvcache(q, fp8, block_table, lengths, 512, metadata, splits, causal=True,
                                          is_fp8_kvcache=True)
    check(out, lse, *reference(as_float(q), values, block_table, lengths, True))


def test_metadata_defaults_to_132_sms_for_host_lengths():
    lengths = np.array([100, 37, 0, 5000], np.int32)
    default = mla.get_mla_metadata(lengths, 16, 1)
    explicit = mla.get_mla_metadata(lengths, 16, 1, num_sms=132)
    assert all((d == e).all() for d, e in zip(default, explicit))
    assert default[0].shape != mla.get_mla_metadata(lengths, 16, 1, num_sms=78)[0].shape


def test_metadata_covers_every_block_once():
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 5000, size=33).astype(np.int32)
    metadata, splits = mla.get_mla_metadata(lengths, 128, 1)
    assert metadata.shape == (66, 8) and metadata.dtype == np.int32
    assert splits.shape == (34,) and splits[0] == 0
    seen = {}
    for part, (b0, t0, b1, t1, s0, *rest) in enumerate(metadata):
        assert rest == [0, 0, 0]
        for i in range(b0, b1 + 1):
            lo = t0 if i == b0 else 0
            hi = t1 if i == b1 else lengths[i]
            for block in range(lo // 64, (hi + 63) // 64):
                assert (i, block) not in seen
                seen[i, block] = part
    assert len(seen) == sum((n + 63) // 64 for n in lengths)
    assert splits[-1] <= len(lengths) + 66


def test_bf16_via_ml_dtypes_when_installed():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    q, cache, block_table, lengths = make_case([70], 1, 16, seed=2)
    metadata, splits = mla.get_mla_metadata(lengths, 16, 1)
    out, _ = mla.flash_mla_with_kvcache(q.view(ml_dtypes.bfloat16), cache.view(ml_dtypes.bfloat16), block_table,
                                        lengths, 512, metadata, splits)
    bits, _ = mla.flash_mla_with_kvcache(q, cache, block_table, lengths, 512, metadata, splits)
    assert out.dtype == ml_dtypes.bfloat16 and np.array_equal(out.view(np.uint16), bits)


@pytest.fixture()
def small():
    q, cache, block_table, lengths = make_case([300, 10], 1, 16, seed=1)
    metadata, splits = mla.get_mla_metadata(lengths, 16, 1)
    return dict(q=q, k_cache=cache, block_table=block_table, cache_seqlens=lengths, head_dim_v=512,
                tile_scheduler_metadata=metadata, num_splits=splits)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(q=a["q"].astype(np.float32)), "q has dtype float32"),
        (lambda a: a.update(q=np.repeat(a["q"], 2, axis=-1)[..., ::2]), "q has stride 2 in its last dimension"),
        (lambda a: a.update(block_table=a["block_table"][:, :3]),
         "block_table has 3 columns, but seq 0 needs 5 blocks of 64 for 300 tokens"),
        (lambda a: a.update(block_table=a["block_table"].astype(np.int64)), "block_table has the wrong dtype; expected int32"),
        (lambda a: a.update(k_cache=np.concatenate([a["k_cache"]] * 3, axis=2)), "h_q = 16 is not a multiple of h_kv = 3"),
        (lambda a: a.update(head_dim_v=576), "head_dim_v is 576"),
        (lambda a: a.update(tile_scheduler_metadata=a["tile_scheduler_metadata"][:, :7]),
         "tile_scheduler_metadata has shape"),
        (lambda a: a.update(num_splits=a["num_splits"][:2]), "num_splits has shape (2,); expected (3,)"),
        (lambda a: a.update(cache_seqlens=np.array([300, 40], dtype=np.int32)), "do not describe cache_seqlens"),
    ],
)
def test_bad_input_names_the_value(small, change, message):
    change(small)
    with pytest.raises(ValueError) as error:
        mla.flash_mla_with_kvcache(**small)
    assert message in str(error.value)


def test_metadata_errors():
    with pytest.raises(ValueError, match="cache_seqlens\\[1\\] is -4"):
        mla.get_mla_metadata(np.array([3, -4], dtype=np.int32), 16, 1)
    with pytest.raises(ValueError, match="empty"):
        mla.get_mla_metadata(np.zeros(0, dtype=np.int32), 16, 1)
