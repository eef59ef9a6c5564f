"""Expert-parallel dispatch and combine (component ``ep``) with DeepEP's v1 ``Buffer`` API.

This is the CPU shared-memory backend: ranks are processes on one machine, one POSIX shared-memory
segment per buffer, the C++ core (``ff::ep::ShmBuffer``) does all the work. It is the reference the
CUDA backend will be tested against. See docs/ep.md.

::

    from fireflyer import ep
    buffer = ep.Buffer(("moe0", rank, num_ranks), num_nvl_bytes=64 << 20)
    per_rank, _, per_expert, in_rank = buffer.get_dispatch_layout(topk_idx, num_experts)
    recv_x, recv_idx, recv_w, counts, handle = buffer.dispatch(
        x, topk_idx=topk_idx, topk_weights=topk_weights, num_tokens_per_rank=per_rank,
        is_token_in_rank=in_rank, num_tokens_per_expert=per_expert)
    combined_x, combined_w = buffer.combine(expert_out, handle, topk_weights=recv_w)

Arrays are numpy: float32, bfloat16 as uint16 bit patterns (or ``ml_dtypes.bfloat16``, or torch CPU
tensors, converted on the way in), FP8 as uint8 e4m3 codes with float32 per-128 scales. Every
collective must be called by every rank in the same order; every wait is bounded by ``timeout_s``
and a dead or silent rank becomes a ``RuntimeError``/``TimeoutError`` naming it, never a hang.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from fireflyer import _C

__all__ = ["Buffer", "EventOverlap"]


class EventOverlap:
    """DeepEP's event wrapper. The CPU backend finishes every call before returning, so there is
    nothing to wait for: ``current_stream_wait()`` does nothing."""

    def current_stream_wait(self) -> None:
        return None

    def __enter__(self) -> "EventOverlap":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter")


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
    """Handle of a low-latency dispatch; filled when its receive half has run."""

    def __init__(self, num_tokens: int, hidden: int, num_experts: int, max_tokens: int) -> None:
        self.num_tokens, self.hidden, self.num_experts, self.max_tokens = num_tokens, hidden, num_experts, max_tokens
        self.native: Any = None


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
    ) -> None:
        name, rank, num_ranks = _resolve_group(group, rank, num_ranks)
        if num_nvl_bytes < 0 or num_rdma_bytes < 0 or num_nvl_bytes + num_rdma_bytes <= 0:
            raise ValueError(f"num_nvl_bytes={num_nvl_bytes} + num_rdma_bytes={num_rdma_bytes} must be positive")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s} must be positive")
        self.low_latency_mode = bool(low_latency_mode)
        self.num_qps_per_rank = int(num_qps_per_rank)
        self._native = _C.ep.ShmBuffer(name, rank, num_ranks, int(num_nvl_bytes + num_rdma_bytes),
                                       max(1, int(timeout_s * 1000)))
        self.rank = rank
        self.group_size = num_ranks

    @staticmethod
    def set_num_sms(new_num_sms: int) -> None:
        """Stored for API compatibility (the CPU backend uses no SMs); must be a positive even number."""
        if isinstance(new_num_sms, bool) or not isinstance(new_num_sms, int) or new_num_sms <= 0 or new_num_sms % 2:
            raise ValueError(f"num_sms={new_num_sms!r} must be a positive even integer")
        Buffer.num_sms = new_num_sms

    @staticmethod
    def get_num_sms() -> int:
        return Buffer.num_sms

    def get_dispatch_layout(self, topk_idx: Any, num_experts: int, **_unused: Any):
        """(num_tokens_per_rank int32, None, num_tokens_per_expert int32, is_token_in_rank bool)."""
        per_rank, per_expert, in_rank = _C.ep.get_dispatch_layout(_matrix(topk_idx, np.int64, "topk_idx"),
                                                                  int(num_experts), self.group_size)
        return per_rank, None, per_expert, in_rank

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
        **_unused: Any,
    ):
        """(recv_x, recv_topk_idx, recv_topk_weights, num_recv_tokens_per_expert_list, handle).

        ``x`` is a matrix or ``(x_fp8 uint8, scales float32 [num_tokens, hidden/128])``; ``recv_x`` has
        the same form. With a ``handle`` (cached dispatch) only data moves and the top-k outputs are None.
        """
        scales = None
        if isinstance(x, tuple):
            x, scales = x
            scales = _matrix(scales, np.float32, "scales")
        rows, bf16_typed = _rows(x, "x")
        if handle is None:
            if topk_idx is None or num_tokens_per_expert is None:
                raise ValueError("dispatch without a handle needs topk_idx and num_tokens_per_expert")
            num_experts = int(np.asarray(num_tokens_per_expert).shape[0])
        else:
            num_experts = 0
        in_rank = _matrix(is_token_in_rank, np.bool_, "is_token_in_rank")
        per_rank = None if num_tokens_per_rank is None else np.ascontiguousarray(num_tokens_per_rank, dtype=np.int32)
        recv_x, recv_scales, recv_idx, recv_weights, counts, new_handle = self._native.dispatch(
            rows, scales, _matrix(topk_idx, np.int64, "topk_idx") if handle is None else None,
            _matrix(topk_weights, np.float32, "topk_weights") if handle is None else None, num_experts, per_rank,
            in_rank, handle, int(expert_alignment))
        recv_x = _restore(recv_x, bf16_typed)
        if recv_scales is not None:
            recv_x = (recv_x, recv_scales)
        if handle is not None:
            return recv_x, None, None, None, handle
        return recv_x, recv_idx, recv_weights, list(counts), new_handle

    def combine(self, x: Any, handle: Any, topk_weights: Any = None, **_unused: Any):
        """(combined_x, combined_topk_weights): per original token, the unweighted sum over the ranks that
        received it, in rank order with float32 accumulation."""
        rows, bf16_typed = _rows(x, "x")
        combined_x, combined_weights = self._native.combine(rows, handle,
                                                            _matrix(topk_weights, np.float32, "topk_weights"))
        return _restore(combined_x, bf16_typed), combined_weights

    def low_latency_dispatch(
        self,
        x: Any,
        topk_idx: Any,
        num_max_dispatch_tokens_per_rank: int,
        num_experts: int,
        use_fp8: bool = True,
        return_recv_hook: bool = False,
        **_unused: Any,
    ):
        """(recv_x, recv_count, handle, event, hook). recv_x is [num_local_experts,
        num_max_dispatch_tokens_per_rank * num_ranks, hidden] (a tuple (x_fp8, scales) with use_fp8).
        With return_recv_hook the call returns after sending; the outputs are filled by ``hook()``."""
        rows, bf16_typed = _rows(x, "x")
        topk = _matrix(topk_idx, np.int64, "topk_idx")
        self._native.low_latency_dispatch_send(rows, topk, int(num_max_dispatch_tokens_per_rank), int(num_experts),
                                               bool(use_fp8))
        num_local = int(num_experts) // self.group_size
        capacity = int(num_max_dispatch_tokens_per_rank) * self.group_size
        hidden = rows.shape[1]
        recv_x = np.zeros((num_local, capacity, hidden), dtype=np.uint8 if use_fp8 else rows.dtype)
        recv_scales = np.zeros((num_local, capacity, hidden // 128), dtype=np.float32) if use_fp8 else None
        recv_count = np.zeros((num_local,), dtype=np.int32)
        handle = _LowLatencyHandle(rows.shape[0], hidden, int(num_experts), int(num_max_dispatch_tokens_per_rank))

        def hook() -> None:
            received_x, received_scales, count, native = self._native.low_latency_dispatch_receive()
            np.copyto(recv_x, received_x)
            if recv_scales is not None:
                np.copyto(recv_scales, received_scales)
            np.copyto(recv_count, count)
            handle.native = native

        if not return_recv_hook:
            hook()
        out_x = _restore(recv_x, bf16_typed and not use_fp8)
        return ((out_x, recv_scales) if use_fp8 else out_x), recv_count, handle, EventOverlap(), (
            hook if return_recv_hook else _no_op)

    def low_latency_combine(
        self,
        x: Any,
        topk_idx: Any,
        topk_weights: Any,
        handle: _LowLatencyHandle,
        return_recv_hook: bool = False,
        **_unused: Any,
    ):
        """(combined_x [num_tokens, hidden], event, hook): per token, the sum over its top-k experts of
        topk_weight * expert row, float32 accumulation, in x's dtype."""
        if handle.native is None:
            raise ValueError("the handle's low_latency_dispatch has not received yet (call its hook first)")
        rows, bf16_typed = _rows(x, "x")
        if rows.ndim != 3:
            raise ValueError(f"x has shape {rows.shape}; expected (num_local_experts, max_tokens * num_ranks, hidden)")
        self._native.low_latency_combine_send(np.ascontiguousarray(rows.reshape(-1, rows.shape[2])),
                                              _matrix(topk_idx, np.int64, "topk_idx"),
                                              _matrix(topk_weights, np.float32, "topk_weights"), handle.native)
        combined = np.zeros((handle.num_tokens, rows.shape[2]), dtype=rows.dtype)

        def hook() -> None:
            np.copyto(combined, self._native.low_latency_combine_receive())

        if not return_recv_hook:
            hook()
        return _restore(combined, bf16_typed), EventOverlap(), (hook if return_recv_hook else _no_op)


def _no_op() -> None:
    return None
