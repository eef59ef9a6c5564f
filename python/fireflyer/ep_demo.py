"""The demo's MoE layer over expert parallelism: 4 CPU processes, each holding 4 of 16 experts.

Each rank routes its tokens (top-2 of 16), dispatches them with fireflyer.ep, applies its local experts
(weighted by the routing weights), and combines the results back; the output is checked against the same
layer computed in one process. Run by the demo as

    python -m fireflyer.ep_demo --group NAME --rank R --num-ranks 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

NUM_EXPERTS = 16
NUM_TOPK = 2
HIDDEN = 256
TOKENS_PER_RANK = 128


def expert_weights() -> np.ndarray:
    """Every rank derives the same expert matrices (num_experts, hidden, hidden) from one seed."""
    rng = np.random.default_rng(42)
    return (rng.standard_normal((NUM_EXPERTS, HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)


def rank_inputs(rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens, top-k expert ids and routing weights of one rank (softmax over the top-k gate scores)."""
    rng = np.random.default_rng(1000 + rank)
    x = rng.standard_normal((TOKENS_PER_RANK, HIDDEN)).astype(np.float32)
    gates = rng.standard_normal((TOKENS_PER_RANK, NUM_EXPERTS)).astype(np.float32)
    topk = np.argsort(-gates, axis=1)[:, :NUM_TOPK].astype(np.int64)
    scores = np.take_along_axis(gates, topk, axis=1)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    return x, topk, (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def reference(x: np.ndarray, topk: np.ndarray, weights: np.ndarray, experts: np.ndarray) -> np.ndarray:
    out = np.zeros(x.shape, np.float64)
    for k in range(NUM_TOPK):
        out += weights[:, k : k + 1] * np.einsum("th,thd->td", x, experts[topk[:, k]])
    return out


def run_rank(group: str, rank: int, num_ranks: int, timeout_s: float) -> dict:
    from fireflyer import ep

    experts = expert_weights()
    per_rank = NUM_EXPERTS // num_ranks
    x, topk, weights = rank_inputs(rank)
    buffer = ep.Buffer((group, rank, num_ranks), num_nvl_bytes=32 << 20, timeout_s=timeout_s)
    start = time.perf_counter()
    per_rank_count, _, per_expert, in_rank = buffer.get_dispatch_layout(topk, NUM_EXPERTS)
    recv_x, recv_idx, recv_w, counts, handle = buffer.dispatch(
        x, topk_idx=topk, topk_weights=weights, num_tokens_per_rank=per_rank_count, is_token_in_rank=in_rank,
        num_tokens_per_expert=per_expert)
    # Local experts: each received token, through each of its experts on this rank, weighted.
    expert_out = np.zeros_like(recv_x)
    for local in range(per_rank):
        rows, slots = np.nonzero(recv_idx == local)
        if rows.size:
            expert_out[rows] += recv_w[rows, slots][:, None] * (recv_x[rows] @ experts[rank * per_rank + local])
    combined, _ = buffer.combine(expert_out, handle)
    seconds = time.perf_counter() - start
    expected = reference(x, topk, weights, experts)
    diff = float(1 - 2 * (combined * expected).sum() / max((combined**2 + expected**2).sum(), 1e-300))
    return {"rank": rank, "received_tokens": int(recv_x.shape[0]), "tokens_per_local_expert": counts,
            "calc_diff": diff, "ms": seconds * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--group", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--num-ranks", type=int, default=4)
    parser.add_argument("--timeout-s", type=float, default=30)
    args = parser.parse_args()
    result = run_rank(args.group, args.rank, args.num_ranks, args.timeout_s)
    print(json.dumps(result), flush=True)
    return 0 if result["calc_diff"] < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
