"""Tests of the sm_90a kernel behind fireflyer.mla (torch CUDA tensors): against float64 attention
computed here with torch, against the CPU implementation, under CUDA graph capture, and the errors of
bad GPU input. Skipped where torch, a GPU or the mla CUDA kernels are missing."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from fireflyer import _C, mla  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not _C.mla.HAS_CUDA, reason="needs a CUDA GPU and the mla CUDA kernels"
)

# The kernel the dispatch takes for a bf16 / fp16 cache with >= 64 query rows per KV head (TMA loads;
# the fastest schedule on the H200, the lean kernel with grouped mbarriers and the folded softmax:
# docs/mla.md) where softmax_scale > 0; with another scale it takes the lean kernel.
DEFAULT_TMA_KERNEL = "wgmma_tma_lean2"
NONPOSITIVE_SCALE_TMA_KERNEL = "wgmma_tma_lean"
# The FP8-cache kernels the dispatch takes with <= 16 and with 17..32 query rows per KV head (FF_MLA_FP8
# unset; docs/mla.md): the transposed WGMMA kernel, and the mma.sync channel kernel with the split S.
DEFAULT_FP8_KERNEL_16 = "wgmma_fp8_transposed_wg"
DEFAULT_FP8_KERNEL_32 = "mma_sync_fp8_channels_split_s"
# FF_MLA_FP8 names whose kernel is not called mma_sync_fp8_<name>.
FP8_KERNEL_NAMES = {"transposed": "wgmma_fp8_transposed", "transposed_wg": "wgmma_fp8_transposed_wg"}


def cos_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """FlashMLA's calc_diff: 1 - 2 sum(xy) / sum(x^2 + y^2)."""
    x, y = x.double(), y.double()
    return float(1 - 2 * (x * y).sum() / (x * x + y * y).sum())


def make_case(seqlens, s_q, h_q, seed, h_kv=1, dtype=torch.bfloat16):
    """Random q and cache on the GPU; pages scattered by a permuted block table; NaN in every unused
    slot, unused block and unused block-table column (-1)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    b = len(seqlens)
    blocks = [(n + 63) // 64 for n in seqlens]
    num_blocks = sum(blocks) + 2
    max_blocks = max(blocks) + 1
    physical = torch.randperm(num_blocks, generator=generator)
    block_table = torch.full((b, max_blocks), -1, dtype=torch.int32)
    cache = torch.full((num_blocks, 64, h_kv, 576), float("nan"))
    used = 0
    for i, n in enumerate(seqlens):
        block_table[i, : blocks[i]] = physical[used : used + blocks[i]].int()
        used += blocks[i]
        for page in range(blocks[i]):
            count = min(64, n - page * 64)
            cache[block_table[i, page], :count] = torch.randn((count, h_kv, 576), generator=generator)
    q = torch.randn((b, s_q, h_q, 576), generator=generator)
    device = torch.device("cuda")
    return (q.to(dtype).to(device), cache.to(dtype).to(device), block_table.to(device),
            torch.tensor(seqlens, dtype=torch.int32, device=device))


def gather_keys(cache, block_table, seqlens, i, head_k):
    """(seqlen, channels) float64 keys of sequence i, KV head head_k, read through the block table."""
    n = int(seqlens[i])
    pages = block_table[i, : (n + 63) // 64].long()
    return cache[pages, :, head_k].reshape(-1, cache.shape[-1])[:n].double()


def reference(q, keys_of, seqlens, h_kv, causal, scale=None):
    """float64 attention from the definition: (out (b, s_q, h_q, 512), lse (b, h_q, s_q))."""
    b, s_q, h_q, _ = q.shape
    group = h_q // h_kv
    scale = 1 / math.sqrt(576) if scale is None else scale
    out = torch.zeros((b, s_q, h_q, 512), dtype=torch.float64, device=q.device)
    lse = torch.full((b, h_q, s_q), math.inf, dtype=torch.float64, device=q.device)
    for i in range(b):
        n = int(seqlens[i])
        for head_k in range(h_kv):
            keys = keys_of(i, head_k)
            for s in range(s_q):
                visible = min(max(n - s_q + s + 1, 0), n) if causal else n
                if visible == 0:
                    continue
                heads = slice(head_k * group, (head_k + 1) * group)
                scores = q[i, s, heads].double() @ keys[:visible].T * scale  # (group, visible)
                out[i, s, heads] = torch.softmax(scores, dim=-1) @ keys[:visible, :512]
                lse[i, heads, s] = torch.logsumexp(scores, dim=-1)
    return out, lse


def run(q, cache, block_table, seqlens, causal, fp8=False, num_sms=132, h_kv=1, **kwargs):
    s_q, h_q = q.shape[1], q.shape[2]
    metadata, splits = mla.get_mla_metadata(seqlens, s_q * h_q // h_kv, h_kv, num_sms=num_sms)
    assert metadata.is_cuda and splits.is_cuda
    return mla.flash_mla_with_kvcache(q, cache, block_table, seqlens, 512, metadata, splits, causal=causal,
                                      is_fp8_kvcache=fp8, **kwargs)


def check(out, lse, ref_out, ref_lse, lse_tolerance=1e-3):
    assert torch.isfinite(out).all(), "unwritten output or a poisoned (unused) cache slot was read"
    assert cos_diff(out, ref_out) < 1e-5
    assert torch.allclose(out.double(), ref_out, atol=1.6e-2, rtol=1.6e-2)
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty) and (lse[empty] > 0).all()
    assert torch.allclose(lse.double()[~empty], ref_lse[~empty], atol=lse_tolerance, rtol=lse_tolerance)


@pytest.mark.parametrize("h_q", [16, 32, 64, 128])
@pytest.mark.parametrize("s_q", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_float64(h_q, s_q, causal):
    seqlens = [1, 63, 65, 200, 0, 700, 130][: 7 if h_q <= 32 else 4]
    q, cache, block_table, lengths = make_case(seqlens, s_q, h_q, seed=h_q * 10 + s_q + causal)
    # Few SMs force split sequences through the combine kernel; 132 leaves most unsplit.
    for num_sms in (132, 7):
        out, lse = run(q, cache, block_table, lengths, causal, num_sms=num_sms)
        # A bf16 / fp16 cache takes the WGMMA kernel with TMA loads at any row count.
        assert mla.last_cuda_kernel() == DEFAULT_TMA_KERNEL
        ref_out, ref_lse = reference(q, lambda i, k: gather_keys(cache, block_table, lengths, i, k), lengths, 1, causal)
        check(out, lse, ref_out, ref_lse)


@pytest.mark.parametrize("h_q", [64, 128])
def test_wgmma_and_mma_sync_agree(h_q, monkeypatch):
    """The same inputs through the WGMMA kernel with TMA loads (the default, lean pipelined schedule), the
    schedules named by FF_MLA_SCHEDULE, with cp.async loads (FF_MLA_LOADS) and, forced by FF_MLA_KERNEL,
    the mma.sync kernel."""
    q, cache, block_table, lengths = make_case([1, 64, 65, 1500, 0, 333], 1, h_q, seed=h_q + 77)
    out, lse = run(q, cache, block_table, lengths, False, num_sms=11)
    assert mla.last_cuda_kernel() == DEFAULT_TMA_KERNEL
    ref_out, ref_lse = reference(q, lambda i, k: gather_keys(cache, block_table, lengths, i, k), lengths, 1, False)
    check(out, lse, ref_out, ref_lse)
    for variable, value, kernel in (("FF_MLA_SCHEDULE", "pipelined", "wgmma_tma"), ("FF_MLA_SCHEDULE", "seesaw", "wgmma_seesaw"),
                                    ("FF_MLA_SCHEDULE", "lean", "wgmma_tma_lean"),
                                    ("FF_MLA_SCHEDULE", "lean_bar3", "wgmma_tma_lean_bar3"),
                                    ("FF_MLA_SCHEDULE", "lean_fold", "wgmma_tma_lean_fold"),
                                    ("FF_MLA_SCHEDULE", "lean2", "wgmma_tma_lean2"),
                                    ("FF_MLA_SCHEDULE", "lean2_early", "wgmma_tma_lean2_early"),
                                    ("FF_MLA_LOADS", "cp_async", "wgmma"), ("FF_MLA_KERNEL", "mma_sync", "mma_sync")):
        monkeypatch.setenv(variable, value)
        other_out, other_lse = run(q, cache, block_table, lengths, False, num_sms=11)
        monkeypatch.delenv(variable)
        assert mla.last_cuda_kernel() == kernel
        check(other_out, other_lse, ref_out, ref_lse)
        assert cos_diff(out, other_out) < 1e-5


@pytest.mark.parametrize("scale", [-0.04, 0.02])
def test_wgmma_softmax_scale_routes(scale):
    """The folded softmax of the default kernel takes the row max on raw scores, so it needs a positive
    softmax_scale: a negative one takes the lean kernel; both against float64 attention."""
    q, cache, block_table, lengths = make_case([700, 1, 64, 130], 1, 128, seed=91)
    out, lse = run(q, cache, block_table, lengths, False, num_sms=5, softmax_scale=scale)
    assert mla.last_cuda_kernel() == (DEFAULT_TMA_KERNEL if scale > 0 else NONPOSITIVE_SCALE_TMA_KERNEL)
    ref_out, ref_lse = reference(q, lambda i, k: gather_keys(cache, block_table, lengths, i, k), lengths, 1, False,
                                 scale=scale)
    check(out, lse, ref_out, ref_lse)


def test_fp16_two_kv_heads_and_softmax_scale():
    q, cache, block_table, lengths = make_case([150, 64, 3], 2, 32, seed=5, h_kv=2, dtype=torch.float16)
    out, lse = run(q, cache, block_table, lengths, True, h_kv=2, num_sms=9, softmax_scale=0.05)
    ref_out, ref_lse = reference(q, lambda i, k: gather_keys(cache, block_table, lengths, i, k), lengths, 2, True,
                                 scale=0.05)
    assert out.dtype == torch.float16
    check(out, lse, ref_out, ref_lse)


def dequantize(cache_fp8: torch.Tensor) -> torch.Tensor:
    """(..., 656) bytes -> (..., 576) float64, from the documented layout."""
    latent = cache_fp8[..., :512].contiguous().view(torch.float8_e4m3fn).double()
    scales = cache_fp8[..., 512:528].contiguous().view(torch.float32).double()
    rope = cache_fp8[..., 528:656].contiguous().view(torch.bfloat16).double()
    return torch.cat([latent * scales.repeat_interleave(128, dim=-1), rope], dim=-1)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lean", [True, False])
def test_fp8_cache(causal, lean, monkeypatch):
    q, cache, block_table, lengths = make_case([333, 64, 1, 900], 2, 64, seed=11)
    cache_fp8 = mla.quantize_kvcache_fp8(cache)
    assert cache_fp8.is_cuda and cache_fp8.shape[-1] == 656
    if lean:
        monkeypatch.delenv("FF_MLA_FP8_LEAN", raising=False)
    else:
        monkeypatch.setenv("FF_MLA_FP8_LEAN", "0")
    for as_fp8_dtype in (False, True):
        given = cache_fp8.view(torch.float8_e4m3fn) if as_fp8_dtype else cache_fp8
        out, lse = run(q, given, block_table, lengths, causal, fp8=True, num_sms=11)
        # 128 rows per KV head: dequantized into the 16-bit WGMMA tile, by lean2's second warpgroup while
        # the first one computes (or, FF_MLA_FP8_LEAN=0, by all threads between blocks: the older kernel).
        assert mla.last_cuda_kernel() == ("wgmma_fp8_lean" if lean else "wgmma")
        values = dequantize(cache_fp8)
        ref_out, ref_lse = reference(q, lambda i, k: gather_keys(values, block_table, lengths, i, k), lengths, 1,
                                     causal)
        # The kernel rounds dequantized values to bf16 before its MMAs (as FlashMLA): lse moves ~1e-3.
        check(out, lse, ref_out, ref_lse, lse_tolerance=6e-3)


@pytest.mark.parametrize("h_q, s_q, h_kv, dtype, q_gain", [
    (16, 1, 1, torch.bfloat16, 1.0),
    (16, 2, 1, torch.bfloat16, 30.0),
    (32, 1, 1, torch.bfloat16, 0.01),
    (32, 1, 2, torch.float16, 1.0),
    (16, 2, 1, torch.float16, 4.0),
])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["direct", "pair", "wide", "channels", "channels_split_s", "transposed",
                                    "transposed_wg"])
def test_fp8_cache_few_rows(h_q, s_q, h_kv, dtype, q_gain, causal, kernel, monkeypatch):
    """<= 32 query rows per KV head: the kernels whose MMAs read the raw FP8 tiles (FF_MLA_FP8=direct:
    one 64-token block per barrier round, pair: two, wide: 16 warps sharing one softmax, channels: 8 warps
    sharing one softmax, each with all rows and 64 output channels, transposed: WGMMA with the rows as
    N, K and V^T converted into register operands). q is scaled up and
    down (its rows are rescaled by powers of two into f16 range there); the scores use the exact e4m3
    values, so the lse bound is the bf16 one."""
    monkeypatch.setenv("FF_MLA_FP8", kernel)
    seqlens = [1, 63, 65, 200, 0, 700, 130, 1500]
    q, cache, block_table, lengths = make_case(seqlens, s_q, h_q, seed=40 + h_q + s_q + h_kv, h_kv=h_kv, dtype=dtype)
    q = (q.float() * q_gain).to(dtype)
    cache_fp8 = mla.quantize_kvcache_fp8(cache.to(torch.bfloat16))  # the FP8 layout's RoPE is bf16
    values = dequantize(cache_fp8)
    ref_out, ref_lse = reference(q, lambda i, k: gather_keys(values, block_table, lengths, i, k), lengths, h_kv, causal)
    for num_sms in (132, 7):
        out, lse = run(q, cache_fp8, block_table, lengths, causal, fp8=True, num_sms=num_sms, h_kv=h_kv)
        # The pair and wide kernels exist for <= 16 rows per KV head; with more the direct one runs.
        expected = "direct" if s_q * h_q // h_kv > 16 and kernel in ("pair", "wide") else kernel
        expected = "transposed" if s_q * h_q // h_kv > 16 and kernel == "transposed_wg" else expected
        assert mla.last_cuda_kernel() == FP8_KERNEL_NAMES.get(expected, f"mma_sync_fp8_{expected}")
        assert out.dtype == dtype
        check(out, lse, ref_out, ref_lse)


@pytest.mark.parametrize("s_q, expected", [(1, DEFAULT_FP8_KERNEL_16), (2, DEFAULT_FP8_KERNEL_32)])
def test_fp8_few_rows_default_route(s_q, expected, monkeypatch):
    """Without FF_MLA_FP8 the dispatch takes the faster FP8 kernel for the row count, and both kernels
    agree with each other on the same inputs."""
    monkeypatch.delenv("FF_MLA_FP8", raising=False)
    q, cache, block_table, lengths = make_case([129, 64, 1000, 191, 3], s_q, 16, seed=70 + s_q)
    cache_fp8 = mla.quantize_kvcache_fp8(cache)
    out, lse = run(q, cache_fp8, block_table, lengths, False, fp8=True, num_sms=9)
    assert mla.last_cuda_kernel() == expected
    for kernel in ("direct", "pair", "wide", "channels", "channels_split_s", "transposed", "transposed_wg"):
        monkeypatch.setenv("FF_MLA_FP8", kernel)
        other_out, other_lse = run(q, cache_fp8, block_table, lengths, False, fp8=True, num_sms=9)
        name = "direct" if s_q > 1 and kernel in ("pair", "wide") else kernel
        name = "transposed" if s_q > 1 and kernel == "transposed_wg" else name
        assert mla.last_cuda_kernel() == FP8_KERNEL_NAMES.get(name, f"mma_sync_fp8_{name}")
        assert cos_diff(out, other_out) < 1e-5
        assert torch.allclose(lse, other_lse, atol=1e-3, rtol=1e-3)


def test_fp8_transposed_wg_variants(monkeypatch):
    """The default FP8 kernel for <= 16 rows and its A/B variants. Converting a block's first V operands after
    the softmax barriers (FF_MLA_FP8_EARLY_V=0, the former order) and building each wgmma's whole descriptor
    (FF_MLA_FP8_DESCRIPTORS=full) only reorder or rewrite independent work: under the eager rule
    (FF_MLA_LAZY=0) all give the same bits. Lazy rescaling (the default) moves a row's running max and a
    channel group's unit less often; it agrees with float64. One barrier per block (the default;
    FF_MLA_FP8_ONE_BARRIER=0 gives two) redoes the softmax only where something moves: the same bits as two. The cache's
    magnitudes jump up and down from block to block (up to 2^7.75), so both the running maxima and the groups'
    units move many times."""
    monkeypatch.setenv("FF_MLA_FP8", "transposed_wg")
    q, cache, block_table, lengths = make_case([129, 64, 1000, 191, 3, 700], 1, 16, seed=81)
    for i, n in enumerate(lengths.tolist()):
        for page in range((n + 63) // 64):
            cache[block_table[i, page]] *= 2.0 ** ((page % 5) + page / 4)
    cache_fp8 = mla.quantize_kvcache_fp8(cache)
    variants = {"default": {}, "two_barriers": {"FF_MLA_FP8_ONE_BARRIER": "0"}, "eager": {"FF_MLA_LAZY": "0"},
                "eager_full": {"FF_MLA_LAZY": "0", "FF_MLA_FP8_DESCRIPTORS": "full"},
                "late_v": {"FF_MLA_FP8_EARLY_V": "0"}}
    results = {}
    for name, environment in variants.items():
        for variable in ("FF_MLA_LAZY", "FF_MLA_FP8_DESCRIPTORS", "FF_MLA_FP8_EARLY_V", "FF_MLA_FP8_ONE_BARRIER"):
            monkeypatch.delenv(variable, raising=False)
        for variable, value in environment.items():
            monkeypatch.setenv(variable, value)
        results[name] = run(q, cache_fp8, block_table, lengths, True, fp8=True, num_sms=9)
        assert mla.last_cuda_kernel() == "wgmma_fp8_transposed_wg"
    for name in ("eager_full", "late_v"):
        assert torch.equal(results["eager"][0], results[name][0]), name
        assert torch.equal(results["eager"][1], results[name][1]), name
    assert torch.equal(results["default"][0], results["two_barriers"][0])
    assert torch.equal(results["default"][1], results["two_barriers"][1])
    values = dequantize(cache_fp8)
    ref_out, ref_lse = reference(q, lambda i, k: gather_keys(values, block_table, lengths, i, k), lengths, 1, True)
    # The outputs reach ~2^7: errors are compared with each sequence's largest output (check's bound is absolute).
    scale = ref_out.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1.0)
    for name in ("default", "eager"):
        out, lse = results[name]
        check(out.double() / scale, lse, ref_out / scale, ref_lse)


def test_matches_the_cpu_implementation():
    q, cache, block_table, lengths = make_case([500, 77, 64], 1, 16, seed=3)
    metadata, splits = mla.get_mla_metadata(lengths.cpu(), 16, 1, num_sms=5)
    cpu_out, cpu_lse = mla.flash_mla_with_kvcache(q.cpu(), cache.cpu(), block_table.cpu(), lengths.cpu(), 512,
                                                  metadata, splits)
    gpu_out, gpu_lse = mla.flash_mla_with_kvcache(q, cache, block_table, lengths, 512, metadata.cuda(),
                                                  splits.cuda())
    assert cos_diff(gpu_out.cpu(), cpu_out) < 1e-5
    assert torch.allclose(gpu_lse.cpu(), cpu_lse, atol=1e-3, rtol=1e-3)


def test_cuda_graph_replay_matches_eager():
    q, cache, block_table, lengths = make_case([1000, 64, 65, 5], 1, 128, seed=4)
    metadata, splits = mla.get_mla_metadata(lengths, 128, 1)
    eager_out, eager_lse = mla.flash_mla_with_kvcache(q, cache, block_table, lengths, 512, metadata, splits)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture
        mla.flash_mla_with_kvcache(q, cache, block_table, lengths, 512, metadata, splits)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_out, graph_lse = mla.flash_mla_with_kvcache(q, cache, block_table, lengths, 512, metadata, splits)
    q.copy_(q.flip(0))  # new inputs in place, then replay
    graph.replay()
    torch.cuda.synchronize()
    flipped_out, _ = mla.flash_mla_with_kvcache(q, cache, block_table, lengths, 512, metadata, splits)
    assert torch.equal(graph_out, flipped_out)
    assert not torch.equal(graph_out, eager_out)
    assert torch.isfinite(graph_lse).all() and torch.isfinite(eager_lse).all()


@pytest.mark.parametrize("b, rows, h_kv, num_sms", [(1, 128, 1, 132), (128, 16, 1, 132), (37, 256, 2, 78),
                                                   (5000, 64, 1, 132), (20000, 128, 1, 7)])
def test_metadata_on_the_gpu_is_the_host_schedule(b, rows, h_kv, num_sms):
    generator = torch.Generator(device="cpu").manual_seed(b)
    lengths = torch.randint(0, 100000, (b,), generator=generator, dtype=torch.int32)
    lengths[::5] = 0
    metadata, splits = mla.get_mla_metadata(lengths.cuda(), rows, h_kv, num_sms=num_sms)
    assert metadata.is_cuda and splits.is_cuda and metadata.dtype == torch.int32
    host_metadata, host_splits = mla.get_mla_metadata(lengths.numpy(), rows, h_kv, num_sms=num_sms)
    assert torch.equal(metadata.cpu(), torch.from_numpy(host_metadata))
    assert torch.equal(splits.cpu(), torch.from_numpy(host_splits))
    with pytest.raises(ValueError, match="cache_seqlens has dtype torch.int64; expected torch.int32"):
        mla.get_mla_metadata(lengths.cuda().long(), rows, h_kv)
    with pytest.raises(ValueError, match="num_sms is 0; expected >= 1"):
        mla.get_mla_metadata(lengths.cuda(), rows, h_kv, num_sms=0)


def test_metadata_defaults_to_the_devices_sm_count():
    """Without num_sms, CUDA lengths get the schedule for their GPU's SM count (as FlashMLA's); host lengths
    get 132's."""
    lengths = torch.randint(1, 9000, (64,), dtype=torch.int32)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    metadata, splits = mla.get_mla_metadata(lengths.cuda(), 128, 1)
    expected_metadata, expected_splits = mla.get_mla_metadata(lengths.numpy(), 128, 1, num_sms=sms)
    assert torch.equal(metadata.cpu(), torch.from_numpy(expected_metadata))
    assert torch.equal(splits.cpu(), torch.from_numpy(expected_splits))
    host_metadata, _ = mla.get_mla_metadata(lengths.numpy(), 128, 1)
    assert host_metadata.shape == mla.get_mla_metadata(lengths.numpy(), 128, 1, num_sms=132)[0].shape


def test_a_decode_step_and_its_metadata_replay_from_one_cuda_graph():
    """The schedule is computed inside the captured graph: new lengths written in place before a replay
    give the decode of those lengths (the eager result of the new lengths, bit for bit)."""
    q, cache, block_table, lengths = make_case([1000, 64, 65, 5], 1, 128, seed=8)
    shorter = torch.tensor([700, 1, 64, 5], dtype=torch.int32, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture
        metadata, splits = mla.get_mla_metadata(lengths, 128, 1)
        mla.flash_mla_with_kvcache(q, cache, block_table, lengths, 512, metadata, splits)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        metadata, splits = mla.get_mla_metadata(lengths, 128, 1)
        graph_out, graph_lse = mla.flash_mla_with_kvcache(q, cache, block_table, lengths, 512, metadata, splits)
    lengths.copy_(shorter)
    graph.replay()
    torch.cuda.synchronize()
    eager_metadata, eager_splits = mla.get_mla_metadata(shorter.cpu(), 128, 1)
    eager_out, eager_lse = mla.flash_mla_with_kvcache(q, cache, block_table, shorter, 512,
                                                      eager_metadata.cuda(), eager_splits.cuda())
    assert torch.equal(metadata.cpu(), eager_metadata)
    assert torch.equal(graph_out, eager_out)
    assert torch.equal(graph_lse, eager_lse)


def test_errors_name_the_bad_value():
    q, cache, block_table, lengths = make_case([300, 10], 1, 16, seed=6)
    metadata, splits = mla.get_mla_metadata(lengths, 16, 1)
    with pytest.raises(ValueError, match="k_cache has dtype torch.float16 but q has torch.bfloat16"):
        mla.flash_mla_with_kvcache(q, cache.half(), block_table, lengths, 512, metadata, splits)
    with pytest.raises(ValueError, match="block_table is on cpu, but q is on cuda"):
        mla.flash_mla_with_kvcache(q, cache, block_table.cpu(), lengths, 512, metadata, splits)
    with pytest.raises(ValueError, match="q has head dim 512; expected 576"):
        mla.flash_mla_with_kvcache(q[..., :512], cache, block_table, lengths, 512, metadata, splits)
    short = block_table[:, :3].contiguous()
    with pytest.raises(ValueError, match="block_table has 3 columns, but seq 0 needs 5 blocks of 64 for 300 tokens"):
        mla.flash_mla_with_kvcache(q, cache, short, lengths, 512, metadata, splits)
    grown = lengths.clone()
    grown[1] = 40  # metadata of another decode step
    with pytest.raises(ValueError, match="do not describe cache_seqlens"):
        mla.flash_mla_with_kvcache(q, cache, block_table, grown, 512, metadata, splits)
    with pytest.raises(ValueError, match="h_q = 16 is not a multiple of h_kv = 3"):
        mla.flash_mla_with_kvcache(q, cache.expand(-1, -1, 3, -1), block_table, lengths, 512, metadata, splits)
