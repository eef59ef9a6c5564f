"""Benchmark of fireflyer.eplb (C++) against the numpy transcription of the anchor (eplb_numpy.py).

DeepSeek-V3 shape: 58 MoE layers x 256 routed experts in 8 groups; 288 and 320 physical experts; 4 and
18 nodes of 8 GPUs (32 and 144 GPUs). Loads are Zipf-like and seeded: per layer, Zipf(s) weights with s
drawn from [1.1, 1.3], times the layer's routed-token count, in a random order over the experts.

Prints one JSON line per case and writes everything, with the device and date, to
bench/results/eplb_cpu.json. Usage: PYTHONPATH=python python3 bench/eplb/bench_eplb.py [--repeats N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(REPO_ROOT / "python"))
sys.path.insert(0, str(HERE))

import eplb_numpy  # noqa: E402
from fireflyer import cpu_model, eplb  # noqa: E402

NUM_LAYERS = 58
NUM_EXPERTS = 256
NUM_GROUPS = 8
GPUS_PER_NODE = 8
TOKENS_PER_LAYER = 8 * 65536  # top-8 routing of a 64k-token batch


def zipf_loads(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    loads = np.empty((NUM_LAYERS, NUM_EXPERTS), dtype=np.float64)
    ranks = np.arange(1, NUM_EXPERTS + 1, dtype=np.float64)
    for layer in range(NUM_LAYERS):
        exponent = rng.uniform(1.1, 1.3)
        share = ranks**-exponent
        share /= share.sum()
        loads[layer, rng.permutation(NUM_EXPERTS)] = np.round(share * TOKENS_PER_LAYER)
    return loads


def median_ms(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        function()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=51, help="repeats of the C++ call (median)")
    parser.add_argument("--baseline-repeats", type=int, default=5, help="repeats of the numpy baseline (median)")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "eplb_cpu.json"))
    args = parser.parse_args()

    weight = zipf_loads(args.seed)
    cases, rejected = [], []
    for num_replicas in (288, 320):
        for num_nodes in (4, 18):
            num_gpus = num_nodes * GPUS_PER_NODE
            name = f"{num_replicas}r_{num_nodes}n_{num_gpus}g"
            config = (num_replicas, NUM_GROUPS, num_nodes, num_gpus)
            try:
                eplb.rebalance_experts(weight, *config)
            except ValueError as error:
                record = {"case": name, "shape": [NUM_LAYERS, NUM_EXPERTS], "num_replicas": num_replicas,
                          "num_nodes": num_nodes, "num_gpus": num_gpus, "rejected": str(error)}
                print(json.dumps(record), flush=True)
                rejected.append(record)
                continue
            # Same answer as the baseline before timing anything.
            ours = eplb.rebalance_experts(weight, *config)
            baseline = eplb_numpy.rebalance_experts(weight, *config)
            assert all(np.array_equal(a, b) for a, b in zip(ours, baseline)), f"{name}: C++ differs from numpy"
            ours_ms = median_ms(lambda: eplb.rebalance_experts(weight, *config), args.repeats)
            baseline_ms = median_ms(lambda: eplb_numpy.rebalance_experts(weight, *config), args.baseline_repeats)
            refine_ms = median_ms(lambda: eplb.rebalance_experts(weight, *config, policy="refine"), 5)
            *_, stats = eplb.rebalance_experts(weight, *config, policy="refine", return_stats=True)
            record = {
                "case": name,
                "shape": [NUM_LAYERS, NUM_EXPERTS],
                "num_replicas": num_replicas,
                "num_groups": NUM_GROUPS,
                "num_nodes": num_nodes,
                "num_gpus": num_gpus,
                "mode": "hierarchical" if stats["hierarchical"] else "global",
                "ours_ms": round(ours_ms, 4),
                "baseline_ms": round(baseline_ms, 2),
                "speedup": round(baseline_ms / ours_ms, 1),
                "anchor_imbalance": round(stats["anchor_imbalance"], 4),
                "refine_imbalance": round(stats["refined_imbalance"], 4),
                "refine_ms": round(refine_ms, 3),
            }
            print(json.dumps(record), flush=True)
            cases.append(record)

    result = {
        "benchmark": "eplb rebalance_experts, C++ (fireflyer.eplb) vs numpy transcription of the anchor",
        "device": f"{cpu_model()} (CPU)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "loads": f"Zipf s~U[1.1,1.3] x {TOKENS_PER_LAYER} tokens per layer, random expert order, seed {args.seed}",
        "timing": f"median of {args.repeats} (ours) / {args.baseline_repeats} (baseline) / 5 (refine) runs, "
                  "time.perf_counter_ns around the Python call",
        "cases": cases,
        "rejected": rejected,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
