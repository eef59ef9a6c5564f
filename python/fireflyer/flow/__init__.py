"""Partitioned data processing over DuckDB + Arrow on a shared file system (component ``flow``).

The counterpart of DeepSeek's smallpond::

    from fireflyer import flow
    sp = flow.init(data_root="/mnt/ff/job1", num_executors=4)     # or ray_address="auto"
    df = sp.read_parquet("/data/events/*.parquet")
    df = df.repartition(8, hash_by="user_id")
    df = sp.partial_sql("select user_id, count(*) as n from {0} group by user_id", df)
    df.write_parquet("/mnt/ff/out")                                # nothing ran before this line

Every task writes zstd Parquet under ``data_root/tasks/<task id>`` (written in a temporary directory,
then renamed), so a re-run of a killed job reuses what completed. See docs/flow.md.
"""

from __future__ import annotations

from fireflyer.flow.errors import FlowError, FlowInputError, FlowSQLError, FlowTaskError
from fireflyer.flow.session import DataFrame, Session, default_session, init


def read_parquet(paths, num_partitions: int | None = None) -> DataFrame:
    return default_session().read_parquet(paths, num_partitions)


def read_csv(paths, num_partitions: int | None = None, delimiter: str = ",") -> DataFrame:
    return default_session().read_csv(paths, num_partitions, delimiter)


def read_json(paths, num_partitions: int | None = None) -> DataFrame:
    return default_session().read_json(paths, num_partitions)


def from_arrow(table, num_partitions: int = 1) -> DataFrame:
    return default_session().from_arrow(table, num_partitions)


def from_pandas(frame, num_partitions: int = 1) -> DataFrame:
    return default_session().from_pandas(frame, num_partitions)


def from_items(items, num_partitions: int = 1) -> DataFrame:
    return default_session().from_items(items, num_partitions)


def partial_sql(query: str, *inputs: DataFrame) -> DataFrame:
    return default_session().partial_sql(query, *inputs)


def demo_job(data_root: str) -> dict:
    """A small multi-stage job for the demo; see fireflyer.flow.demo.demo_job."""
    from fireflyer.flow.demo import demo_job as run

    return run(data_root)


__all__ = [
    "DataFrame", "FlowError", "FlowInputError", "FlowSQLError", "FlowTaskError", "Session", "default_session",
    "demo_job", "from_arrow", "from_items", "from_pandas", "init", "partial_sql", "read_csv", "read_json",
    "read_parquet",
]
