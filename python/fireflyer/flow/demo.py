"""The demo's flow job: generate events, aggregate them per user with a hash shuffle, sort, write."""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute below
import pyarrow.parquet as pq

kDemoRows = 200_000
kDemoFiles = 4
kDemoPartitions = 4


def demo_job(data_root: str, num_executors: int = 2, progress: bool = False) -> dict:
    """Generates 200k events in 4 Parquet files, then: read -> repartition(4, hash_by=user_id) ->
    partial_sql (per-user count and sum) -> partial_sort -> write_parquet, on the local executor.
    Returns rows in/out, partitions, seconds, the SVG path, output files and a correctness check."""
    from fireflyer import flow

    input_dir = os.path.join(data_root, "input")
    os.makedirs(input_dir, exist_ok=True)
    rng = np.random.default_rng(7)
    per_file = kDemoRows // kDemoFiles
    expected_total = 0
    for i in range(kDemoFiles):
        path = os.path.join(input_dir, f"events-{i}.parquet")
        # Every column is drawn on every run, so the generator's sequence (and the expected total)
        # is the same whether or not an earlier run already wrote the file.
        users = rng.integers(0, 5000, per_file)
        amounts = rng.integers(1, 1000, per_file)
        categories = rng.integers(0, 16, per_file)
        expected_total += int(amounts.sum())
        if not os.path.exists(path):
            table = pa.table({"user_id": users, "amount": amounts, "category": categories})
            pq.write_table(table, path, compression="zstd")
    start = time.time()
    session = flow.init(data_root=os.path.join(data_root, "work"), num_executors=num_executors, progress=progress)
    events = session.read_parquet(os.path.join(input_dir, "*.parquet"))
    by_user = events.repartition(kDemoPartitions, hash_by="user_id")
    totals = session.partial_sql(
        "select user_id, count(*) as events, sum(amount) as total from {0} group by user_id", by_user)
    ranked = totals.partial_sort("total", descending=True)
    files = ranked.write_parquet(os.path.join(data_root, "output"))
    seconds = time.time() - start
    result = pq.read_table(files)
    svg = session.write_svg(os.path.join(data_root, "flow_job.svg"))
    return {
        "rows_in": kDemoRows,
        "rows_out": result.num_rows,
        "partitions": kDemoPartitions,
        "stages": len(session.stages),
        "tasks_run": session.tasks_run,
        "tasks_reused": session.tasks_reused,
        "seconds": round(seconds, 3),
        "svg": svg,
        "output_files": files,
        "total_matches": int(pa.compute.sum(result["total"]).as_py()) == expected_total,
    }
