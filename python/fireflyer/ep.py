"""Expert-parallel dispatch and combine (component ``ep``) with DeepEP's v1 ``Buffer`` API.

Two backends behind one ``Buffer``: the CPU shared-memory backend (``ff::ep::ShmBuffer``: ranks are
processes on one machine, one POSIX shared-memory segment per buffer; numpy or torch CPU tensors in, the same
kind out), and the CUDA
intranode backend (``ff::ep::CudaBuffer``: one process per rank, GPU buffers shared through CUDA IPC,
kernels writing into the receivers' buffers; torch CUDA tensors in, torch CUDA tensors out, on the
current stream). A call with CUDA tensors uses the CUDA backend. See docs/ep.md.

::

    from fireflyer import ep
    buffer = ep.Buffer(("moe0", rank, num_ranks), num_nvl_bytes=64 << 20)
    per_rank, _, per_expert, in_rank = buffer.get_dispatch_layout(topk_idx, num_experts)
    recv_x, recv_idx, recv_w, counts, handle = buffer.dispatch(
        x, topk_idx=topk_idx, topk_weights=topk_weights, num_tokens_per_rank=per_rank,
        is_token_in_rank=in_rank, num_tokens_per_expert=per_expert)
    combined_x, combined_w = buffer.combine(expert_out, handle, topk_weights=recv_w)

Arrays are numpy: float32, bfloat16 as uint16 bit patterns (or ``ml_dtypes.bfloat16``), FP8 as uint8 e4m3
codes with float32 per-128 scales; or torch CPU tensors (bfloat16, float16, float32, float8_e4m3fn), answered
with torch tensors of the input's dtype (FP8 codes as float8_e4m3fn). Every
collective must be called by every rank in the same order; every wait is bounded by ``timeout_s``
and a dead or silent rank becomes a ``RuntimeError``/``TimeoutError`` naming it, never a hang.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from fireflyer import _C
from fireflyer._options import check_anchor_options

__all__ = ["Buffer", "EventOverlap"]


class EventOverlap:
    """DeepEP's event wrapper. The CPU backend finishes every call before returning, so there is
    nothing to wait for: ``current_stream_wait()`` does nothing. On the CUDA backend it holds a
    ``torch.cuda.Event`` recorded after the call's kernels were enqueued; ``current_stream_wait()``
    makes the current stream wait for it (for work on other streams)."""

    def __init__(self, event: Any = None) -> None:
        self.event = event

    def current_stream_wait(self) -> None:
        if self.event is not None:
            import torch

            torch.cuda.current_stream().wait_event(self.event)

    def __enter__(self) -> "EventOverlap":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter")


# DeepEP keyword arguments that only say how to schedule the work (events, streams, tuning): accepted and
# ignored (the calls run on the current stream, or complete on the CPU). Those that change the results or
# the outputs' form are refused unless left at DeepEP's default, so a caller switching from DeepEP never gets
# a silently different answer; anything else is a TypeError, as for any Python function.
_SCHEDULING_HINTS = frozenset({"previous_event", "async_finish", "allocate_on_comm_stream", "config"})
_UNSUPPORTED_UNLESS_DEFAULT = {
    "low_latency_dispatch": {"dispatch_wait_recv_cost_stats": None, "use_ue8m0": False},
    "low_latency_combine": {"use_logfmt": False, "combine_wait_recv_cost_stats": None},
}


class _PaddedHandle:
    """A normal dispatch's handle when it ran with num_worst_tokens: the native handle, and the row count its
    outputs were padded to (its combine takes x with that many rows, its cached dispatches pad the same way)."""

    def __init__(self, native: Any, num_worst_tokens: int) -> None:
        self.native = native
        self.num_worst_tokens = num_worst_tokens

    @property
    def num_recv_tokens(self) -> int:
        return self.native.num_recv_tokens

    @property
    def num_tokens(self) -> int:
        return self.native.num_tokens


def _unpad(handle: "_PaddedHandle", value: Any, name: str) -> Any:
    """The first num_recv_tokens rows of a padded dispatch's combine input `value` (which must have
    num_worst_tokens rows)."""
    rows = value.shape[0]
    if rows != handle.num_worst_tokens:
        raise ValueError(f"{name} has {rows} rows; the dispatch ran with num_worst_tokens={handle.num_worst_tokens}, "
                         f"so combine takes that many (the first {handle.num_recv_tokens} are the received ones)")
    return value[:handle.num_recv_tokens]


def _pad_rows(value: Any, rows: int, fill: float) -> Any:
    """numpy or torch ``value`` with ``rows`` rows: its own, then rows of ``fill``."""
    if _is_torch_tensor(value):
        import torch

        shape = (rows, *value.shape[1:])
        padded = (torch.zeros(shape, dtype=value.dtype, device=value.device) if fill == 0 else
                  torch.full(shape, fill, dtype=value.dtype, device=value.device))
    else:
        padded = np.full((rows, *value.shape[1:]), fill, dtype=value.dtype)
    padded[:value.shape[0]] = value
    return padded


def _unpack_bias(bias: Any) -> tuple[Any, Any]:
    """DeepEP's combine bias: None, one tensor, or a tuple of two (either may be None) -> (bias0, bias1)."""
    if bias is None:
        return None, None
    if isinstance(bias, tuple):
        if len(bias) != 2:
            raise ValueError(f"bias is a tuple of {len(bias)}; expected one tensor or a tuple of two")
        return bias
    return bias, None


def _describe_tensor(value: Any) -> str:
    """'<dtype> <shape> on <device>' for a torch tensor, '<dtype> <shape>' for a numpy array, else the type."""
    if _is_torch_tensor(value):
        return f"{value.dtype} {tuple(value.shape)} on {value.device}"
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {value.shape}"
    return type(value).__name__


def _check_recv_stats(stats: Any, num_local_experts: int, x: Any) -> None:
    """DeepEP's cumulative_local_expert_recv_stats: int32 (num_local_experts,), where x is (a CUDA tensor for
    CUDA x; a numpy array or CPU torch tensor otherwise), updated in place."""
    shape = tuple(stats.shape) if hasattr(stats, "shape") else None
    if _is_torch_tensor(stats):
        import torch

        right_dtype = stats.dtype == torch.int32
        right_device = stats.is_cuda == _is_cuda(x) and (not stats.is_cuda or stats.device == x.device)
    else:
        right_dtype = isinstance(stats, np.ndarray) and stats.dtype == np.int32
        right_device = not _is_cuda(x)
    if not (right_dtype and right_device and shape == (num_local_experts,)):
        raise ValueError(
            f"cumulative_local_expert_recv_stats has {getattr(stats, 'dtype', type(stats).__name__)} {shape}; "
            f"expected int32 ({num_local_experts},) on x's device, updated in place")


def _check_deepep_options(method: str, options: dict) -> None:
    check_anchor_options(f"Buffer.{method}", options, _SCHEDULING_HINTS, _UNSUPPORTED_UNLESS_DEFAULT.get(method, {}),
                         notes={name: " (see docs/ep.md)" for name in _UNSUPPORTED_UNLESS_DEFAULT.get(method, {})})


def _is_cuda(value: Any) -> bool:
    if isinstance(value, tuple) and value:
        value = value[0]
    return _is_torch_tensor(value) and value.is_cuda


def _cuda_view(tensor: Any, name: str) -> Any:
    """The tensor as the native layer takes it: float32, bfloat16 as int16 bits, float8 e4m3 as uint8."""
    import torch

    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16)
    if tensor.dtype == getattr(torch, "float8_e4m3fn", None):
        return tensor.view(torch.uint8)
    if tensor.dtype in (torch.float32, torch.uint8):
        return tensor
    raise ValueError(f"{name} has dtype {tensor.dtype}; expected float32, bfloat16 or float8_e4m3fn")


def _float_code(tensor: Any, name: str) -> int:
    """0 for float32, 1 for bfloat16 (the native layer's codes for raw-pointer calls)."""
    import torch

    if tensor.dtype == torch.float32:
        return 0
    if tensor.dtype == torch.bfloat16:
        return 1
    raise ValueError(f"{name} has dtype {tensor.dtype}; expected float32 or bfloat16")


def _stream() -> int:
    import torch

    return torch.cuda.current_stream().cuda_stream


def _record_event() -> EventOverlap:
    import torch

    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream())
    return EventOverlap(event)


def _rows(value: Any, name: str) -> tuple[np.ndarray, bool]:
    """(C-contiguous array of float32/uint16/uint8, was_bfloat16_typed) for the native layer."""
    if _is_torch_tensor(value):
        import torch

        tensor = value.detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:
            return tensor.view(torch.int16).numpy().view(np.uint16), False
        if tensor.dtype == getattr(torch, "float8_e4m3fn", None):
            return tensor.view(torch.uint8).numpy(), False
        value = tensor.float().numpy() if tensor.dtype != torch.uint8 else tensor.numpy()
    array = np.asarray(value)
    if array.dtype.name == "bfloat16":  # ml_dtypes.bfloat16: same bits as uint16
        return np.ascontiguousarray(array).view(np.uint16), True
    if array.dtype.name.startswith("float8_e4m3"):
        return np.ascontiguousarray(array).view(np.uint8), False
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype not in (np.float32, np.uint16, np.uint8):
        raise ValueError(f"{name} has dtype {array.dtype}; expected float32, bfloat16 (uint16 bits) or float8 (uint8)")
    return np.ascontiguousarray(array), False


def _restore(array: np.ndarray, bfloat16_typed: bool) -> np.ndarray:
    if bfloat16_typed:
        import ml_dtypes

        return array.view(ml_dtypes.bfloat16)
    return array


def _as_input_type(array: Optional[np.ndarray], template: Any, convert: bool = True) -> Any:
    """``array`` as a torch CPU tensor when the caller's ``template`` input is one (sharing the array's memory),
    else unchanged: bfloat16 and float8 bit patterns take the template's dtype back; with ``convert``, other
    floating outputs take its floating dtype (a copy: float16 in, float16 out)."""
    if array is None or not _is_torch_tensor(template):
        return array
    import torch

    float8 = getattr(torch, "float8_e4m3fn", None)
    if template.dtype == torch.bfloat16 and array.dtype == np.uint16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    if array.dtype == np.uint8 and float8 is not None and template.dtype in (float8, torch.bfloat16):
        return torch.from_numpy(array).view(float8)  # FP8 codes (a bf16 input's are DeepEP's float8 output)
    tensor = torch.from_numpy(array)
    if convert and template.is_floating_point() and tensor.is_floating_point() and tensor.dtype != template.dtype:
        tensor = tensor.to(template.dtype)
    return tensor


def _matrix(value: Any, dtype: Any, name: str) -> Optional[np.ndarray]:
    if value is None:
        return None
    if _is_torch_tensor(value):
        value = value.detach().cpu().numpy()
    array = np.ascontiguousarray(np.asarray(value), dtype=dtype)
    if array.ndim != 2:
        raise ValueError(f"{name} has shape {array.shape}; expected 2-D")
    return array


def _resolve_group(group: Any, rank: Optional[int], num_ranks: Optional[int]) -> tuple[str, int, int]:
    """(segment name, rank, num_ranks) from a tuple, a name plus rank/num_ranks, an object with
    ``name``/``rank``/``num_ranks`` attributes, or a torch.distributed process group."""
    if isinstance(group, (tuple, list)):
        if len(group) != 3:
            raise ValueError("group tuple must be (name, rank, num_ranks)")
        name, rank, num_ranks = group
    elif isinstance(group, str):
        name = group
    elif hasattr(group, "rank") and callable(getattr(group, "size", None)):  # torch ProcessGroup
        import torch.distributed as dist

        rank, num_ranks = group.rank(), group.size()
        names = [f"torch_{np.random.default_rng().integers(1 << 62)}" if rank == 0 else None]
        dist.broadcast_object_list(names, src=dist.get_global_rank(group, 0), group=group)
        name = names[0]
    else:
        name = getattr(group, "name", None)
        rank = getattr(group, "rank", rank)
        num_ranks = getattr(group, "num_ranks", num_ranks)
    if name is None or rank is None or num_ranks is None:
        raise ValueError("group needs a name, a rank and num_ranks (pass rank=, num_ranks= with a name)")
    return str(name), int(rank), int(num_ranks)


class _LowLatencyHandle:
    """Handle of a low-latency dispatch; filled when its receive half has run. On the CUDA backend the
    layout stays in the buffer (valid until the next low-latency dispatch) and ``native`` is True."""

    def __init__(self, num_tokens: int, hidden: int, num_experts: int, max_tokens: int) -> None:
        self.num_tokens, self.hidden, self.num_experts, self.max_tokens = num_tokens, hidden, num_experts, max_tokens
        self.native: Any = None
        self.cuda = False
        self.device: Any = None  # CUDA: x's device
        self.torch = False  # CPU: the dispatch's x was a torch tensor


class Buffer:
    """One rank's communication buffer (DeepEP ``deep_ep.Buffer`` semantics, CPU shared memory).

    ``group``: ``(name, rank, num_ranks)``, a name with ``rank=``/``num_ranks=``, or a
    ``torch.distributed`` group (rank 0 then picks a segment name and broadcasts it). The segment holds
    ``num_nvl_bytes + num_rdma_bytes`` data bytes split into ``num_ranks**2`` (source, destination)
    slots; a call whose rows do not fit fails with an error saying how many bytes it needs.
    ``low_latency_mode`` and ``num_qps_per_rank`` are accepted for API compatibility and not used.
    """

    num_sms: int = 20

    def __init__(
        self,
        group: Any,
        num_nvl_bytes: int = 0,
        num_rdma_bytes: int = 0,
        low_latency_mode: bool = False,
        num_qps_per_rank: int = 24,
        rank: Optional[int] = None,
        num_ranks: Optional[int] = None,
        timeout_s: float = 30.0,
        backend: str = "auto",
    ) -> None:
        if backend not in ("auto", "cpu", "cuda"):
            raise ValueError(f"backend={backend!r} must be 'auto', 'cpu' or 'cuda'")
        name, rank, num_ranks = _resolve_group(group, rank, num_ranks)
        if num_nvl_bytes < 0 or num_rdma_bytes < 0 or num_nvl_bytes + num_rdma_bytes <= 0:
            raise ValueError(f"num_nvl_bytes={num_nvl_bytes} + num_rdma_bytes={num_rdma_bytes} must be positive")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s} must be positive")
        self.low_latency_mode = bool(low_latency_mode)
        self.num_qps_per_rank = int(num_qps_per_rank)
        self._name = name
        self._num_bytes = int(num_nvl_bytes + num_rdma_bytes)
        self._timeout_ms = max(1, int(timeout_s * 1000))
        self._backend = backend
        self._native = None
        self._cuda = None
        self.rank = rank
        self.group_size = num_ranks
        self._combine_buffer: Any = None  # get_next_low_latency_combine_buffer's (key, array)
        if backend in ("auto", "cpu"):
            self._native = _C.ep.ShmBuffer(name, rank, num_ranks, self._num_bytes, self._timeout_ms)
        if backend == "cuda":
            self._cuda_buffer()

    def _cuda_buffer(self) -> Any:
        """The CUDA backend, created (collectively: every rank makes the same first CUDA call) on first use."""
        if self._backend == "cpu":
            raise ValueError("this Buffer was created with backend='cpu' but got CUDA tensors")
        if self._cuda is None:
            if not _C.ep.cuda_backend_built():
                raise RuntimeError("the ep CUDA backend is not built in this fireflyer._C (no nvcc at build time)")
            self._cuda = _C.ep.CudaBuffer(self._name, self.rank, self.group_size, self._num_bytes, self._timeout_ms,
                                          Buffer.num_sms)
        if self._cuda.num_sms() != Buffer.num_sms:
            self._cuda.set_num_sms(Buffer.num_sms)
        return self._cuda

    def _cpu_buffer(self) -> Any:
        if self._native is None:
            raise ValueError("this Buffer has no CPU backend (it was created with backend='cuda', or closed)")
        return self._native

    def synchronize(self) -> None:
        """CUDA backend: waits (bounded) for the current stream and raises the first error of earlier
        low-latency kernels (a GPU-side timeout waiting for a rank) or of the group. CPU: nothing to do."""
        if self._cuda is not None:
            self._cuda.synchronize(_stream())

    def set_profiling(self, enabled: bool) -> None:
        """Benchmark aid (CUDA backend): record CUDA events around each phase's kernels."""
        self._cuda_buffer().set_profiling(bool(enabled))

    def kernel_times_us(self) -> dict:
        """Benchmark aid (CUDA backend): {phase: microseconds} of the kernels of each phase recorded since the
        last call (notify, dispatch_send, dispatch_recv, combine_send, combine_recv, ll_dispatch_send, ...).
        Call it after the stream is synchronised; phases not yet complete are left out."""
        return dict(self._cuda_buffer().kernel_times_us())

    def close(self) -> None:
        """Releases the buffers (the CUDA one after a bounded barrier with the other ranks)."""
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None
        self._native = None

    @staticmethod
    def set_num_sms(new_num_sms: int) -> None:
        """The number of blocks (one per SM) of the CUDA normal-mode send kernels; unused by the CPU backend
        and the low-latency kernels (which use every SM). Must be a positive even number."""
        if isinstance(new_num_sms, bool) or not isinstance(new_num_sms, int) or new_num_sms <= 0 or new_num_sms % 2:
            raise ValueError(f"num_sms={new_num_sms!r} must be a positive even integer")
        Buffer.num_sms = new_num_sms

    @staticmethod
    def get_num_sms() -> int:
        return Buffer.num_sms

    def get_dispatch_layout(self, topk_idx: Any, num_experts: int, **options: Any):
        """(num_tokens_per_rank int32, None, num_tokens_per_expert int32, is_token_in_rank bool)."""
        _check_deepep_options("get_dispatch_layout", options)
        if _is_cuda(topk_idx):
            return self._cuda_layout(topk_idx, int(num_experts))
        per_rank, per_expert, in_rank = _C.ep.get_dispatch_layout(_matrix(topk_idx, np.int64, "topk_idx"),
                                                                  int(num_experts), self.group_size)
        return (_as_input_type(per_rank, topk_idx), None, _as_input_type(per_expert, topk_idx),
                _as_input_type(in_rank, topk_idx))

    def dispatch(
        self,
        x: Any,
        handle: Any = None,
        num_tokens_per_rank: Any = None,
        num_tokens_per_rdma_rank: Any = None,
        is_token_in_rank: Any = None,
        num_tokens_per_expert: Any = None,
        topk_idx: Any = None,
        topk_weights: Any = None,
        expert_alignment: int = 1,
        num_worst_tokens: int = 0,
        **options: Any,
    ):
        """(recv_x, recv_topk_idx, recv_topk_weights, num_recv_tokens_per_expert_list, handle).

        ``x`` is a matrix or ``(x_fp8 uint8, scales float32 [num_tokens, hidden/128])``; ``recv_x`` has
        the same form. With a ``handle`` (cached dispatch) only data moves and the top-k outputs are None.
        ``num_worst_tokens`` > 0 (DeepEP's): the outputs have that many rows, the received ones first, then
        padding (zeros; recv_topk_idx -1, as DeepEP's), num_recv_tokens_per_expert_list is empty, and the
        handle's combine takes x with that many rows. More received rows than that is a ValueError. The CUDA
        dispatch still waits on the host for the counts (docs/ep.md), so such a call is not captured in a graph.
        """
        _check_deepep_options("dispatch", options)
        worst = int(num_worst_tokens)
        if worst < 0:
            raise ValueError(f"num_worst_tokens={num_worst_tokens}; expected >= 0")
        if isinstance(handle, _PaddedHandle):
            worst, handle = handle.num_worst_tokens, handle.native
        if worst > 0:
            result = self.dispatch(x, handle, num_tokens_per_rank, num_tokens_per_rdma_rank, is_token_in_rank,
                                   num_tokens_per_expert, topk_idx, topk_weights, expert_alignment, **options)
            return self._padded(result, worst)
        if _is_cuda(x):
            return self._cuda_dispatch(x, handle, num_tokens_per_rank, is_token_in_rank, num_tokens_per_expert,
                                       topk_idx, topk_weights, expert_alignment)
        scales = scales_in = None
        if isinstance(x, tuple):
            x, scales_in = x
            scales = _matrix(scales_in, np.float32, "scales")
        rows, bf16_typed = _rows(x, "x")
        if handle is None:
            if topk_idx is None or num_tokens_per_expert is None:
                raise ValueError("dispatch without a handle needs topk_idx and num_tokens_per_expert")
            num_experts = int(np.asarray(num_tokens_per_expert).shape[0])
        else:
            num_experts = 0
        in_rank = _matrix(is_token_in_rank, np.bool_, "is_token_in_rank")
        per_rank = None if num_tokens_per_rank is None else np.ascontiguousarray(num_tokens_per_rank, dtype=np.int32)
        recv_x, recv_scales, recv_idx, recv_weights, counts, new_handle = self._cpu_buffer().dispatch(
            rows, scales, _matrix(topk_idx, np.int64, "topk_idx") if handle is None else None,
            _matrix(topk_weights, np.float32, "topk_weights") if handle is None else None, num_experts, per_rank,
            in_rank, handle, int(expert_alignment))
        recv_x = _as_input_type(_restore(recv_x, bf16_typed), x)
        if recv_scales is not None:
            recv_x = (recv_x, _as_input_type(recv_scales, scales_in))
        if handle is not None:
            return recv_x, None, None, None, handle
        return (recv_x, _as_input_type(recv_idx, topk_idx), _as_input_type(recv_weights, topk_weights), list(counts),
                new_handle)

    def _padded(self, result: tuple, worst: int) -> tuple:
        """A dispatch's outputs padded to `worst` rows (num_worst_tokens), with a handle that remembers it."""
        recv_x, recv_idx, recv_weights, _, handle = result
        num_recv = handle.num_recv_tokens
        if num_recv > worst:
            raise ValueError(f"this rank received {num_recv} tokens, more than num_worst_tokens={worst}")
        if isinstance(recv_x, tuple):
            recv_x = tuple(_pad_rows(part, worst, 0) for part in recv_x)
        else:
            recv_x = _pad_rows(recv_x, worst, 0)
        if recv_idx is None:  # a cached dispatch
            return recv_x, None, None, None, _PaddedHandle(handle, worst)
        recv_idx = _pad_rows(recv_idx, worst, -1)
        recv_weights = _pad_rows(recv_weights, worst, 0)
        return recv_x, recv_idx, recv_weights, [], _PaddedHandle(handle, worst)

    def combine(self, x: Any, handle: Any, topk_weights: Any = None, bias: Any = None, **options: Any):
        """(combined_x, combined_topk_weights): per original token, the unweighted sum over the ranks that
        received it, in rank order with float32 accumulation. ``bias`` (DeepEP's): None, one (num_tokens, hidden)
        tensor in x's dtype, or a tuple of two (either may be None), added to each token's float32 sum first (0 +
        bias0 + bias1, then the ranks' rows), rounded once with it."""
        _check_deepep_options("combine", options)
        biases = _unpack_bias(bias)
        if isinstance(handle, _PaddedHandle):
            x = _unpad(handle, x, "x")
            if topk_weights is not None:
                topk_weights = _unpad(handle, topk_weights, "topk_weights")
            handle = handle.native
        if _is_cuda(x):
            return self._cuda_combine(x, handle, topk_weights, biases)
        rows, bf16_typed = _rows(x, "x")
        bias_rows = [None if b is None else _rows(b, "bias")[0] for b in biases]
        for b in bias_rows:  # checked before the collective starts: a refused bias leaves the group usable
            if b is not None and (b.dtype != rows.dtype or b.shape != (handle.num_tokens, rows.shape[1])):
                raise ValueError(f"bias is {b.dtype} {b.shape}; expected x's dtype {rows.dtype} and (num_tokens, hidden) "
                                 f"= {(handle.num_tokens, rows.shape[1])}")
        combined_x, combined_weights = self._cpu_buffer().combine(rows, handle,
                                                            _matrix(topk_weights, np.float32, "topk_weights"),
                                                            *bias_rows)
        return (_as_input_type(_restore(combined_x, bf16_typed), x),
                _as_input_type(combined_weights, topk_weights))

    def low_latency_dispatch(
        self,
        x: Any,
        topk_idx: Any,
        num_max_dispatch_tokens_per_rank: int,
        num_experts: int,
        cumulative_local_expert_recv_stats: Any = None,
        dispatch_wait_recv_cost_stats: Any = None,
        use_fp8: bool = True,
        round_scale: bool = False,
        use_ue8m0: bool = False,
        async_finish: bool = False,
        return_recv_hook: bool = False,
        **options: Any,
    ):
        """(recv_x, recv_count, handle, event, hook). recv_x is [num_local_experts,
        num_max_dispatch_tokens_per_rank * num_ranks, hidden] (a tuple (x_fp8, scales) with use_fp8).
        With return_recv_hook the call returns after sending; the outputs are filled by ``hook()``. ``round_scale``
        (DeepEP's, with use_fp8): each scale is the power of two at or above amax / 448 (2^ceil(log2)), so a code
        times its scale is exact; ``use_ue8m0`` (scales packed as exponents) is refused.
        ``cumulative_local_expert_recv_stats`` (int32, (num_local_experts,), on x's device), as DeepEP's: each
        expert's received token count is added to it when the receive completes (load statistics, e.g. for
        eplb). The arguments are DeepEP's, in its order."""
        _check_deepep_options("low_latency_dispatch", dict(
            options, dispatch_wait_recv_cost_stats=dispatch_wait_recv_cost_stats, use_ue8m0=use_ue8m0,
            async_finish=async_finish))
        stats = cumulative_local_expert_recv_stats
        if stats is not None:
            _check_recv_stats(stats, int(num_experts) // self.group_size, x)
        if _is_cuda(x):
            return self._cuda_low_latency_dispatch(x, topk_idx, int(num_max_dispatch_tokens_per_rank),
                                                   int(num_experts), bool(use_fp8), bool(return_recv_hook), stats,
                                                   bool(round_scale))
        rows, bf16_typed = _rows(x, "x")
        topk = _matrix(topk_idx, np.int64, "topk_idx")
        self._cpu_buffer().low_latency_dispatch_send(rows, topk, int(num_max_dispatch_tokens_per_rank), int(num_experts),
                                               bool(use_fp8), bool(round_scale))
        num_local = int(num_experts) // self.group_size
        capacity = int(num_max_dispatch_tokens_per_rank) * self.group_size
        hidden = rows.shape[1]
        recv_x = np.zeros((num_local, capacity, hidden), dtype=np.uint8 if use_fp8 else rows.dtype)
        recv_scales = np.zeros((num_local, capacity, hidden // 128), dtype=np.float32) if use_fp8 else None
        recv_count = np.zeros((num_local,), dtype=np.int32)
        handle = _LowLatencyHandle(rows.shape[0], hidden, int(num_experts), int(num_max_dispatch_tokens_per_rank))
        handle.torch = _is_torch_tensor(x)

        def hook() -> None:
            received_x, received_scales, count, native = self._native.low_latency_dispatch_receive()
            np.copyto(recv_x, received_x)
            if recv_scales is not None:
                np.copyto(recv_scales, received_scales)
            np.copyto(recv_count, count)
            handle.native = native
            if stats is not None:
                if _is_torch_tensor(stats):
                    import torch

                    stats.add_(torch.from_numpy(recv_count))
                else:
                    np.add(stats, recv_count, out=stats)

        if not return_recv_hook:
            hook()
        # Tensors share the arrays the hook fills (no dtype conversion, which would copy).
        out_x = _as_input_type(_restore(recv_x, bf16_typed and not use_fp8), x, convert=False)
        out_scales = _as_input_type(recv_scales, x, convert=False)
        return ((out_x, out_scales) if use_fp8 else out_x), _as_input_type(recv_count, x, convert=False), handle, \
            EventOverlap(), (hook if return_recv_hook else _no_op)

    def _combine_buffer_key(self, handle: Any) -> tuple:
        if not isinstance(handle, _LowLatencyHandle):
            raise ValueError(f"handle is {type(handle).__name__}; expected a low_latency_dispatch handle")
        shape = (handle.num_experts // self.group_size, handle.max_tokens * self.group_size, handle.hidden)
        return shape, handle.cuda, str(handle.device), handle.torch

    def get_next_low_latency_combine_buffer(self, handle: Any) -> Any:
        """DeepEP's: the bfloat16 array (num_local_experts, num_max_dispatch_tokens_per_rank * num_ranks, hidden) that
        ``low_latency_combine(..., zero_copy=True)`` reads the expert outputs from: write them there, then combine.
        A torch tensor on x's device for CUDA and torch dispatches, else uint16 bfloat16 bits (numpy). One array per
        Buffer, kept while the shape stays the same. Unlike DeepEP's, it is not the communication buffer itself: the
        combine still copies the rows out of it, so zero_copy gives DeepEP's results, not its saved copy."""
        key = self._combine_buffer_key(handle)
        if self._combine_buffer is None or self._combine_buffer[0] != key:
            shape = key[0]
            if handle.cuda or handle.torch:
                import torch

                array = torch.zeros(shape, dtype=torch.bfloat16, device=handle.device if handle.cuda else "cpu")
            else:
                array = np.zeros(shape, dtype=np.uint16)
            self._combine_buffer = (key, array)
        return self._combine_buffer[1]

    def low_latency_combine(
        self,
        x: Any,
        topk_idx: Any,
        topk_weights: Any,
        handle: _LowLatencyHandle,
        use_logfmt: bool = False,
        zero_copy: bool = False,
        async_finish: bool = False,
        return_recv_hook: bool = False,
        out: Any = None,
        combine_wait_recv_cost_stats: Any = None,
        **options: Any,
    ):
        """(combined_x [num_tokens, hidden], event, hook): per token, the sum over its top-k experts of
        topk_weight * expert row, float32 accumulation, in x's dtype. ``out`` (DeepEP's): a (num_tokens, hidden)
        array or tensor of x's type, dtype and device that receives the result (in ``hook()`` with
        return_recv_hook) and is returned as combined_x. The arguments are DeepEP's, in its order."""
        _check_deepep_options("low_latency_combine", dict(
            options, use_logfmt=use_logfmt, async_finish=async_finish,
            combine_wait_recv_cost_stats=combine_wait_recv_cost_stats))
        if zero_copy:
            key = self._combine_buffer_key(handle)
            if self._combine_buffer is None or self._combine_buffer[0] != key:
                raise ValueError("zero_copy=True reads the expert outputs from get_next_low_latency_combine_buffer("
                                 "handle), which was not called for a dispatch of this shape")
            x = self._combine_buffer[1]
        if _is_cuda(x):
            return self._cuda_low_latency_combine(x, topk_idx, topk_weights, handle, bool(return_recv_hook), out)
        if handle.native is None:
            raise ValueError("the handle's low_latency_dispatch has not received yet (call its hook first)")
        rows, bf16_typed = _rows(x, "x")
        if rows.ndim != 3:
            raise ValueError(f"x has shape {rows.shape}; expected (num_local_experts, max_tokens * num_ranks, hidden)")
        expected_shape = (handle.num_tokens, rows.shape[2])
        if out is not None:
            same_kind = (_is_torch_tensor(out) and _is_torch_tensor(x) and out.dtype == x.dtype and not out.is_cuda) or \
                (isinstance(out, np.ndarray) and not _is_torch_tensor(x) and out.dtype == np.asarray(x).dtype)
            if not same_kind or tuple(out.shape) != expected_shape:
                raise ValueError(f"out is {_describe_tensor(out)}; expected {expected_shape} of x's type and dtype")
        self._cpu_buffer().low_latency_combine_send(np.ascontiguousarray(rows.reshape(-1, rows.shape[2])),
                                              _matrix(topk_idx, np.int64, "topk_idx"),
                                              _matrix(topk_weights, np.float32, "topk_weights"), handle.native)
        combined = np.zeros(expected_shape, dtype=rows.dtype)
        result = _as_input_type(_restore(combined, bf16_typed), x, convert=False)

        def hook() -> None:
            np.copyto(combined, self._native.low_latency_combine_receive())
            if out is not None:
                if _is_torch_tensor(out):
                    out.copy_(result)
                else:
                    np.copyto(out, result)

        if not return_recv_hook:
            hook()
        return (result if out is None else out), EventOverlap(), (hook if return_recv_hook else _no_op)

    # -------------------------------------------------------------------------------------------------
    # CUDA backend: torch CUDA tensors in and out, work on the current stream.

    def _cuda_layout(self, topk_idx: Any, num_experts: int):
        import torch

        num_ranks = self.group_size
        if num_experts < 1 or num_experts % num_ranks:
            raise ValueError(f"num_experts={num_experts} must be a positive multiple of num_ranks={num_ranks}")
        topk = topk_idx.long()
        if topk.dim() != 2:
            raise ValueError(f"topk_idx has shape {tuple(topk.shape)}; expected 2-D")
        if topk.numel() and bool(((topk < -1) | (topk >= num_experts)).any()):
            raise ValueError(f"topk_idx has entries outside [0, {num_experts}) other than -1")
        valid = topk >= 0
        owner = torch.where(valid, topk // (num_experts // num_ranks), torch.full_like(topk, -1))
        ranks = torch.arange(num_ranks, device=topk.device)
        is_token_in_rank = (owner.unsqueeze(2) == ranks).any(dim=1)
        num_tokens_per_rank = is_token_in_rank.sum(dim=0, dtype=torch.int32)
        num_tokens_per_expert = torch.bincount(topk[valid], minlength=num_experts).to(torch.int32)
        return num_tokens_per_rank, None, num_tokens_per_expert, is_token_in_rank

    def _cuda_dispatch(self, x, handle, num_tokens_per_rank, is_token_in_rank, num_tokens_per_expert, topk_idx,
                       topk_weights, expert_alignment):
        import torch

        native = self._cuda_buffer()
        scales = None
        if isinstance(x, tuple):
            x, scales = x
            scales = scales.float().contiguous()
        if x.dim() != 2:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (num_tokens, hidden)")
        if handle is None:
            if topk_idx is None or num_tokens_per_expert is None:
                raise ValueError("dispatch without a handle needs topk_idx and num_tokens_per_expert")
            num_experts = int(num_tokens_per_expert.shape[0])
            topk_idx = topk_idx.long().contiguous()
            topk_weights = None if topk_weights is None else topk_weights.float().contiguous()
            per_rank = None if num_tokens_per_rank is None else num_tokens_per_rank.to(torch.int32).contiguous()
            in_rank = None if is_token_in_rank is None else is_token_in_rank.to(torch.bool).contiguous().view(
                torch.uint8)
        else:
            num_experts, topk_idx, topk_weights, per_rank, in_rank = 0, None, None, None, None
        stream = _stream()
        num_recv, counts, new_handle = native.dispatch_send(_cuda_view(x, "x"), scales, topk_idx, topk_weights,
                                                            num_experts, per_rank, in_rank, handle,
                                                            int(expert_alignment), stream)
        hidden = x.shape[1]
        recv_x = torch.empty((num_recv, hidden), dtype=x.dtype, device=x.device)
        recv_scales = None if scales is None else torch.empty((num_recv, hidden // 128), dtype=torch.float32,
                                                              device=x.device)
        recv_idx = recv_weights = None
        if handle is None:
            num_topk = topk_idx.shape[1]
            recv_idx = torch.empty((num_recv, num_topk), dtype=torch.int64, device=x.device)
            recv_weights = torch.empty((num_recv, num_topk), dtype=torch.float32, device=x.device)
        native.dispatch_receive(_cuda_view(recv_x, "recv_x"), recv_scales, recv_idx, recv_weights, stream)
        out_x = recv_x if recv_scales is None else (recv_x, recv_scales)
        if handle is not None:
            return out_x, None, None, None, handle
        return out_x, recv_idx, recv_weights, list(counts), new_handle

    def _cuda_combine(self, x, handle, topk_weights, biases):
        import torch

        native = self._cuda_buffer()
        if x.dim() != 2:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (num_recv_tokens, hidden)")
        bias_views = []
        for b in biases:  # checked before the collective starts, as on the CPU
            expected = (handle.num_tokens, x.shape[1])
            if b is not None and not (_is_torch_tensor(b) and b.device == x.device and b.dtype == x.dtype
                                      and tuple(b.shape) == expected):
                raise ValueError(f"bias is {_describe_tensor(b)}; expected a {x.dtype} tensor of shape {expected} on "
                                 f"{x.device}")
            bias_views.append(None if b is None else _cuda_view(b, "bias"))
        weights = None if topk_weights is None else topk_weights.float().contiguous()
        combined = torch.empty((handle.num_tokens, x.shape[1]), dtype=x.dtype, device=x.device)
        combined_weights = None if weights is None else torch.empty((handle.num_tokens, handle.num_topk),
                                                                    dtype=torch.float32, device=x.device)
        native.combine(_cuda_view(x, "x"), handle, weights, _cuda_view(combined, "combined_x"), combined_weights,
                       _stream(), *bias_views)
        return combined, combined_weights

    def _cuda_low_latency_dispatch(self, x, topk_idx, max_tokens, num_experts, use_fp8, return_recv_hook, stats,
                                   round_scale):
        import torch

        native = self._cuda_buffer()
        if x.dim() != 2:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (num_tokens, hidden)")
        x_view = x.contiguous()
        topk = topk_idx.long().contiguous()
        if topk.dim() != 2 or topk.shape[0] != x.shape[0] or topk.device != x.device:
            raise ValueError("topk_idx must be int64 (num_tokens, num_topk) with x's number of rows, on x's device")
        # Raw pointers: the shapes and dtypes are checked here (a DLPack conversion per tensor would cost
        # more host time than the kernels).
        native.low_latency_dispatch_send_ptr(x_view.data_ptr(), _float_code(x_view, "x"), x.shape[0], x.shape[1],
                                             topk.data_ptr(), topk.shape[1], max_tokens, num_experts, use_fp8,
                                             _stream(), round_scale)
        num_local = num_experts // self.group_size
        capacity = max_tokens * self.group_size
        hidden = x.shape[1]
        recv_dtype = torch.float8_e4m3fn if use_fp8 else x.dtype
        recv_x = torch.empty((num_local, capacity, hidden), dtype=recv_dtype, device=x.device)
        recv_scales = torch.empty((num_local, capacity, hidden // 128), dtype=torch.float32,
                                  device=x.device) if use_fp8 else None
        recv_count = torch.empty((num_local,), dtype=torch.int32, device=x.device)
        handle = _LowLatencyHandle(x.shape[0], hidden, num_experts, max_tokens)
        handle.cuda = True
        handle.device = x.device
        event = _record_event()
        keep = (x_view, topk)  # the send kernels read these asynchronously

        def hook() -> None:
            nonlocal keep
            scales_ptr = 0 if recv_scales is None else recv_scales.data_ptr()
            native.low_latency_dispatch_receive_ptr(recv_x.data_ptr(), scales_ptr, recv_count.data_ptr(), _stream())
            handle.native = True
            keep = None
            if stats is not None:
                stats.add_(recv_count)  # on the current stream, after the receive

        if not return_recv_hook:
            hook()
        return ((recv_x, recv_scales) if use_fp8 else recv_x), recv_count, handle, event, (
            hook if return_recv_hook else _no_op)

    def _cuda_low_latency_combine(self, x, topk_idx, topk_weights, handle, return_recv_hook, out):
        import torch

        native = self._cuda_buffer()
        if not getattr(handle, "cuda", False) or handle.native is None:
            raise ValueError("the handle is not from a received CUDA low_latency_dispatch (call its hook first)")
        if x.dim() != 3:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (num_local_experts, max_tokens * num_ranks, "
                             "hidden)")
        x_view = x.contiguous()
        topk = topk_idx.long().contiguous()
        weights = topk_weights.float().contiguous()
        if topk.shape != weights.shape or topk.device != x.device or weights.device != x.device:
            raise ValueError("topk_idx must be int64 and topk_weights float32 of the same shape, on x's device")
        native.low_latency_combine_send_ptr(x_view.data_ptr(), _float_code(x_view, "x"), x.shape[0] * x.shape[1],
                                            x.shape[2], topk.data_ptr(), weights.data_ptr(), _stream())
        if out is not None:
            if not (_is_torch_tensor(out) and out.device == x.device and out.dtype == x.dtype
                    and tuple(out.shape) == (handle.num_tokens, x.shape[2]) and out.is_contiguous()):
                raise ValueError(f"out is {_describe_tensor(out)}; expected a contiguous {x.dtype} tensor of shape "
                                 f"{(handle.num_tokens, x.shape[2])} on {x.device}")
            combined = out
        else:
            combined = torch.empty((handle.num_tokens, x.shape[2]), dtype=x.dtype, device=x.device)
        event = _record_event()
        keep = (x_view, topk, weights)

        def hook() -> None:
            nonlocal keep
            native.low_latency_combine_receive_ptr(combined.data_ptr(), _stream())
            keep = None

        if not return_recv_hook:
            hook()
        return combined, event, (hook if return_recv_hook else _no_op)


def _no_op() -> None:
    return None
