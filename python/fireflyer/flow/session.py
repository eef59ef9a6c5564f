"""Sessions, lazy DataFrames and the planner/driver of fireflyer.flow.

A DataFrame is a node of a logical plan; nothing runs until an action (count, take, take_all,
to_arrow, to_pandas, write_parquet). An action plans the graph into stages: consecutive per-partition
steps (SQL, map, filter, ...) are fused into one task per partition, and fused into the map side of a
following repartition; limit is pushed below the gather. Each task has a deterministic id (a hash of
its operations and its inputs), so a re-run finds the outputs of completed tasks on disk and reuses them.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
import types
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from fireflyer.flow.errors import FlowError, FlowInputError, FlowTaskError
from fireflyer.flow.executor import LocalExecutor, RayExecutor
from fireflyer.flow.progress import Progress, Stage, write_svg
from fireflyer.flow.task import MANIFEST, load_manifest, task_dir

_node_ids = itertools.count()
_default_session: "Session | None" = None
kMaxRetriesLimit = 10


# ----------------------------------------------------------------------------- logical plan


@dataclass(eq=False)
class Node:
    """A node of the logical plan. ``kind``: source, items, op, psql, repartition, gather."""

    kind: str
    children: tuple
    params: dict
    num_partitions: int
    label: str

    def __post_init__(self):
        self.id = next(_node_ids)


def _function_fingerprint(fn: Callable) -> str:
    """A stable text for a Python function: its code, constants, names, defaults and closure values.
    NOTE: not cloudpickle bytes, which may differ between runs of the same program; a stable
    fingerprint is what lets a re-run find its completed tasks."""
    digest = hashlib.sha256()

    def add_code(code: types.CodeType) -> None:
        digest.update(code.co_code)
        digest.update(repr(code.co_names).encode())
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                add_code(const)
            else:
                digest.update(repr(const).encode())

    target = getattr(fn, "__func__", fn)
    code = getattr(target, "__code__", None)
    digest.update(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', repr(target))}".encode())
    if code is not None:
        add_code(code)
        digest.update(repr(target.__defaults__).encode())
        # Plain global values the function reads (a path, a threshold) change what it computes.
        for name in code.co_names:
            value = getattr(target, "__globals__", {}).get(name)
            if isinstance(value, (int, float, str, bytes, bool, tuple, frozenset)):
                digest.update(f"{name}={value!r}".encode())
        for cell in target.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            digest.update((_function_fingerprint(value) if callable(value) else repr(value)).encode())
    return digest.hexdigest()[:24]


def _pickle_function(fn: Callable) -> bytes:
    import cloudpickle

    return cloudpickle.dumps(fn)


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


# ----------------------------------------------------------------------------- materialised data


@dataclass
class Materialized:
    """Files of each partition (absolute paths), rows of each partition, the stage that made them."""

    partitions: list[list[str]]
    rows: list[int]
    format: str
    stage: int
    options: dict


class DataFrame:
    """A lazy, partitioned table. Methods return new DataFrames; actions run the plan."""

    def __init__(self, session: "Session", node: Node):
        self.session = session
        self.node = node

    # -- introspection
    @property
    def num_partitions(self) -> int:
        return self.node.num_partitions

    def __repr__(self) -> str:
        return f"DataFrame({self.node.label}, {self.num_partitions} partitions)"

    def explain(self) -> str:
        """The logical plan as indented text (the root first)."""
        lines = []

        def walk(node: Node, depth: int) -> None:
            lines.append("  " * depth + f"{node.label} [{node.num_partitions} partitions]")
            for child in node.children:
                walk(child, depth + 1)

        walk(self.node, 0)
        return "\n".join(lines)

    # -- transformations
    def _op(self, op: tuple, label: str) -> "DataFrame":
        return DataFrame(self.session, Node("op", (self.node,), {"op": op}, self.num_partitions, label))

    def repartition(self, npartitions: int, hash_by: str | Sequence[str] | None = None, by: str | None = None,
                    by_rows: bool = False, random: bool = False) -> "DataFrame":
        """Splits the data into ``npartitions``: by a hash of columns ``hash_by`` (equal keys end in one
        partition), by the integer column ``by`` (its value is the partition, in [0, n)), evenly by rows
        (``by_rows``, the default) or uniformly at random (``random``)."""
        if not isinstance(npartitions, int) or npartitions < 1:
            raise FlowInputError(f"repartition: npartitions={npartitions!r} must be a positive integer")
        chosen = sum(x is not None and x is not False for x in (hash_by, by, by_rows or None, random or None))
        if chosen > 1:
            raise FlowInputError("repartition: give only one of hash_by, by, by_rows, random")
        if hash_by is not None:
            cols = [hash_by] if isinstance(hash_by, str) else list(hash_by)
            if not cols:
                raise FlowInputError("repartition: hash_by needs at least one column")
            mode, label = "hash", f"repartition({npartitions}, hash_by={','.join(cols)})"
        elif by is not None:
            cols, mode, label = [by], "by", f"repartition({npartitions}, by={by})"
        elif random:
            cols, mode, label = [], "random", f"random_shuffle({npartitions})"
        else:
            cols, mode, label = [], "rows", f"repartition({npartitions}, by_rows)"
        params = {"n": npartitions, "mode": mode, "cols": cols}
        return DataFrame(self.session, Node("repartition", (self.node,), params, npartitions, label))

    def map(self, sql_or_func: str | Callable[[dict], dict]) -> "DataFrame":
        """Per row: a SQL select list (``"a, b * 2 as c"``) or a function from a row dict to a row dict."""
        if isinstance(sql_or_func, str):
            return self._op(("sql", f"select {sql_or_func} from {{0}}"), f"map({sql_or_func})"[:40])
        _check_callable(sql_or_func, "map")
        return self._op(("map_fn", sql_or_func), f"map({_name(sql_or_func)})")

    def filter(self, sql_or_func: str | Callable[[dict], bool]) -> "DataFrame":
        """Keeps rows where a SQL condition (``"a > 1"``) or a function of the row dict is true."""
        if isinstance(sql_or_func, str):
            return self._op(("sql", f"select * from {{0}} where {sql_or_func}"), f"filter({sql_or_func})"[:40])
        _check_callable(sql_or_func, "filter")
        return self._op(("filter_fn", sql_or_func), f"filter({_name(sql_or_func)})")

    def flat_map(self, sql_or_func: str | Callable[[dict], list]) -> "DataFrame":
        """Per row: a function returning a list of row dicts (or a SQL select list, e.g. with unnest)."""
        if isinstance(sql_or_func, str):
            return self._op(("sql", f"select {sql_or_func} from {{0}}"), f"flat_map({sql_or_func})"[:40])
        _check_callable(sql_or_func, "flat_map")
        return self._op(("flat_map", sql_or_func), f"flat_map({_name(sql_or_func)})")

    def map_batches(self, func: Callable[[pa.Table], Any], batch_rows: int | None = None) -> "DataFrame":
        """Applies ``func`` to each partition as a pyarrow Table (in slices of ``batch_rows`` rows if
        given); it returns a Table, RecordBatch, pandas DataFrame or dict of columns."""
        _check_callable(func, "map_batches")
        if batch_rows is not None and batch_rows < 1:
            raise FlowInputError(f"map_batches: batch_rows={batch_rows} must be positive")
        return self._op(("map_batches", func, batch_rows), f"map_batches({_name(func)})")

    def partial_sort(self, by: str | Sequence[str], descending: bool = False) -> "DataFrame":
        """Sorts each partition by the columns ``by`` (partitions are not merged)."""
        cols = [by] if isinstance(by, str) else list(by)
        order = ", ".join(_quote(c) + (" desc" if descending else "") for c in cols)
        return self._op(("sql", f"select * from {{0}} order by {order}"), f"partial_sort({','.join(cols)})")

    def partial_sql(self, query: str, *others: "DataFrame") -> "DataFrame":
        """``partial_sql(query, self, *others)``: see :func:`Session.partial_sql`."""
        return self.session.partial_sql(query, self, *others)

    def random_shuffle(self, seed: int = 0) -> "DataFrame":
        """Shuffles rows across all partitions (random repartition, then a shuffle inside each)."""
        shuffled = self.repartition(self.num_partitions, random=True)
        shuffled.node.params["seed"] = seed
        return shuffled._op(("shuffle_rows", seed), "shuffle_rows")

    def limit(self, n: int) -> "DataFrame":
        """The first ``n`` rows (of the first partitions). The limit is also pushed into every partition."""
        if not isinstance(n, int) or n < 0:
            raise FlowInputError(f"limit: n={n!r} must be a non-negative integer")
        pushed = self._op(("limit", n), f"limit({n}) per partition")
        gathered = DataFrame(self.session, Node("gather", (pushed.node,), {}, 1, "gather"))
        return gathered._op(("limit", n), f"limit({n})")

    # -- actions
    def _materialize(self) -> Materialized:
        node = self.node
        if node.kind == "source" and node.params["format"] != "parquet":  # CSV/JSON: convert to Parquet first
            node = Node("op", (node,), {"op": None}, node.num_partitions, "compact")
        return self.session._run(node)

    def count(self) -> int:
        """Number of rows (from the task manifests; no data is read back)."""
        return sum(self._materialize().rows)

    def to_arrow(self) -> pa.Table:
        result = self._materialize()
        tables = [pq.read_table(f) for files in result.partitions for f in files]
        tables = [t for t in tables if t.num_columns] or tables[:1]
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]

    def to_pandas(self):
        return self.to_arrow().to_pandas()

    def take_all(self) -> list[dict]:
        return self.to_arrow().to_pylist()

    def take(self, n: int) -> list[dict]:
        return self.limit(n).take_all()

    def write_parquet(self, path: str) -> list[str]:
        """Writes one zstd Parquet file per partition (``part-00000.parquet``, ...) into directory
        ``path``; each appears by rename, complete. Returns the paths."""
        node = self.node
        if node.kind in ("repartition", "gather", "source", "items"):  # several files per partition: compact
            node = Node("op", (node,), {"op": None}, node.num_partitions, "compact")
        result = self.session._run(node)
        os.makedirs(path, exist_ok=True)
        written = []
        for partition, files in enumerate(result.partitions):
            assert len(files) == 1, files
            target = os.path.join(path, f"part-{partition:05d}.parquet")
            tmp = f"{target}.tmp.{uuid.uuid4().hex[:8]}"
            shutil.copyfile(files[0], tmp)
            os.replace(tmp, target)
            written.append(target)
        return written


def _check_callable(fn, what: str) -> None:
    if not callable(fn):
        raise FlowInputError(f"{what}: expected a SQL string or a function, got {type(fn).__name__}")


def _name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


# ----------------------------------------------------------------------------- session


class Session:
    """Holds the data root, the executor and the job statistics. Create with :func:`init`."""

    def __init__(self, data_root: str | None = None, num_executors: int | None = None,
                 ray_address: str | None = None, executor: str | None = None, max_retries: int = 2,
                 progress: bool = True, svg_path: str | None = None, task_timeout_s: float = 3600.0,
                 threads_per_task: int | None = None, progress_interval_s: float = 2.0):
        if not 0 <= max_retries <= kMaxRetriesLimit:
            raise FlowInputError(f"max_retries={max_retries} must be in [0, {kMaxRetriesLimit}]")
        self.data_root = os.path.abspath(data_root or tempfile.mkdtemp(prefix="fireflyer-flow-"))
        os.makedirs(os.path.join(self.data_root, "tasks"), exist_ok=True)
        os.makedirs(os.path.join(self.data_root, "tmp"), exist_ok=True)
        cpus = os.cpu_count() or 1
        self.num_executors = num_executors or cpus
        if self.num_executors < 1:
            raise FlowInputError(f"num_executors={num_executors} must be positive")
        self.threads_per_task = threads_per_task or max(1, cpus // self.num_executors)
        kind = executor or ("ray" if ray_address else "local")
        if kind == "local":
            self.executor = LocalExecutor(self.num_executors, self.threads_per_task, task_timeout_s)
        elif kind == "ray":
            self.executor = RayExecutor(ray_address, self.threads_per_task, task_timeout_s)
        else:
            raise FlowInputError(f"executor={executor!r} is not known (local, ray)")
        self.max_retries = max_retries
        self.progress = Progress(progress, interval_s=progress_interval_s)
        self.svg_path = svg_path or os.path.join(self.data_root, "job.svg")
        self.stages: list[Stage] = []
        self.tasks_run = 0
        self.tasks_reused = 0
        self._cache: dict[int, Materialized] = {}

    # -- sources
    def _files(self, paths, what: str) -> list[str]:
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        files = []
        for path in map(os.fspath, paths):
            if any(c in path for c in "*?["):
                matched = sorted(globlib.glob(path, recursive=True))
                # A pattern that matches nothing is kept as is: the error comes at the action, naming it.
                files.extend(matched or [path])
            elif os.path.isdir(path):
                files.extend(sorted(os.path.join(path, f) for f in os.listdir(path) if not f.startswith((".", "_"))))
            else:
                files.append(path)
        if not files:
            raise FlowInputError(f"{what}: no input files given")
        return [os.path.abspath(f) for f in files]

    def _source(self, fmt: str, paths, num_partitions: int | None, options: dict) -> DataFrame:
        files = self._files(paths, f"read_{fmt}")
        n = num_partitions or len(files)
        if not 1 <= n <= len(files):
            raise FlowInputError(f"read_{fmt}: num_partitions={n} must be in [1, {len(files)}] (one file at least each)")
        groups = [files[i * len(files) // n:(i + 1) * len(files) // n] for i in range(n)]
        label = f"read_{fmt}({len(files)} files)"
        return DataFrame(self, Node("source", (), {"format": fmt, "groups": groups, "options": options}, n, label))

    def read_parquet(self, paths, num_partitions: int | None = None) -> DataFrame:
        """Parquet files (paths, directories or glob patterns); one partition per file unless
        ``num_partitions`` groups them. All files must have the same schema."""
        return self._source("parquet", paths, num_partitions, {})

    def read_csv(self, paths, num_partitions: int | None = None, delimiter: str = ",") -> DataFrame:
        """CSV files with a header line; column types are inferred per file."""
        return self._source("csv", paths, num_partitions, {"delimiter": delimiter})

    def read_json(self, paths, num_partitions: int | None = None) -> DataFrame:
        """Newline-delimited JSON files (one object per line)."""
        return self._source("json", paths, num_partitions, {})

    def from_arrow(self, table: pa.Table, num_partitions: int = 1) -> DataFrame:
        if not isinstance(table, pa.Table):
            raise FlowInputError(f"from_arrow: expected a pyarrow.Table, got {type(table).__name__}")
        if num_partitions < 1:
            raise FlowInputError(f"from_arrow: num_partitions={num_partitions} must be positive")
        return DataFrame(self, Node("items", (), {"table": table}, num_partitions, f"from_arrow({table.num_rows} rows)"))

    def from_pandas(self, frame, num_partitions: int = 1) -> DataFrame:
        return self.from_arrow(pa.Table.from_pandas(frame, preserve_index=False), num_partitions)

    def from_items(self, items: Sequence, num_partitions: int = 1) -> DataFrame:
        """Rows from a list of dicts (or of scalars, which become column ``item``)."""
        items = list(items)
        rows = items if all(isinstance(i, dict) for i in items) else [{"item": i} for i in items]
        return self.from_arrow(pa.Table.from_pylist(rows), num_partitions)

    def partial_sql(self, query: str, *inputs: DataFrame) -> DataFrame:
        """Runs ``query`` on each partition; ``{0}``, ``{1}``, ... name partition i of each input.
        All inputs must have the same number of partitions (repartition them alike first)."""
        if not inputs:
            raise FlowInputError("partial_sql: give at least one input DataFrame")
        counts = [df.num_partitions for df in inputs]
        if len(set(counts)) != 1:
            raise FlowInputError(f"partial_sql: inputs have {counts} partitions; they must all have the same number")
        label = f"partial_sql({' '.join(query.split())})"[:40]
        if len(inputs) == 1:
            return inputs[0]._op(("sql", query), label)
        node = Node("psql", tuple(df.node for df in inputs), {"query": query}, counts[0], label)
        return DataFrame(self, node)

    # -- driver
    def _run(self, node: Node) -> Materialized:
        start = len(self.stages)
        try:
            return self._materialize(node)
        finally:
            if len(self.stages) > start or not os.path.exists(self.svg_path):
                write_svg(self.stages, self.svg_path)

    def _add_stage(self, label: str, kind: str, num_tasks: int, parents: list[int]) -> Stage:
        stage = Stage(len(self.stages), label, kind, num_tasks, parents, start_s=time.time())
        self.stages.append(stage)
        return stage

    def _materialize(self, node: Node) -> Materialized:
        cached = self._cache.get(node.id)
        if cached is not None:
            return cached
        if node.kind == "source":
            result = self._source_stage(node)
        elif node.kind == "items":
            result = self._items_stage(node)
        elif node.kind == "gather":
            child = self._materialize(node.children[0])
            stage = self._add_stage("gather", "gather", 0, [child.stage])
            stage.rows = sum(child.rows)
            stage.end_s = time.time()
            result = Materialized([[f for files in child.partitions for f in files]], [sum(child.rows)], child.format,
                                  stage.id, child.options)
        else:
            result = self._task_stage(node)
        self._cache[node.id] = result
        return result

    def _source_stage(self, node: Node) -> Materialized:
        fmt, groups = node.params["format"], node.params["groups"]
        rows, first_schema, first_file = [], None, None
        for partition, files in enumerate(groups):
            count = 0
            for path in files:
                if not os.path.exists(path):
                    raise FlowInputError(f"input file {path} does not exist", partition, [path])
                if fmt != "parquet":
                    continue
                try:
                    meta = pq.read_metadata(path)
                except Exception as error:
                    raise FlowInputError(f"cannot read parquet footer: {str(error).splitlines()[0]}",
                                         partition, [path]) from None
                schema = meta.schema.to_arrow_schema()
                if first_schema is None:
                    first_schema, first_file = schema, path
                elif not schema.equals(first_schema):
                    raise FlowInputError(
                        f"schema mismatch: {path} has ({_schema_text(schema)}) but {first_file} has "
                        f"({_schema_text(first_schema)})", partition, [path, first_file])
                count += meta.num_rows
            rows.append(count)
        stage = self._add_stage(node.label, "source", 0, [])
        stage.rows = sum(rows)
        stage.bytes = sum(os.path.getsize(f) for files in groups for f in files)
        stage.end_s = time.time()
        return Materialized([list(g) for g in groups], rows, fmt, stage.id, node.params["options"])

    def _items_stage(self, node: Node) -> Materialized:
        table: pa.Table = node.params["table"]
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest = hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:24]
        n = node.num_partitions
        directory = os.path.join(self.data_root, "inputs", f"{digest}-{n}")
        if not os.path.exists(directory):
            tmp = f"{directory}.tmp.{uuid.uuid4().hex[:8]}"
            os.makedirs(tmp)
            for i in range(n):
                start, stop = i * table.num_rows // n, (i + 1) * table.num_rows // n
                pq.write_table(table.slice(start, stop - start), os.path.join(tmp, f"part-{i:05d}.parquet"),
                               compression="zstd")
            try:
                os.rename(tmp, directory)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # written by someone else meanwhile
        files = [[os.path.join(directory, f"part-{i:05d}.parquet")] for i in range(n)]
        rows = [(i + 1) * table.num_rows // n - i * table.num_rows // n for i in range(n)]
        stage = self._add_stage(node.label, "source", 0, [])
        stage.rows = table.num_rows
        stage.end_s = time.time()
        return Materialized(files, rows, "parquet", stage.id, {})

    def _input_identity(self, path: str) -> str:
        root = self.data_root + os.sep
        if path.startswith(root):  # task outputs: their path holds the producing task's id
            return path[len(root):]
        stat = os.stat(path) if os.path.exists(path) else None
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}" if stat else f"{path}:missing"

    def _task_stage(self, node: Node) -> Materialized:
        # Fuse: walk down through per-partition ops; a repartition on top becomes the output mode.
        output = {"kind": "single"}
        if node.kind == "repartition":
            output = {"kind": "buckets", **{k: node.params[k] for k in ("n", "mode", "cols")}}
            base = node.children[0]
        else:
            base = node
        ops, labels = [], []
        while base.kind == "op" and not (base is not node and base.id in self._cache):
            if base.params["op"] is not None:
                ops.insert(0, base.params["op"])
                labels.insert(0, base.label)
            base = base.children[0]
        if base.kind == "psql":
            ops.insert(0, ("sql", base.params["query"]))
            labels.insert(0, base.label)
            inputs = [self._materialize(child) for child in base.children]
        else:
            inputs = [self._materialize(base)]
        if node.kind == "repartition":
            labels.append(node.label)
        label = " > ".join(labels) or "compact"
        num_partitions = len(inputs[0].partitions)
        assert all(len(i.partitions) == num_partitions for i in inputs), [len(i.partitions) for i in inputs]
        wire_ops, fingerprint_ops = [], []
        for op in ops:
            if op[0] in ("map_fn", "filter_fn", "flat_map", "map_batches"):
                wire_ops.append((op[0], _pickle_function(op[1]), *op[2:]))
                fingerprint_ops.append((op[0], _function_fingerprint(op[1]), *op[2:]))
            else:
                wire_ops.append(op)
                fingerprint_ops.append(op)
        kind = "shuffle" if output["kind"] == "buckets" else "pipeline"
        seed = node.params.get("seed", 0) if node.kind == "repartition" else 0
        specs = []
        for partition in range(num_partitions):
            sources = [{"format": i.format, "files": i.partitions[partition], "options": i.options} for i in inputs]
            identity = json.dumps({"ops": fingerprint_ops, "output": output, "seed": seed, "partition": partition,
                                   "inputs": [[self._input_identity(f) for f in s["files"]] for s in sources]},
                                  sort_keys=True, default=str)
            task_id = f"{kind}-{hashlib.sha256(identity.encode()).hexdigest()[:32]}"
            specs.append({"task_id": task_id, "data_root": self.data_root, "partition": partition, "kind": kind,
                          "inputs": sources, "ops": wire_ops, "output": output, "seed": seed * 1000003 + partition,
                          "threads": self.threads_per_task, "label": label})
        stage = self._add_stage(label, kind, len(specs), [i.stage for i in inputs])
        manifests = self._run_tasks(stage, specs)
        if output["kind"] == "single":
            partitions = [[os.path.join(task_dir(self.data_root, m["task_id"]), m["files"][0])] for m in manifests]
            rows = [m["rows"][0] for m in manifests]
        else:
            n = output["n"]
            partitions = [[os.path.join(task_dir(self.data_root, m["task_id"]), m["files"][b]) for m in manifests]
                          for b in range(n)]
            rows = [sum(m["rows"][b] for m in manifests) for b in range(n)]
        return Materialized(partitions, rows, "parquet", stage.id, {})

    def _run_tasks(self, stage: Stage, specs: list[dict]) -> list[dict]:
        total = len(self.stages)
        manifests: dict[int, dict] = {}
        todo = []
        for spec in specs:  # resume: completed tasks are found on disk and not run again
            manifest = load_manifest(self.data_root, spec["task_id"])
            if manifest is not None:
                manifests[spec["partition"]] = manifest
                self._account(stage, manifest, reused=True)
            else:
                todo.append(spec)
        self.progress.update(stage, total)
        failures: dict[int, list[dict]] = {}
        for attempt in range(self.max_retries + 1):
            if not todo:
                break
            retry = []
            for spec, result in self.executor.run(todo):
                partition = spec["partition"]
                if result["ok"]:
                    manifests[partition] = result["manifest"]
                    self._account(stage, result["manifest"], reused=result.get("reused", False))
                    self.progress.update(stage, total)
                    continue
                failures.setdefault(partition, []).append(result)
                if result["error"] is not None and not result["retryable"]:
                    stage.end_s = time.time()
                    self.progress.update(stage, total, final=True)
                    raise result["error"]  # bad input or SQL: deterministic, a retry cannot help
                retry.append(spec)
            if retry and attempt < self.max_retries:
                stage.retries += len(retry)
            todo = retry
        stage.end_s = time.time()
        self.progress.update(stage, total, final=True)
        if todo:
            spec = todo[0]
            last = failures[spec["partition"]][-1]
            files = [f for s in spec["inputs"] for f in s["files"]]
            attempts = len(failures[spec["partition"]])
            detail = last["traceback"].strip().splitlines()[-1] if last["traceback"] else f"{last['error_type']}: {last['message']}"
            raise FlowTaskError(f"task {spec['task_id']} of stage '{stage.label}' failed after {attempts} attempt(s): "
                                f"{detail}", spec["partition"], files, attempts=attempts, stage=stage.label)
        return [manifests[p] for p in range(len(specs))]

    def _account(self, stage: Stage, manifest: dict, reused: bool) -> None:
        stage.done += 1
        stage.rows += sum(manifest["rows"])
        stage.bytes += sum(manifest["bytes"])
        if reused:
            stage.reused += 1
            self.tasks_reused += 1
        else:
            self.tasks_run += 1

    # -- housekeeping
    def write_svg(self, path: str | None = None) -> str:
        """Writes the job graph of everything run in this session so far; returns the path."""
        return write_svg(self.stages, path or self.svg_path)

    def summary(self) -> dict:
        return {"data_root": self.data_root, "executor": self.executor.name, "num_executors": self.num_executors,
                "stages": len(self.stages), "tasks_run": self.tasks_run, "tasks_reused": self.tasks_reused,
                "retries": sum(s.retries for s in self.stages), "svg": self.svg_path}

    def shutdown(self) -> None:
        self.executor.shutdown()


def _schema_text(schema: pa.Schema) -> str:
    return ", ".join(f"{field.name}: {field.type}" for field in schema)


def init(data_root: str | None = None, num_executors: int | None = None, ray_address: str | None = None,
         **options) -> Session:
    """Starts a session and makes it the default for the module-level functions.

    ``data_root``: directory for every intermediate and output file (a temporary directory if None);
    re-running a job with the same data_root reuses completed tasks. ``num_executors``: worker
    processes (default: CPU count). ``ray_address``: run tasks on Ray at that address ("auto", or
    "ray://host:10001"); None runs them in local processes. Other options: executor ("local"/"ray"),
    max_retries (2), progress (True), svg_path, task_timeout_s, threads_per_task, progress_interval_s.
    """
    global _default_session
    _default_session = Session(data_root, num_executors, ray_address, **options)
    return _default_session


def default_session() -> Session:
    if _default_session is None:
        raise FlowError("no flow session: call fireflyer.flow.init(data_root=...) first")
    return _default_session
