"""Expert-parallel load balancer (component ``eplb``), the counterpart of DeepSeek EPLB.

::

    from fireflyer import eplb
    phy2log, log2phy, logcnt = eplb.rebalance_experts(weight, num_replicas=16, num_groups=4,
                                                      num_nodes=2, num_gpus=8)

``weight`` holds the load of every expert of every MoE layer, shape ``(layers, experts)``: a numpy
array, a (nested) list or a torch tensor, float or integer. Loads are converted to float32 first, like
the anchor's ``weight.float()``, and every decision is taken in float32, so the results equal the
anchor's. Outputs are int64 numpy arrays (torch tensors when ``weight`` is one):

- ``phy2log`` ``(layers, num_replicas)``: the logical expert of each physical slot; slots are
  GPU-major (slot ``s`` lives on GPU ``s // (num_replicas // num_gpus)``);
- ``log2phy`` ``(layers, experts, max_replicas)``: the slots of each expert, padded with -1;
- ``logcnt`` ``(layers, experts)``: the number of replicas of each expert (>= 1).

``policy="refine"`` starts from the anchor's placement and lowers the largest GPU load by a bounded,
deterministic local search; it is never worse than the anchor (see docs/eplb.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fireflyer import _C

__all__ = ["rebalance_experts", "gpu_loads", "imbalance"]

_POLICIES = ("anchor", "refine")


def _is_torch_tensor(value: Any) -> bool:
    # Checked by type name so that torch is imported only when the caller already uses it.
    return type(value).__module__.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter")


def _as_float32_matrix(weight: Any) -> np.ndarray:
    """weight as a C-contiguous float32 (layers, experts) numpy array; ValueError if it cannot be one."""
    if _is_torch_tensor(weight):
        import torch  # noqa: F401  (lazily: only when the input is a tensor)

        array = weight.detach().cpu().float().contiguous().numpy()
    else:
        try:
            array = np.asarray(weight)
        except ValueError as error:  # ragged nested lists
            raise ValueError(f"weight must be a (layers, experts) matrix of loads: {error}") from None
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"weight has dtype {array.dtype}; expected integer or floating-point loads")
    if array.ndim != 2:
        raise ValueError(
            f"weight has shape {tuple(array.shape)} ({array.ndim}-D); expected 2-D (layers, experts), "
            "e.g. [[...]] for a single layer"
        )
    if array.dtype == np.float64 or array.dtype.kind in "iu":
        # Name a bad load before the float32 conversion turns it into something else (1e39 -> inf).
        bad = ~np.isfinite(array) | (array < 0) if array.dtype.kind == "f" else array < 0
        if bad.any():
            layer, expert = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"load at layer {layer}, expert {expert} is {array[layer, expert]} "
                "(loads must be finite and non-negative)"
            )
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(array, dtype=np.float32)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} must be an integer")
    return int(value)


def _index_matrix(name: str, value: Any) -> np.ndarray:
    if _is_torch_tensor(value):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} has shape {tuple(array.shape)} and dtype {array.dtype}; expected a 2-D integer array")
    return np.ascontiguousarray(array, dtype=np.int64)


def rebalance_experts(
    weight: Any,
    num_replicas: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
    *,
    policy: str = "anchor",
    return_stats: bool = False,
):
    """Places ``num_replicas`` physical experts per layer on ``num_gpus`` GPUs of ``num_nodes`` nodes.

    Hierarchical when ``num_groups`` is a multiple of ``num_nodes`` (groups packed onto nodes, replicas
    within nodes), global otherwise, as the anchor. Returns ``(phy2log, log2phy, logcnt)``, plus a stats
    dict when ``return_stats``: ``anchor_imbalance`` and ``refined_imbalance`` (mean over layers of max
    GPU load / mean GPU load) and their ``*_per_layer`` arrays. Raises ValueError naming the bad value.
    """
    if policy not in _POLICIES:
        raise ValueError(f"policy={policy!r} is not known; expected 'anchor' or 'refine'")
    counts = [
        _check_count(name, value)
        for name, value in (
            ("num_replicas", num_replicas),
            ("num_groups", num_groups),
            ("num_nodes", num_nodes),
            ("num_gpus", num_gpus),
        )
    ]
    array = _as_float32_matrix(weight)
    result = _C.eplb.rebalance_experts(array, *counts, policy, bool(return_stats))
    if _is_torch_tensor(weight):
        import torch

        tensors = tuple(torch.from_numpy(output).to(weight.device) for output in result[:3])
        return tensors + tuple(result[3:])
    return result


def gpu_loads(weight: Any, phy2log: Any, logcnt: Any, num_gpus: int) -> np.ndarray:
    """(layers, num_gpus) float64 loads of a placement: each expert's load split evenly over its replicas."""
    array = _as_float32_matrix(weight)
    return _C.eplb.gpu_loads(
        array, _index_matrix("phy2log", phy2log), _index_matrix("logcnt", logcnt), _check_count("num_gpus", num_gpus)
    )


def imbalance(weight: Any, phy2log: Any, logcnt: Any, num_gpus: int, *, per_layer: bool = False):
    """max GPU load / mean GPU load: the mean over layers (a float), or per layer (an array).

    A layer without load counts as perfectly balanced (1.0).
    """
    loads = gpu_loads(weight, phy2log, logcnt, num_gpus)
    totals = loads.sum(axis=1)
    means = totals / loads.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(totals > 0, loads.max(axis=1) / np.where(means > 0, means, 1.0), 1.0)
    return ratios if per_layer else float(ratios.mean())
