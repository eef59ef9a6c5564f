"""FP8 GEMM with fine-grained scaling (component ``gemm``), the counterpart of DeepGEMM's sm_90 API.

::

    from fireflyer import gemm
    a, sa = gemm.per_token_cast_to_fp8(x)          # x (m, k)  -> e4m3 (m, k), scales (m, ceil(k/128))
    b, sb = gemm.per_block_cast_to_fp8(w)          # w (n, k)  -> e4m3 (n, k), scales (ceil(n/128), ceil(k/128))
    out = np.empty((m, n), np.uint16)              # bf16 bit patterns
    gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), out)

Array types (see docs/gemm.md):

- numpy (CPU implementation): fp8 as ``uint8`` bit patterns or ``ml_dtypes.float8_e4m3fn``; bf16 as ``uint16``
  bit patterns or ``ml_dtypes.bfloat16`` (viewed, so ``out`` is written in place); scales ``float32``; indices
  ``int32``. ``bf16_to_float32`` / ``e4m3_to_float32`` decode bit patterns without ml_dtypes.
- torch tensors (imported lazily, only when given): ``torch.float8_e4m3fn``, ``torch.bfloat16``, ``float32``,
  ``int32``; CPU tensors run the CPU implementation, CUDA tensors the sm_90a kernels on the current stream (RuntimeError
  when the build has none; k must then be a multiple of 128 and n of 8, see docs/gemm.md).

Bad input raises ValueError naming the argument (``a.data`` is ``a``, ``a.scales`` is ``a_scales``).
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from fireflyer import _C
from fireflyer._options import check_anchor_options

__all__ = [
    "gemm_fp8_fp8_bf16_nt",
    "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous",
    "m_grouped_gemm_fp8_fp8_bf16_nt_masked",
    "wgrad_gemm_fp8_fp8_fp32_nt",
    "k_grouped_wgrad_gemm_fp8_fp8_fp32_nt",
    "per_token_cast_to_fp8",
    "per_block_cast_to_fp8",
    "get_col_major_tma_aligned_tensor",
    "get_tma_aligned_size",
    "get_m_alignment_for_contiguous_layout",
    "set_num_sms",
    "get_num_sms",
    "heuristic_choice",
    "e4m3_to_float32",
    "float32_to_e4m3",
    "bf16_to_float32",
    "float32_to_bf16",
    "calc_diff",
    # DeepGEMM's later (v2) names for the same functions:
    "fp8_gemm_nt",
    "m_grouped_fp8_gemm_nt_contiguous",
    "m_grouped_fp8_gemm_nt_masked",
    "k_grouped_fp8_gemm_nt_contiguous",
    "get_mk_alignment_for_contiguous_layout",
    "get_mn_major_tma_aligned_tensor",
]

get_tma_aligned_size = _C.gemm.get_tma_aligned_size
get_m_alignment_for_contiguous_layout = _C.gemm.get_m_alignment_for_contiguous_layout
set_num_sms = _C.gemm.set_num_sms
get_num_sms = _C.gemm.get_num_sms
heuristic_choice = _C.gemm.heuristic_choice
e4m3_to_float32 = _C.gemm.e4m3_to_float32
float32_to_e4m3 = _C.gemm.float32_to_e4m3
bf16_to_float32 = _C.gemm.bf16_to_float32
float32_to_bf16 = _C.gemm.float32_to_bf16


def _is_torch_tensor(value: Any) -> bool:
    # By type name, so torch is imported only when the caller already uses it.
    return type(value).__module__.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter")


def _bits(value: Any, name: str) -> Any:
    """The array the extension takes: fp8 and bf16 element types become their integer bit patterns (a view)."""
    if _is_torch_tensor(value):
        import torch

        if value.dtype == torch.float8_e4m3fn:
            return value.view(torch.uint8)
        return value  # bf16, float32 and int32 cross DLPack as they are
    if isinstance(value, np.ndarray):
        if value.dtype.name == "float8_e4m3fn":  # ml_dtypes
            return value.view(np.uint8)
        if value.dtype.name == "bfloat16":  # ml_dtypes
            return value.view(np.uint16)
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} is a {type(value).__name__}, not an array: {error}") from None


def _stream(value: Any) -> int:
    if _is_torch_tensor(value) and value.is_cuda:
        import torch

        return torch.cuda.current_stream(value.device).cuda_stream
    return 0


def _pair(operand: Any, name: str) -> Tuple[Any, Any]:
    if not isinstance(operand, (tuple, list)) or len(operand) != 2:
        raise ValueError(f"{name} must be a pair (tensor, scales), got {type(operand).__name__}")
    return _bits(operand[0], name), _bits(operand[1], f"{name}_scales")


def gemm_fp8_fp8_bf16_nt(lhs, rhs, out) -> None:
    """out (m, n) bf16 = a (m, k) @ b (n, k).T with a scaled per 1x128 and b per 128x128; writes out in place.

    lhs = (a e4m3 (m, k), a_scales fp32 (m, ceil(k/128)), row-major or TMA-aligned column-major);
    rhs = (b e4m3 (n, k), b_scales fp32 (ceil(n/128), ceil(k/128))). k need not be a multiple of 128 on the CPU.
    """
    a, sa = _pair(lhs, "a")
    b, sb = _pair(rhs, "b")
    _C.gemm.gemm_fp8_fp8_bf16_nt(a, sa, b, sb, _bits(out, "out"), _stream(out))


def m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(lhs, rhs, out, m_indices) -> None:
    """Grouped GEMM, contiguous layout: out[r] = a[r] @ b[m_indices[r]].T for every row r of a (m_sum, k).

    b is (num_groups, n, k) with scales (num_groups, ceil(n/128), ceil(k/128)); m_indices int32 (m_sum); each
    group's segment starts at a multiple of get_m_alignment_for_contiguous_layout() (128); rows with index -1 are
    padding and come out zero (the GPU kernel reads their A rows: allocate them). a_scales may be row-major or
    TMA-aligned column-major (get_col_major_tma_aligned_tensor: the GPU kernel's own layout, no repack).
    """
    a, sa = _pair(lhs, "a")
    b, sb = _pair(rhs, "b")
    _C.gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(
        a, sa, b, sb, _bits(out, "out"), _bits(m_indices, "m_indices"), _stream(out)
    )


def m_grouped_gemm_fp8_fp8_bf16_nt_masked(lhs, rhs, out, masked_m, expected_m: int) -> None:
    """Grouped GEMM, masked layout: out[g, :masked_m[g]] = a[g, :masked_m[g]] @ b[g].T; other rows untouched.

    a (num_groups, m_max, k), a_scales (num_groups, m_max, ceil(k/128)), out (num_groups, m_max, n),
    masked_m int32 (num_groups) each in [0, m_max]; expected_m is a block-size hint for the GPU kernels.
    """
    a, sa = _pair(lhs, "a")
    b, sb = _pair(rhs, "b")
    if isinstance(expected_m, bool) or not isinstance(expected_m, (int, np.integer)):
        raise ValueError(f"expected_m={expected_m!r} must be an integer")
    _C.gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked(
        a, sa, b, sb, _bits(out, "out"), _bits(masked_m, "masked_m"), int(expected_m), _stream(out)
    )


def _transposed_if(scales: Any, shape: Tuple[int, int]) -> Any:
    """The transposed view of a 2-D scale tensor of the given shape; any other tensor as it is. (DeepGEMM passes
    weight-gradient scales either way round and reads the transposed form when both shapes match.)"""
    if tuple(scales.shape) != shape:
        return scales
    return scales.transpose(0, 1) if _is_torch_tensor(scales) else scales.T


def wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out) -> None:
    """out (m, n) float32 += a (m, k) @ b (n, k).T, a and b each scaled per 1x128 (weight gradients).

    lhs = (a e4m3 (m, k), a_scales fp32 (m, ceil(k/128)) or transposed (ceil(k/128), m));
    rhs = (b e4m3 (n, k), b_scales fp32 (n, ceil(k/128)) or transposed). out is read and written: the K sum, formed
    in fp32 per 128-wide block and scaled, is added to it. The GPU kernel reads the transposed (M-/N-major) scales
    of get_col_major_tma_aligned_tensor in place and repacks other layouts; it needs k a multiple of 16 and n of 4.
    """
    a, sa = _pair(lhs, "a")
    b, sb = _pair(rhs, "b")
    if len(a.shape) == 2 and len(b.shape) == 2:  # other ranks: the extension names the bad shape
        k_blocks = -(-int(a.shape[1]) // 128)
        sa = _transposed_if(sa, (k_blocks, int(a.shape[0])))
        sb = _transposed_if(sb, (k_blocks, int(b.shape[0])))
    _C.gemm.wgrad_gemm_fp8_fp8_fp32_nt(a, sa, b, sb, _bits(out, "out"), _stream(out))


def k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(lhs, rhs, out, batch_sizes) -> None:
    """out[g] (m, n) float32 += a_g (m, k_g) @ b_g (n, k_g).T for every batch g, k_g = batch_sizes[g] (tokens per
    expert: each batch has its own K).

    lhs = (a, a_scales): a holds the batches' (m, k_g) row-major blocks one after another (any shape, read flat:
    sum of m * k_g elements); a_scales (sum of ceil(k_g/128), m) fp32 holds each batch's transposed scales one after
    another. rhs likewise with n. out (num_batches, m, n). A batch with k_g = 0 leaves out[g] as it is.
    """
    a, sa = _pair(lhs, "a")
    b, sb = _pair(rhs, "b")
    sizes = []
    for index, size in enumerate(batch_sizes):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise ValueError(f"batch_sizes[{index}]={size!r} must be an integer")
        sizes.append(int(size))
    _C.gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt(
        a.reshape(-1), sa, b.reshape(-1), sb, _bits(out, "out"), sizes, _stream(out)
    )


def _cast(x: Any, per_block: bool):
    if _is_torch_tensor(x):
        import torch

        source = x.detach().cpu()
        if source.dtype not in (torch.float32, torch.bfloat16):
            source = source.float()
        q, scales = (_C.gemm.per_block_cast_to_fp8 if per_block else _C.gemm.per_token_cast_to_fp8)(source)
        return (
            torch.from_numpy(q).view(torch.float8_e4m3fn).to(x.device),
            torch.from_numpy(scales).to(x.device),
        )
    array = _bits(x, "x")
    if array.dtype != np.uint16 and array.dtype != np.float32:
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"x has dtype {array.dtype}; expected floating-point values")
        array = array.astype(np.float32)  # like the anchor's .float() of its amax; exact for float16/bf16
    return (_C.gemm.per_block_cast_to_fp8 if per_block else _C.gemm.per_token_cast_to_fp8)(array)


def per_token_cast_to_fp8(x):
    """x (m, k) -> (e4m3 bits uint8 (m, k), float32 scales (m, ceil(k/128))): amax per 1x128, clamped at 1e-4,
    q = e4m3(x * ((1 / amax) * 448)), scale = amax / 448 (torch evaluates the anchor's `448.0 / amax` as
    reciprocal(amax) * 448); bit-exact with the anchor's torch formula. numpy ``uint16``
    input is read as bf16 bits. A torch tensor gives torch tensors (float8_e4m3fn, float32) on its device."""
    return _cast(x, per_block=False)


def per_block_cast_to_fp8(x):
    """x (m, k) -> (e4m3 bits (m, k), float32 scales (ceil(m/128), ceil(k/128))): one amax per 128x128 tile."""
    return _cast(x, per_block=True)


def get_col_major_tma_aligned_tensor(x):
    """x float32 (mn, kb) or (groups, mn, kb), as a view over a new buffer in DeepGEMM's TMA-aligned column-major
    layout: mn contiguous, each column padded to get_tma_aligned_size(mn, 4) floats, so strides (in elements) are
    (1, aligned_mn) or (aligned_mn * kb, 1, aligned_mn). Returned as is when already in that layout."""
    is_torch = _is_torch_tensor(x)
    if not is_torch:
        x = np.asarray(x)
    if x.ndim not in (2, 3):
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (mn, kb) or (groups, mn, kb)")
    if str(x.dtype) not in ("float32", "torch.float32"):
        raise ValueError(f"x has dtype {x.dtype}; expected float32 scales")
    squeeze = x.ndim == 2
    batched = x[None] if squeeze else x
    groups, mn, k_blocks = batched.shape
    aligned = get_tma_aligned_size(mn, 4)
    strides = tuple(batched.stride()) if is_torch else tuple(s // 4 for s in batched.strides)
    if (strides[1] == 1 or mn == 1) and (strides[2] == aligned or k_blocks == 1) and (
        groups == 1 or strides[0] == aligned * k_blocks
    ):
        return x
    if is_torch:
        import torch

        storage = torch.empty((groups, k_blocks, aligned), dtype=torch.float32, device=x.device)
        view = storage.transpose(1, 2)[:, :mn, :]
        view.copy_(batched)
    else:
        storage = np.empty((groups, k_blocks, aligned), dtype=np.float32)
        view = storage.transpose(0, 2, 1)[:, :mn, :]
        view[...] = batched
    return view[0] if squeeze else view


# DeepGEMM's later (v2) names of the same three GEMMs. On sm_90 they compute the same thing with the same fp32
# scales; their extra arguments are accepted where they cannot change the result here (a JIT specialisation
# hint, the UE8M0 cast that only sm_100 scales have) and refused otherwise, naming the argument, so a call
# written for DeepGEMM never gets a silently different answer.
_V2_HINTS = frozenset({"compiled_dims", "disable_ue8m0_cast", "beta"})  # beta scales c, which must be None
_V2_RECIPE = (1, 128, 128)  # A per 1x128, B per 128x128: the only scaling here
_V2_ONLY = {"recipe": None, "c": None, "alpha": 1, "stream": None}
_V2_NOTES = {"c": ": c (D = C + A B^T) is not built for a bfloat16 d (DeepGEMM's own sm_90 kernel for the "
                  "(1, 128, 128) recipe refuses c too); with a float32 d and the (1, 1, 128) recipe it is",
             "stream": ": the call runs on torch's current stream; use torch.cuda.stream(...)"}


def _check_v2_options(function: str, options: dict) -> None:
    recipe = options.get("recipe")
    if recipe is not None and tuple(recipe) == _V2_RECIPE:
        options = dict(options, recipe=None)  # the default scaling, named explicitly
    check_anchor_options(function, options, _V2_HINTS, _V2_ONLY, _V2_NOTES)


_V2_WGRAD_RECIPE = (1, 1, 128)  # A and B per 1x128: the float32 output's scaling (wgrad_gemm_fp8_fp8_fp32_nt)


def _is_float32(value: Any) -> bool:
    return str(getattr(value, "dtype", "")) in ("float32", "torch.float32")


def _same_tensor(x: Any, y: Any) -> bool:
    if x is y:
        return True
    if _is_torch_tensor(x) and _is_torch_tensor(y):
        return x.data_ptr() == y.data_ptr() and x.shape == y.shape and x.stride() == y.stride()
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
        return (x.__array_interface__["data"][0] == y.__array_interface__["data"][0] and x.shape == y.shape
                and x.strides == y.strides)
    return False


def _start_from(c, d) -> None:
    """d = c before an accumulating GEMM adds a b^T: zeros for c None, nothing when c is d itself. (With c None or
    another tensor, d is an output only: it is set here, before the GEMM checks a and b.)"""
    if c is None:
        if _is_torch_tensor(d):
            d.zero_()
        else:
            d[...] = 0
    elif not _same_tensor(c, d):
        if _is_torch_tensor(d):
            d.copy_(c)
        else:
            np.copyto(d, c)


def _check_wgrad_options(function: str, options: dict, only: dict) -> None:
    """The v2 options of the float32 (weight-gradient) GEMMs: recipe None or (1, 1, 128), beta None or 1, the
    `only` defaults, the hints; anything else refused before d is touched."""
    recipe = options.get("recipe")
    if recipe is not None and tuple(recipe) != _V2_WGRAD_RECIPE:
        raise NotImplementedError(f"{function}: recipe={tuple(recipe)} with a float32 d is not supported (only "
                                  f"{_V2_WGRAD_RECIPE}: A and B scaled per 1x128, as wgrad_gemm_fp8_fp8_fp32_nt)")
    beta = options.get("beta")
    if beta is not None and beta != 1:
        raise NotImplementedError(f"{function}: beta={beta!r} is not supported (only 1: d = c + a @ b.T)")
    rest = {name: value for name, value in options.items() if name not in ("recipe", "beta")}
    check_anchor_options(function, rest, _V2_HINTS, only, _V2_NOTES)


def _fp8_gemm_nt_float32(a, b, d, c, options: dict) -> None:
    _check_wgrad_options("fp8_gemm_nt", options, {"alpha": 1, "stream": None})
    _start_from(c, d)
    wgrad_gemm_fp8_fp8_fp32_nt(a, b, d)


def fp8_gemm_nt(a, b, d, c=None, **options) -> None:
    """DeepGEMM v2's ``fp8_gemm_nt``. With a bfloat16 ``d``: ``gemm_fp8_fp8_bf16_nt(a, b, d)``, ``c`` must be None
    and ``recipe`` None or (1, 128, 128). With a float32 ``d``: d = c + a @ b.T with A and B scaled per 1x128
    (``recipe`` None or (1, 1, 128); b's scales (n, ceil(k/128))): ``c`` None (d = a @ b.T), ``d`` itself (in-place
    accumulation, wgrad_gemm_fp8_fp8_fp32_nt) or another float32 tensor (copied into d first). ``compiled_dims``
    and ``disable_ue8m0_cast`` are accepted and have no effect."""
    if _is_float32(d):
        _fp8_gemm_nt_float32(a, b, d, c, options)
        return
    _check_v2_options("fp8_gemm_nt", dict(options, c=c))
    gemm_fp8_fp8_bf16_nt(a, b, d)


def k_grouped_fp8_gemm_nt_contiguous(a, b, d, ks, ks_tensor=None, c=None, **options) -> None:
    """DeepGEMM v2's k-grouped GEMM in its sm_90 form (K-major operands, the (1, 1, 128) recipe, float32 d):
    d[g] = c[g] + a_g @ b_g.T with k_g = ks[g], i.e. ``k_grouped_wgrad_gemm_fp8_fp8_fp32_nt``. a = (flat data,
    scales) with the scales as DeepGEMM passes them, the (m, sum of ceil(k_g/128)) view of the (sum, m) array, or
    that array itself; b likewise. ``ks_tensor`` (the device copy of ks) is not needed here: the host list is used.
    ``c``: None (d = a b^T), ``d`` itself (accumulate) or another tensor (copied into d first). ``recipe`` None or
    (1, 1, 128); ``use_psum_layout`` False; ``compiled_dims`` and ``disable_ue8m0_cast`` have no effect."""
    _check_wgrad_options("k_grouped_fp8_gemm_nt_contiguous", options,
                         {"use_psum_layout": False, "alpha": 1, "stream": None})
    total_blocks = sum(-(-int(k) // 128) for k in ks)
    (a_data, sa), (b_data, sb) = _pair(a, "a"), _pair(b, "b")
    if len(d.shape) == 3:  # DeepGEMM passes the (rows, blocks) view of the (blocks, rows) scales
        sa = _transposed_if(sa, (int(d.shape[1]), total_blocks))
        sb = _transposed_if(sb, (int(d.shape[2]), total_blocks))
    _start_from(c, d)
    k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((a_data, sa), (b_data, sb), d, list(ks))


def m_grouped_fp8_gemm_nt_contiguous(a, b, d, m_indices, **options) -> None:
    """DeepGEMM v2's name of ``m_grouped_gemm_fp8_fp8_bf16_nt_contiguous`` (options as ``fp8_gemm_nt``)."""
    _check_v2_options("m_grouped_fp8_gemm_nt_contiguous", options)
    m_grouped_gemm_fp8_fp8_bf16_nt_contiguous(a, b, d, m_indices)


def m_grouped_fp8_gemm_nt_masked(a, b, d, masked_m, expected_m: int, **options) -> None:
    """DeepGEMM v2's name of ``m_grouped_gemm_fp8_fp8_bf16_nt_masked`` (options as ``fp8_gemm_nt``)."""
    _check_v2_options("m_grouped_fp8_gemm_nt_masked", options)
    m_grouped_gemm_fp8_fp8_bf16_nt_masked(a, b, d, masked_m, expected_m)


get_mk_alignment_for_contiguous_layout = get_m_alignment_for_contiguous_layout
get_mn_major_tma_aligned_tensor = get_col_major_tma_aligned_tensor


def calc_diff(x, y) -> float:
    """The field's similarity metric: 1 - 2 * sum(x * y) / sum(x * x + y * y), in float64 (0 when identical)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    denominator = float((x * x + y * y).sum())
    return 0.0 if denominator == 0.0 else 1.0 - 2.0 * float((x * y).sum()) / denominator
