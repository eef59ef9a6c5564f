"""Worker side of fireflyer.flow: runs one task (read inputs, apply fused operations, write output).

A task is a plain dict (``spec``) so that any executor (a local process pool, Ray) can ship it. Its
output goes to a private temporary directory under ``<data_root>/tmp`` and is renamed, as a whole, to
``<data_root>/tasks/<task_id>``; the manifest inside is written before the rename, so a directory under
``tasks/`` is either absent or complete. That rename is the only file-system operation flow needs
beyond create/read/write/unlink, so it runs on any POSIX directory and on a FUSE mount.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import traceback
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fireflyer.flow.errors import FlowError, FlowInputError, FlowSQLError

MANIFEST = "manifest.json"
COMPRESSION = "zstd"
_IN_NAME = "__flow_in{}"


def task_dir(data_root: str, task_id: str) -> str:
    return os.path.join(data_root, "tasks", task_id)


def load_manifest(data_root: str, task_id: str) -> dict | None:
    """The manifest of a completed task, or None when the task has not completed."""
    path = os.path.join(task_dir(data_root, task_id), MANIFEST)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _duckdb_connect(threads: int):
    import duckdb

    return duckdb.connect(config={"threads": max(1, threads)})


def _to_table(relation) -> pa.Table:
    # duckdb >= 1.4 names it to_arrow_table; older releases fetch_arrow_table.
    if hasattr(relation, "to_arrow_table"):
        return relation.to_arrow_table()
    return relation.fetch_arrow_table()


class _Frame:
    """The current data of a task: either a lazy DuckDB relation (SQL steps chain without copying) or
    an Arrow table (after a Python step)."""

    def __init__(self, con, partition: int, files: list[str]):
        self.con = con
        self.partition = partition
        self.files = files
        self.relation = None
        self.table: pa.Table | None = None
        self._views = 0

    def name(self) -> str:
        """Registers the current data under a fresh name for SQL and returns the name."""
        view = f"__flow_v{self._views}"
        self._views += 1
        if self.relation is not None:
            self.relation.create_view(view)
        else:
            self.con.register(view, self.table)
        return view

    def arrow(self) -> pa.Table:
        if self.table is None:
            try:
                self.table = _to_table(self.relation)
            except Exception as error:  # duckdb errors surface when the relation runs
                raise _sql_error(error, "", self.partition, self.files) from None
            self.relation = None
        return self.table

    def set_table(self, table: pa.Table) -> None:
        self.table, self.relation = table, None


def _sql_error(error: Exception, query: str, partition: int, files: list[str]) -> FlowError:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    message = f"SQL failed: {text}" + (f" in query {query!r}" if query else "")
    return FlowSQLError(message, partition, files)


def _check_files(files: list[str], partition: int) -> None:
    for path in files:
        if not os.path.exists(path):
            raise FlowInputError(f"input file {path} does not exist", partition, [path])


def _read_input(frame: _Frame, source: dict, index: int, lazy: bool) -> str:
    """Makes input ``index`` available to SQL under a name and returns that name."""
    files, fmt, options = source["files"], source["format"], source.get("options", {})
    _check_files(files, frame.partition)
    name = _IN_NAME.format(index)
    con = frame.con
    if fmt == "parquet" and lazy:
        file_list = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
        try:
            con.sql(f"select * from read_parquet({file_list})").create_view(name)
        except Exception as error:
            raise FlowInputError(f"cannot read parquet: {str(error).splitlines()[0]}", frame.partition, files) from None
        return name
    tables = []
    for path in files:
        try:
            if fmt == "parquet":
                table = pq.read_table(path)
            elif fmt == "csv":
                import pyarrow.csv as pacsv

                parse = pacsv.ParseOptions(delimiter=options.get("delimiter", ","))
                table = pacsv.read_csv(path, parse_options=parse)
            elif fmt == "json":
                import pyarrow.json as pajson

                table = pajson.read_json(path)
            else:
                raise FlowInputError(f"unknown input format {fmt!r}", frame.partition, [path])
        except FlowError:
            raise
        except Exception as error:
            raise FlowInputError(f"cannot read {fmt} file: {str(error).splitlines()[0]}", frame.partition, [path]) from None
        if tables and not table.schema.equals(tables[0].schema):
            raise FlowInputError(
                f"schema of {path} ({_schema_text(table.schema)}) differs from that of {files[0]} "
                f"({_schema_text(tables[0].schema)})", frame.partition, [path, files[0]])
        tables.append(table)
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    con.register(name, table)
    frame.set_table(table)
    return name


def _schema_text(schema: pa.Schema) -> str:
    return ", ".join(f"{field.name}: {field.type}" for field in schema)


def _load_function(blob: bytes):
    import cloudpickle

    return cloudpickle.loads(blob)


def _normalize_batch(result) -> pa.Table:
    if isinstance(result, pa.Table):
        return result
    if isinstance(result, pa.RecordBatch):
        return pa.Table.from_batches([result])
    if isinstance(result, dict):
        return pa.table(result)
    if hasattr(result, "to_arrow") and not hasattr(result, "columns"):
        return result.to_arrow()
    try:
        import pandas as pd

        if isinstance(result, pd.DataFrame):
            return pa.Table.from_pandas(result, preserve_index=False)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"map_batches function returned {type(result).__name__}; expected a pyarrow Table/RecordBatch, "
                    "a pandas DataFrame or a dict of columns")


def _from_rows(rows: list, like: pa.Table) -> pa.Table:
    if not rows:
        return like.slice(0, 0) if like.num_rows == 0 else pa.table({})
    return pa.Table.from_pylist(rows)


def _apply(frame: _Frame, op: tuple, input_names: list[str] | None) -> None:
    kind = op[0]
    if kind == "sql":
        query = op[1]
        names = input_names if input_names is not None else [frame.name()]
        try:
            formatted = query.format(*names)
        except (IndexError, KeyError) as error:
            raise FlowSQLError(f"query {query!r} refers to input {{{error}}}, but it has {len(names)} input(s)",
                               frame.partition, frame.files) from None
        try:
            frame.relation, frame.table = frame.con.sql(formatted), None
        except Exception as error:
            raise _sql_error(error, query, frame.partition, frame.files) from None
        if frame.relation is None:
            raise FlowSQLError(f"query {query!r} returns no rows (it must be a SELECT)", frame.partition, frame.files)
        return
    if kind == "limit":
        frame.set_table(frame.arrow().slice(0, op[1]))
        return
    if kind == "shuffle_rows":
        table = frame.arrow()
        order = np.random.default_rng(op[1]).permutation(table.num_rows)
        frame.set_table(table.take(pa.array(order)))
        return
    fn = _load_function(op[1])
    table = frame.arrow()
    if kind == "map_batches":
        batch_rows = op[2]
        if batch_rows is None or table.num_rows <= batch_rows:
            out = [_normalize_batch(fn(table))]
        else:
            out = [_normalize_batch(fn(table.slice(start, batch_rows))) for start in range(0, table.num_rows, batch_rows)]
        frame.set_table(pa.concat_tables(out) if len(out) > 1 else out[0])
        return
    rows = table.to_pylist()
    if kind == "map_fn":
        frame.set_table(_from_rows([fn(row) for row in rows], table))
    elif kind == "filter_fn":
        frame.set_table(table.filter(pa.array([bool(fn(row)) for row in rows], type=pa.bool_())))
    elif kind == "flat_map":
        frame.set_table(_from_rows([item for row in rows for item in fn(row)], table))
    else:
        raise AssertionError(f"unknown operation {kind!r}")


def _bucket_of_rows(frame: _Frame, output: dict, task_seed: int) -> tuple[pa.Table, np.ndarray]:
    n, mode = output["n"], output["mode"]
    if mode == "hash":
        columns = ", ".join('"' + c.replace('"', '""') + '"' for c in output["cols"])
        view = frame.name()
        try:
            relation = frame.con.sql(f"select *, (hash({columns}) % {n})::INTEGER as __flow_bucket from {view}")
            table = _to_table(relation)
        except Exception as error:
            raise _sql_error(error, f"hash_by {output['cols']}", frame.partition, frame.files) from None
        bucket = table.column("__flow_bucket").to_numpy()
        return table.drop_columns(["__flow_bucket"]), bucket
    table = frame.arrow()
    if mode == "by":
        column = output["cols"][0]
        if column not in table.column_names:
            raise FlowInputError(f"repartition by={column!r}: no such column (columns: {table.column_names})",
                                 frame.partition, frame.files)
        bucket = table.column(column).to_numpy(zero_copy_only=False)
        if bucket.dtype.kind not in "iu":
            raise FlowInputError(f"repartition by={column!r}: column has type {table.column(column).type}, "
                                 "expected integers in [0, n)", frame.partition, frame.files)
        if len(bucket) and (bucket.min() < 0 or bucket.max() >= n):
            raise FlowInputError(f"repartition by={column!r}: value {int(bucket.min() if bucket.min() < 0 else bucket.max())} "
                                 f"is outside [0, {n})", frame.partition, frame.files)
        return table, bucket
    if mode == "rows":
        rows = table.num_rows
        return table, (np.arange(rows, dtype=np.int64) * n // max(rows, 1))
    if mode == "random":
        return table, np.random.default_rng(task_seed).integers(0, n, table.num_rows)
    raise AssertionError(f"unknown repartition mode {mode!r}")


def _write_table(table: pa.Table, path: str) -> None:
    pq.write_table(table, path, compression=COMPRESSION)


def _execute(spec: dict, tmp: str) -> dict:
    partition = spec["partition"]
    all_files = [f for source in spec["inputs"] for f in source["files"]]
    con = _duckdb_connect(spec.get("threads", 1))
    frame = _Frame(con, partition, all_files)
    ops = [tuple(op) for op in spec["ops"]]
    # SQL reads parquet lazily (DuckDB scans only what the query needs); Python steps need a table.
    lazy = bool(ops) and ops[0][0] == "sql" or (not ops and spec["output"]["kind"] == "single")
    names = [_read_input(frame, source, i, lazy) for i, source in enumerate(spec["inputs"])]
    if len(names) == 1 and frame.table is None:
        frame.relation = con.sql(f"select * from {names[0]}")
    for index, op in enumerate(ops):
        _apply(frame, op, names if index == 0 and op[0] == "sql" else None)
    output = spec["output"]
    files, rows, sizes = [], [], []
    if output["kind"] == "single":
        path = os.path.join(tmp, "part.parquet")
        if frame.relation is not None:
            try:
                frame.relation.write_parquet(path, compression=COMPRESSION)
            except Exception as error:
                raise _sql_error(error, "", partition, all_files) from None
            count = pq.ParquetFile(path).metadata.num_rows
        else:
            _write_table(frame.table, path)
            count = frame.table.num_rows
        files.append("part.parquet")
        rows.append(count)
    else:
        table, bucket = _bucket_of_rows(frame, output, spec.get("seed", 0))
        n = output["n"]
        bucket = bucket.astype(np.int64, copy=False)
        order = np.argsort(bucket, kind="stable")
        counts = np.bincount(bucket, minlength=n)
        ordered = table.take(pa.array(order)) if len(order) else table
        start = 0
        for b in range(n):
            name = f"bucket-{b:05d}.parquet"
            _write_table(ordered.slice(start, int(counts[b])), os.path.join(tmp, name))
            start += int(counts[b])
            files.append(name)
            rows.append(int(counts[b]))
    sizes = [os.path.getsize(os.path.join(tmp, name)) for name in files]
    return {"files": files, "rows": rows, "bytes": sizes,
            "input_bytes": sum(os.path.getsize(f) for f in all_files if os.path.exists(f))}


def run_task(spec: dict) -> dict:
    """Runs one task and returns {"ok": True, "manifest": ...} or {"ok": False, "error": ...}.

    Never raises for a failure of the task itself: the driver decides about retries. A task whose
    output directory already exists is not run again (resume, or a duplicate attempt that lost).
    """
    data_root, task_id = spec["data_root"], spec["task_id"]
    existing = load_manifest(data_root, task_id)
    if existing is not None:
        return {"ok": True, "manifest": existing, "reused": True}
    start = time.time()
    tmp = os.path.join(data_root, "tmp", f"{task_id}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(tmp)
        result = _execute(spec, tmp)
        manifest = {"task_id": task_id, "kind": spec["kind"], "partition": spec["partition"],
                    "seconds": round(time.time() - start, 4), "pid": os.getpid(), **result}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f)
        final = task_dir(data_root, task_id)
        try:
            os.rename(tmp, final)
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another attempt completed first: keep its output
            manifest = load_manifest(data_root, task_id) or manifest
        return {"ok": True, "manifest": manifest, "reused": False}
    except BaseException as error:  # noqa: BLE001 - reported to the driver, which retries or raises
        shutil.rmtree(tmp, ignore_errors=True)
        return {"ok": False, "error": error if isinstance(error, FlowError) else None,
                "error_type": type(error).__name__, "message": str(error),
                "traceback": traceback.format_exc(limit=8),
                "retryable": not isinstance(error, FlowError)}
