"""A plain Python/numpy transcription of the anchor algorithm (DeepSeek EPLB's rebalance_experts).

It is the baseline of bench_eplb.py and the reference that python/tests/test_eplb.py compares the C++
implementation with. Written from the algorithm's description in docs/eplb.md, in the anchor's style:
vectorised over layers where the anchor uses torch ops (replication, gathers), Python loops where the
anchor loops (packing). Every decision is taken in float32, like the anchor's ``weight.float()``.
"""

from __future__ import annotations

import numpy as np


def balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """weight (rows, items) float32 -> pack_index, rank_in_pack (rows, items) int64.

    Items in descending weight order (ties: lower index) go to the lightest pack with room (ties: lower
    pack index); with one item per pack it is the identity.
    """
    rows, num_items = weight.shape
    assert num_items % num_packs == 0
    items_per_pack = num_items // num_packs
    if items_per_pack == 1:
        index = np.broadcast_to(np.arange(num_items, dtype=np.int64), weight.shape).copy()
        return index, np.zeros_like(index)
    # A stable sort of the negated loads: descending, equal loads in index order.
    order = np.argsort(-weight, axis=-1, kind="stable")
    pack_index = np.full(weight.shape, -1, dtype=np.int64)
    rank_in_pack = np.full(weight.shape, -1, dtype=np.int64)
    for row in range(rows):
        pack_weight = np.zeros(num_packs, dtype=np.float32)
        pack_items = np.zeros(num_packs, dtype=np.int64)
        for item in order[row]:
            candidates = np.where(pack_items < items_per_pack, pack_weight, np.float32(np.inf))
            pack = int(np.argmin(candidates))  # first minimum: the lowest pack index among ties
            pack_index[row, item] = pack
            rank_in_pack[row, item] = pack_items[pack]
            pack_weight[pack] += weight[row, item]  # float32 += float32 stays float32
            pack_items[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: np.ndarray, num_physical: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """weight (rows, logical) float32 -> phy2log, phyrank (rows, physical), logcnt (rows, logical)."""
    rows, num_logical = weight.shape
    assert num_physical >= num_logical
    phy2log = np.zeros((rows, num_physical), dtype=np.int64)
    phy2log[:, :num_logical] = np.arange(num_logical)
    phyrank = np.zeros((rows, num_physical), dtype=np.int64)
    logcnt = np.ones((rows, num_logical), dtype=np.int64)
    row_index = np.arange(rows)
    for slot in range(num_logical, num_physical):
        per_replica = weight / logcnt.astype(np.float32)  # float32 division, as the anchor
        expert = np.argmax(per_replica, axis=-1)  # first maximum: the lowest index among ties
        phy2log[:, slot] = expert
        phyrank[:, slot] = logcnt[row_index, expert]
        logcnt[row_index, expert] += 1
    return phy2log, phyrank, logcnt


def _inverse(permutation: np.ndarray) -> np.ndarray:
    inverse = np.empty_like(permutation)
    np.put_along_axis(inverse, permutation, np.broadcast_to(np.arange(permutation.shape[1]), permutation.shape), axis=1)
    return inverse


def rebalance_hierarchical(
    weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """weight (layers, logical) float32 -> phy2log, phyrank (layers, physical), logcnt (layers, logical)."""
    num_layers, num_logical = weight.shape
    assert num_logical % num_groups == 0 and num_groups % num_nodes == 0
    assert num_gpus % num_nodes == 0 and num_physical % num_gpus == 0
    group_size = num_logical // num_groups
    groups_per_node = num_groups // num_nodes
    physical_per_gpu = num_physical // num_gpus
    logical_per_node = num_logical // num_nodes

    # Step 1: groups onto nodes. Group loads summed sequentially in index order, in float32.
    grouped = weight.reshape(num_layers, num_groups, group_size)
    group_load = grouped[:, :, 0].copy()
    for j in range(1, group_size):
        group_load += grouped[:, :, j]
    group_pack, group_rank = balanced_packing(group_load, num_nodes)
    log2mlog = (
        ((group_pack * groups_per_node + group_rank) * group_size)[:, :, None] + np.arange(group_size)
    ).reshape(num_layers, num_logical)
    mlog2log = _inverse(log2mlog)

    # Step 2: replicas within each node; rows are (layer, node) pairs.
    mlog_weight = np.take_along_axis(weight, mlog2log, axis=1).reshape(-1, logical_per_node)
    phy2mlog, phyrank, mlogcnt = replicate_experts(mlog_weight, num_physical // num_nodes)

    # Step 3: each node's replicas onto its GPUs by load per replica.
    phy_weight = np.take_along_axis(mlog_weight / mlogcnt.astype(np.float32), phy2mlog, axis=1)
    pack_index, rank_in_pack = balanced_packing(phy_weight, num_gpus // num_nodes)
    phy2pphy = pack_index * physical_per_gpu + rank_in_pack
    pphy2phy = _inverse(phy2pphy)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1)
    node_offset = np.arange(0, num_logical, logical_per_node).reshape(1, -1, 1)
    pphy2mlog = (pphy2mlog.reshape(num_layers, num_nodes, -1) + node_offset).reshape(num_layers, -1)
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)
    pphyrank = np.take_along_axis(phyrank, pphy2phy, axis=1).reshape(num_layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(num_layers, -1), log2mlog, axis=1)
    return pphy2log, pphyrank, logcnt


def rebalance_experts(
    weight, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The anchor's entry point: (phy2log, log2phy, logcnt), int64, log2phy padded with -1."""
    weight = np.asarray(weight).astype(np.float32)
    num_layers, num_logical = weight.shape
    if num_groups % num_nodes == 0:
        phy2log, phyrank, logcnt = rebalance_hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    else:
        phy2log, phyrank, logcnt = rebalance_hierarchical(weight, num_replicas, 1, 1, num_gpus)
    max_replicas = int(logcnt.max())
    log2phy = np.full((num_layers, num_logical * max_replicas), -1, dtype=np.int64)
    np.put_along_axis(
        log2phy, phy2log * max_replicas + phyrank, np.broadcast_to(np.arange(num_replicas), phy2log.shape), axis=1
    )
    return phy2log, log2phy.reshape(num_layers, num_logical, max_replicas), logcnt
