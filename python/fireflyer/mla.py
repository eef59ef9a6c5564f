"""MLA decode attention over a paged KV cache (component ``mla``), the counterpart of DeepSeek FlashMLA.

::

    from fireflyer import mla
    tile_scheduler_metadata, num_splits = mla.get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)
    for layer in layers:  # one schedule per decode step, reused by every layer
        out, lse = mla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512,
                                              tile_scheduler_metadata, num_splits, causal=True)

Shapes: ``q (b, s_q, h_q, 576)``, ``k_cache (num_blocks, 64, h_kv, 576)`` (V is its first 512
channels), ``block_table int32 (b, max_blocks)``, ``cache_seqlens int32 (b,)``; results ``out (b, s_q,
h_q, 512)`` in the dtype of q and ``softmax_lse float32 (b, h_q, s_q)``, the natural-log logsumexp of
the scaled scores (``+inf`` for a row that attends to nothing; its ``out`` is 0).

Input types. numpy arrays run on the CPU implementation. bf16 data can be given as ``ml_dtypes.bfloat16``
arrays (if ml_dtypes is installed) or as ``numpy.uint16`` arrays of bf16 bit patterns; fp16 as
``numpy.float16``. ``out`` comes back in the same representation as ``q`` (uint16 bit patterns in, uint16
bit patterns out). torch tensors are accepted too (torch is imported only when one is given). When ``q``
is a CUDA tensor the call runs the sm_90a kernel (every tensor must then be on that GPU; the outputs are
new CUDA tensors, computed on torch's current stream and not waited for, so CUDA graphs can capture the
call); CPU torch tensors run on the CPU implementation.

FP8 cache (``is_fp8_kvcache=True``): ``k_cache`` is ``uint8`` (or ``torch.float8_e4m3fn``) of shape
``(num_blocks, 64, h_kv, 656)``; per token: 512 e4m3 latent bytes, 4 float32 scales (one per 128
channels), 64 bf16 RoPE channels. ``quantize_kvcache_fp8`` builds one from a bf16 cache.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from fireflyer import _C

__all__ = ["get_mla_metadata", "flash_mla_with_kvcache", "quantize_kvcache_fp8", "last_cuda_kernel", "PAGE_BLOCK_SIZE",
           "FP8_BYTES_PER_TOKEN"]

PAGE_BLOCK_SIZE = _C.mla.PAGE_BLOCK_SIZE
FP8_BYTES_PER_TOKEN = _C.mla.FP8_BYTES_PER_TOKEN


def _is_torch_tensor(value: Any) -> bool:
    # Checked by type name so that torch is imported only when the caller already uses it.
    return type(value).__module__.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter")


def _plain(name: str, value: Any) -> np.ndarray:
    """An integer or byte array as numpy, without changing its dtype (the library checks it)."""
    if _is_torch_tensor(value):
        import torch

        tensor = value.detach().cpu()
        if tensor.dtype == getattr(torch, "float8_e4m3fn", None):
            tensor = tensor.view(torch.uint8)
        return tensor.numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError(f"{name} is not a numeric array")
    return array


def _half(name: str, value: Any, dtype_hint: Optional[str] = None) -> tuple[np.ndarray, str, str]:
    """(uint16 bit patterns, 'bfloat16' | 'float16', kind of the input) for a bf16 / fp16 array."""
    if _is_torch_tensor(value):
        import torch

        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            return tensor.view(torch.int16).numpy().view(np.uint16), "bfloat16", "torch"
        if tensor.dtype == torch.float16:
            return tensor.view(torch.int16).numpy().view(np.uint16), "float16", "torch"
        raise ValueError(f"{name} has dtype {tensor.dtype}; expected torch.bfloat16 or torch.float16")
    array = np.asarray(value)
    if array.dtype.name == "bfloat16":  # ml_dtypes.bfloat16
        return array.view(np.uint16), "bfloat16", "ml_dtypes"
    if array.dtype == np.float16:
        return array.view(np.uint16), "float16", "float16"
    if array.dtype == np.uint16:
        return array, dtype_hint or "bfloat16", "uint16"
    raise ValueError(
        f"{name} has dtype {array.dtype}; expected bfloat16 (ml_dtypes.bfloat16, or numpy.uint16 bit patterns) "
        "or float16"
    )


def _output(bits: np.ndarray, dtype: str, kind: str, like: Any):
    if kind == "torch":
        import torch

        tensor = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16 if dtype == "bfloat16" else torch.float16)
        return tensor.to(like.device)
    if kind == "ml_dtypes":
        return bits.view(np.asarray(like).dtype)
    if kind == "float16":
        return bits.view(np.float16)
    return bits


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} must be an integer")
    return int(value)


# The SM count get_mla_metadata assumes for host lengths (H100 / H800 / H200 SXM).
_DEFAULT_NUM_SMS = 132


def get_mla_metadata(cache_seqlens: Any, num_q_tokens_per_head_k: int, num_heads_k: int,
                     num_sms: Optional[int] = None):
    """The split-KV schedule of one decode step: ``(tile_scheduler_metadata int32 (num_sm_parts, 8),
    num_splits int32 (b + 1,))``, as FlashMLA's ``get_mla_metadata``. ``num_q_tokens_per_head_k`` is
    ``s_q * h_q // h_kv``. ``num_sms``: the SMs the decode will spread over; by default, as FlashMLA, the
    SM count of the GPU a CUDA ``cache_seqlens`` is on, and 132 (H100/H800/H200) for host lengths.
    Deterministic.

    Rows of ``tile_scheduler_metadata``: ``[begin_batch, begin_token, end_batch, end_token,
    begin_split, 0, 0, 0]``; sequence ``i`` owns split slots ``num_splits[i]:num_splits[i+1]``.

    A CUDA ``cache_seqlens`` (int32) gets CUDA tensors computed by a kernel on torch's current stream, not
    waited for, so a decode step's metadata can be captured in a CUDA graph with its layers; a negative
    length counts as 0 there (the host path refuses it, and so does the decode's ``check_values``).
    """
    on_gpu = _is_torch_tensor(cache_seqlens) and cache_seqlens.is_cuda
    if num_sms is None:
        num_sms = _DEFAULT_NUM_SMS
        if on_gpu:
            import torch

            num_sms = torch.cuda.get_device_properties(cache_seqlens.device).multi_processor_count
    if on_gpu and _C.mla.HAS_CUDA:
        return _get_mla_metadata_cuda(cache_seqlens, num_q_tokens_per_head_k, num_heads_k, num_sms)
    seqlens = _plain("cache_seqlens", cache_seqlens)
    metadata, splits = _C.mla.get_mla_metadata(
        seqlens,
        _count("num_q_tokens_per_head_k", num_q_tokens_per_head_k),
        _count("num_heads_k", num_heads_k),
        _count("num_sms", num_sms),
    )
    if _is_torch_tensor(cache_seqlens):
        import torch

        return torch.from_numpy(metadata).to(cache_seqlens.device), torch.from_numpy(splits).to(cache_seqlens.device)
    return metadata, splits


def _get_mla_metadata_cuda(cache_seqlens, num_q_tokens_per_head_k, num_heads_k, num_sms):
    """The schedule computed by a kernel on torch's current stream: no host synchronisation, so it can be
    captured in a CUDA graph with the decode. A negative length counts as 0 there (the decode's
    ``check_values`` refuses it)."""
    import torch

    if cache_seqlens.dtype != torch.int32:
        raise ValueError(f"cache_seqlens has dtype {cache_seqlens.dtype}; expected torch.int32")
    if cache_seqlens.dim() != 1 or cache_seqlens.shape[0] == 0:
        raise ValueError(f"cache_seqlens has shape {tuple(cache_seqlens.shape)}; expected (b,) with b >= 1")
    rows = _count("num_q_tokens_per_head_k", num_q_tokens_per_head_k)
    heads = _count("num_heads_k", num_heads_k)
    sms = _count("num_sms", num_sms)
    parts = _C.mla.num_sm_parts(rows, heads, sms)
    device = cache_seqlens.device
    metadata = torch.empty((parts, 8), dtype=torch.int32, device=device)
    splits = torch.empty((cache_seqlens.shape[0] + 1,), dtype=torch.int32, device=device)
    stream = torch.cuda.current_stream(device)
    _C.mla.get_mla_metadata_cuda(cache_seqlens, rows, heads, sms, metadata, splits, stream.cuda_stream)
    return metadata, splits


def flash_mla_with_kvcache(
    q: Any,
    k_cache: Any,
    block_table: Any,
    cache_seqlens: Any,
    head_dim_v: int,
    tile_scheduler_metadata: Any,
    num_splits: Any,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
    *,
    num_threads: int = 1,
    check_values: Optional[bool] = None,
):
    """Attention of ``q`` over each sequence's cached tokens: ``(out, softmax_lse)``.

    ``softmax_scale`` defaults to ``1 / sqrt(576)``. With ``causal``, query ``i`` of the ``s_q`` new
    tokens sees cache positions ``< cache_seqlens - s_q + i + 1``. The metadata must come from
    ``get_mla_metadata`` on the same ``cache_seqlens``. Raises ValueError naming the bad value.

    GPU only: ``check_values`` copies the lengths, block table and metadata to the host to check them
    as the CPU path does (one synchronization); ``None`` means "unless the stream is being captured".
    Without the check the kernel still never reads outside the cache or the block table.
    """
    if _is_torch_tensor(q) and q.is_cuda:
        return _flash_mla_cuda(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                               num_splits, softmax_scale, causal, is_fp8_kvcache, check_values)
    q_bits, dtype, kind = _half("q", q)
    if is_fp8_kvcache:
        cache = _plain("k_cache", k_cache)
    else:
        cache, cache_dtype, _ = _half("k_cache", k_cache, dtype)
        if cache_dtype != dtype:
            raise ValueError(f"k_cache has dtype {cache_dtype} but q has {dtype}; they must match")
    if softmax_scale is not None:
        softmax_scale = float(softmax_scale)
        if not math.isfinite(softmax_scale):
            raise ValueError(f"softmax_scale is {softmax_scale}; it must be finite")
    out, lse = _C.mla.flash_mla_with_kvcache(
        q_bits,
        dtype,
        cache,
        _plain("block_table", block_table),
        _plain("cache_seqlens", cache_seqlens),
        _count("head_dim_v", head_dim_v),
        _plain("tile_scheduler_metadata", tile_scheduler_metadata),
        _plain("num_splits", num_splits),
        softmax_scale,
        bool(causal),
        bool(is_fp8_kvcache),
        _count("num_threads", num_threads),
    )
    if kind == "torch":
        import torch

        return _output(out, dtype, kind, q), torch.from_numpy(lse).to(q.device)
    return _output(out, dtype, kind, q), lse


def _flash_mla_cuda(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits,
                    softmax_scale, causal, is_fp8_kvcache, check_values):
    import torch

    if not _C.mla.HAS_CUDA:
        raise ValueError("q is a CUDA tensor, but this build of fireflyer has no mla CUDA kernels (docs/mla.md)")
    if q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"q has dtype {q.dtype}; expected torch.bfloat16 or torch.float16")
    if q.dim() != 4:
        raise ValueError(f"q has shape {tuple(q.shape)}; expected (b, s_q, h_q, 576)")
    named = {"k_cache": k_cache, "block_table": block_table, "cache_seqlens": cache_seqlens,
             "tile_scheduler_metadata": tile_scheduler_metadata, "num_splits": num_splits}
    for name, value in named.items():
        if not _is_torch_tensor(value) or value.device != q.device:
            where = value.device if _is_torch_tensor(value) else type(value).__name__
            raise ValueError(f"{name} is on {where}, but q is on {q.device}; every tensor must be on q's GPU")
    if is_fp8_kvcache and k_cache.dtype == getattr(torch, "float8_e4m3fn", None):
        k_cache = k_cache.view(torch.uint8)
    if not is_fp8_kvcache and k_cache.dtype != q.dtype:
        raise ValueError(f"k_cache has dtype {k_cache.dtype} but q has {q.dtype}; they must match")
    if softmax_scale is not None:
        softmax_scale = float(softmax_scale)
        if not math.isfinite(softmax_scale):
            raise ValueError(f"softmax_scale is {softmax_scale}; it must be finite")
    b, s_q, h_q = (int(x) for x in q.shape[:3])
    h_kv = int(k_cache.shape[2]) if k_cache.dim() == 4 and k_cache.shape[2] > 0 else 1
    num_sm_parts = int(tile_scheduler_metadata.shape[0]) if tile_scheduler_metadata.dim() == 2 else 1
    out = torch.empty((b, s_q, h_q, 512), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h_q, s_q), dtype=torch.float32, device=q.device)
    workspace = torch.empty(_C.mla.workspace_bytes(b, s_q, h_q, h_kv, num_sm_parts), dtype=torch.uint8,
                            device=q.device)
    stream = torch.cuda.current_stream(q.device)
    if check_values is None:
        check_values = not torch.cuda.is_current_stream_capturing()
    _C.mla.flash_mla_with_kvcache_cuda(
        q, k_cache, block_table, cache_seqlens, _count("head_dim_v", head_dim_v), tile_scheduler_metadata,
        num_splits, softmax_scale, bool(causal), bool(is_fp8_kvcache), out, lse, workspace, stream.cuda_stream,
        bool(check_values))
    return out, lse


def quantize_kvcache_fp8(k_cache: Any):
    """bf16 cache ``(num_blocks, 64, h_kv, 576)`` -> FP8 layout ``uint8 (num_blocks, 64, h_kv, 656)``:
    per token and 128 channels, ``scale = max|x| / 448`` (1 if all zero) stored as float32 and
    ``e4m3 = round(x / scale)``; RoPE channels copied as bf16. A NaN makes its group's scale NaN."""
    bits, dtype, kind = _half("k_cache", k_cache)
    if dtype != "bfloat16":
        raise ValueError(f"k_cache has dtype {dtype}; quantize_kvcache_fp8 takes bfloat16")
    out = _C.mla.quantize_kvcache_fp8(bits)
    if kind == "torch":
        import torch

        return torch.from_numpy(out).to(k_cache.device)
    return out


def last_cuda_kernel() -> str:
    """The kernel the last GPU call in this process launched: ``"wgmma_tma_lean2"`` (bf16 / fp16 cache,
    any number of query rows per KV head, softmax_scale > 0: TMA loads, the lean pipelined
    schedule with grouped mbarriers and the folded softmax), ``"wgmma_tma_lean"`` (the same with another
    scale, or when asked for), ``"wgmma_tma_lean_bar3"``, ``"wgmma_tma_lean_fold"``,
    ``"wgmma_tma_lean2_early"``, ``"wgmma_tma"`` (pipelined) and ``"wgmma_seesaw"`` (when asked for),
    ``"wgmma_fp8_lean"`` (the FP8 cache from 64 rows, softmax_scale > 0: the lean2 kernel fed by a
    dequantizing warpgroup), ``"wgmma"`` (cp.async loads, the FP8 cache from 64 rows with another scale or
    with ``FF_MLA_FP8_LEAN=0``), ``"mma_sync"`` (forced, or the FP8 cache
    with 33-63 rows), or for the FP8 cache with <= 32 rows ``"wgmma_fp8_transposed_wg"`` (<= 16 rows) and
    ``"mma_sync_fp8_channels_split_s"`` (17-32 rows), the other FP8 kernels (``"wgmma_fp8_transposed"``,
    ``"mma_sync_fp8_*"``) when asked for with ``FF_MLA_FP8``
    (docs/mla.md); ``""`` before any. ``FF_MLA_KERNEL=mma_sync`` in the environment makes GPU calls take the
    mma.sync kernels (``FF_MLA_KERNEL=wgmma``: the WGMMA kernel for the FP8 cache below 64 rows too),
    ``FF_MLA_LOADS=cp_async`` keeps the WGMMA kernel's loads on cp.async,
    ``FF_MLA_SCHEDULE=lean|lean_bar3|lean_fold|lean2|lean2_early|pipelined|seesaw`` picks the TMA
    kernel's schedule (docs/mla.md)."""
    return _C.mla.last_cuda_kernel()
