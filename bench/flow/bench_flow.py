"""GraySort-style benchmark of fireflyer.flow against DuckDB sorting the same data in one process.

Data: N records of 100 bytes (a 10-byte uniformly random binary key + a 90-byte random binary
payload), written by our own generator as zstd Parquet files with columns ``key`` (binary) and
``payload`` (binary). Random bytes do not compress, so the files are about N x 100 bytes.

Ours (the anchor's two phases): read -> map_batches computes the partition from the key's leading
bits -> repartition(P, by=partition) -> partial_sql ORDER BY key per partition; every intermediate and
output is a Parquet file under data_root. Baseline: DuckDB ``COPY (SELECT * FROM read_parquet(...)
ORDER BY key) TO ...`` in one process on the same disk. Both outputs are validated: record count,
an order-independent checksum over all records equal to the input's, every partition sorted and the
partition boundaries in order.

Prints one JSON line per case and writes bench/results/flow_cpu.json.
Usage: PYTHONPATH=python python3 bench/flow/bench_flow.py [--gb 1] [--executors 1,2,4]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(REPO_ROOT / "python"))

import duckdb  # noqa: E402

from fireflyer import cpu_model, flow  # noqa: E402

kKeyBytes = 10
kPayloadBytes = 90
kRecordBytes = kKeyBytes + kPayloadBytes
# Per-byte weights of the checksum: odd 64-bit constants, fixed so runs are comparable.
kWeights = (np.random.default_rng(12345).integers(1, 2**62, kRecordBytes, dtype=np.uint64) * 2 + 1).astype(np.uint64)


def fixed_binary(matrix: np.ndarray) -> pa.Array:
    rows, width = matrix.shape
    offsets = np.arange(0, rows * width + 1, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(matrix.tobytes())])


def as_matrix(column, width: int) -> np.ndarray:
    """(rows, width) uint8 view of a binary column whose values all have ``width`` bytes."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return np.zeros((0, width), np.uint8)
    _, offsets, data = array.buffers()
    first, last = np.frombuffer(offsets, np.int32)[[array.offset, array.offset + len(array)]]
    return np.frombuffer(data, np.uint8)[first:last].reshape(-1, width)


def generate(directory: pathlib.Path, records: int, files: int, seed: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(files):
        rows = records * (i + 1) // files - records * i // files
        keys = rng.integers(0, 256, (rows, kKeyBytes), dtype=np.uint8)
        payload = rng.integers(0, 256, (rows, kPayloadBytes), dtype=np.uint8)
        table = pa.table({"key": fixed_binary(keys), "payload": fixed_binary(payload)})
        pq.write_table(table, directory / f"input-{i:04d}.parquet", compression="zstd")


def checksum(table: pa.Table) -> tuple[int, int]:
    """Order-independent: (sum, xor) over records of a weighted sum of the record's 100 bytes mod 2^64."""
    total, xor = 0, 0
    step = 1 << 18
    for start in range(0, table.num_rows, step):
        part = table.slice(start, step)
        record = np.concatenate([as_matrix(part.column("key"), kKeyBytes),
                                 as_matrix(part.column("payload"), kPayloadBytes)], axis=1).astype(np.uint64)
        hashes = (record * kWeights).sum(axis=1, dtype=np.uint64)
        hashes ^= hashes >> np.uint64(29)
        total = (total + int(hashes.sum(dtype=np.uint64))) % 2**64
        xor ^= int(np.bitwise_xor.reduce(hashes))
    return total, xor


def files_checksum(files: list[str]) -> tuple[int, int, int]:
    total, xor, rows = 0, 0, 0
    for path in files:
        table = pq.read_table(path)
        s, x = checksum(table)
        total, xor, rows = (total + s) % 2**64, xor ^ x, rows + table.num_rows
    return total, xor, rows


def keys_sorted(keys: np.ndarray) -> bool:
    as_bytes = keys.view(f"S{kKeyBytes}").ravel()  # NOTE: 'S' compares bytes lexicographically, like the SQL ORDER BY
    return bool(np.all(as_bytes[:-1] <= as_bytes[1:]))


def validate(partition_files: list[list[str]]) -> dict:
    """Each partition sorted, boundaries in order; returns count and checksum."""
    previous_last = None
    total, xor, rows = 0, 0, 0
    for files in partition_files:
        table = pa.concat_tables([pq.read_table(f) for f in files])
        keys = as_matrix(table.column("key"), kKeyBytes)
        assert keys_sorted(keys), "a partition is not sorted"
        if len(keys):
            first, last = keys[0].tobytes(), keys[-1].tobytes()
            assert previous_last is None or previous_last <= first, "partition boundaries out of order"
            previous_last = last
        s, x = checksum(table)
        total, xor, rows = (total + s) % 2**64, xor ^ x, rows + table.num_rows
    return {"rows": rows, "sum": total, "xor": xor}


def partition_of(bits: int):
    def add_partition(table: pa.Table) -> pa.Table:
        keys = as_matrix(table.column("key"), kKeyBytes)
        leading = (keys[:, 0].astype(np.int32) << 8) | keys[:, 1]
        return table.append_column("partition", pa.array(leading >> (16 - bits), pa.int32()))

    return add_partition


def run_flow(input_dir: pathlib.Path, root: pathlib.Path, executors: int, partitions: int) -> tuple[float, list]:
    bits = partitions.bit_length() - 1
    session = flow.init(data_root=str(root), num_executors=executors, progress=True, progress_interval_s=5.0)
    session.from_items([{"warm": 1}], 1).map(lambda r: r).count()  # start the workers before timing
    start = time.perf_counter()
    records = session.read_parquet(str(input_dir / "*.parquet"))
    shuffled = records.map_batches(partition_of(bits)).repartition(partitions, by="partition")
    ordered = session.partial_sql("select key, payload from {0} order by key", shuffled)
    result = session._run(ordered.node)  # the files of each sorted partition, in partition order
    seconds = time.perf_counter() - start
    session.write_svg(str(root / "job.svg"))
    return seconds, result.partitions


def run_duckdb(input_dir: pathlib.Path, out: pathlib.Path) -> float:
    con = duckdb.connect(config={"threads": os.cpu_count() or 1})
    start = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM read_parquet('{input_dir}/*.parquet') ORDER BY key) TO '{out}' "
                "(FORMAT parquet, COMPRESSION zstd)")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="data size in GB (10^9 bytes of records)")
    parser.add_argument("--files", type=int, default=8, help="input files")
    parser.add_argument("--partitions", type=int, default=16, help="sort partitions P (a power of two)")
    parser.add_argument("--executors", default="1,2,4")
    parser.add_argument("--dir", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "flow_cpu.json"))
    args = parser.parse_args()
    assert args.partitions & (args.partitions - 1) == 0, "partitions must be a power of two"
    records = int(args.gb * 1e9 / kRecordBytes)
    work = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="ff-flow-bench-"))
    input_dir = work / "input"
    start = time.perf_counter()
    generate(input_dir, records, args.files, args.seed)
    generate_s = time.perf_counter() - start
    input_files = sorted(str(p) for p in input_dir.glob("*.parquet"))
    expected = dict(zip(("sum", "xor", "rows"), files_checksum(input_files)))
    data_gb = records * kRecordBytes / 1e9
    print(json.dumps({"generated_records": records, "gb": data_gb, "seconds": round(generate_s, 2)}), flush=True)

    duck_out = work / "duckdb_sorted.parquet"
    duck_s = run_duckdb(input_dir, duck_out)
    duck_check = validate([[str(duck_out)]])
    assert duck_check == expected, f"DuckDB output differs from input: {duck_check} vs {expected}"
    duck_gb_min = data_gb / (duck_s / 60)
    print(json.dumps({"case": "duckdb_one_process", "seconds": round(duck_s, 2), "gb_per_min": round(duck_gb_min, 2)}),
          flush=True)
    shutil.rmtree(duck_out, ignore_errors=True) if duck_out.is_dir() else duck_out.unlink()

    cases = []
    for executors in (int(x) for x in args.executors.split(",")):
        root = work / f"flow-{executors}"
        shutil.rmtree(root, ignore_errors=True)
        seconds, partitions = run_flow(input_dir, root, executors, args.partitions)
        check = validate(partitions)
        assert check == expected, f"flow output differs from input: {check} vs {expected}"
        gb_min = data_gb / (seconds / 60)
        record = {"case": f"flow_{executors}_executors", "executors": executors, "partitions": args.partitions,
                  "records": records, "gb": round(data_gb, 3), "seconds": round(seconds, 2),
                  "gb_per_min": round(gb_min, 2), "duckdb_gb_per_min": round(duck_gb_min, 2),
                  "ratio_vs_duckdb": round(gb_min / duck_gb_min, 3), "validated": True}
        print(json.dumps(record), flush=True)
        cases.append(record)
        shutil.rmtree(root / "tasks", ignore_errors=True)

    result = {
        "benchmark": "GraySort-style sort of 100-byte records (10-byte random key): fireflyer.flow "
                     "(shuffle by key prefix into P partitions, sort each) vs DuckDB COPY ... ORDER BY in one process",
        "device": f"{cpu_model()} (CPU), {os.cpu_count()} cores",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "duckdb_version": duckdb.__version__, "pyarrow": pa.__version__,
        "data": f"{records} records x {kRecordBytes} B = {data_gb:.2f} GB in {args.files} zstd Parquet files "
                f"(key binary(10), payload binary(90)), uniformly random, seed {args.seed}",
        "disk": f"same directory for both ({work})",
        "timing": "wall time of the sort job from reading the input to the last sorted output file; workers "
                  "started before timing; validation (count, checksum, order) outside the timing",
        "duckdb": {"seconds": round(duck_s, 2), "gb_per_min": round(duck_gb_min, 2), "threads": os.cpu_count()},
        "cases": cases,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
