"""fireflyer.flow: the API on small data, checked against pandas/DuckDB computed directly."""

from __future__ import annotations

import json
import os

import pytest

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")
duckdb = pytest.importorskip("duckdb")
import pyarrow.parquet as pq  # noqa: E402

from fireflyer import flow  # noqa: E402


@pytest.fixture()
def sp(tmp_path):
    session = flow.init(data_root=str(tmp_path / "root"), num_executors=2, progress=False)
    yield session
    session.shutdown()


def events(n=2000, seed=1):
    import numpy as np

    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": np.arange(n), "user": rng.integers(0, 50, n), "amount": rng.integers(1, 100, n)})


def write_parts(directory, frame, parts):
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(parts):
        path = os.path.join(directory, f"part-{i}.parquet")
        pq.write_table(pa.Table.from_pandas(frame.iloc[i::parts], preserve_index=False), path)
        paths.append(path)
    return paths


def sorted_frame(frame, by):
    return frame.sort_values(by).reset_index(drop=True)


def test_read_parquet_map_filter_count_match_pandas(sp, tmp_path):
    frame = events()
    write_parts(tmp_path / "in", frame, 3)
    df = sp.read_parquet(str(tmp_path / "in" / "*.parquet"))
    assert df.num_partitions == 3
    assert df.count() == len(frame)
    out = df.map("id, user, amount * 2 as double").filter("double > 100").to_pandas()
    expected = frame.assign(double=frame.amount * 2).query("double > 100")[["id", "user", "double"]]
    pd.testing.assert_frame_equal(sorted_frame(out, "id"), sorted_frame(expected, "id"), check_dtype=False)


def test_python_map_filter_flat_map_map_batches(sp):
    df = sp.from_items([{"x": i} for i in range(100)], num_partitions=4)
    assert sorted(r["y"] for r in df.map(lambda r: {"y": r["x"] * 3}).take_all()) == [i * 3 for i in range(100)]
    assert sorted(r["x"] for r in df.filter(lambda r: r["x"] % 10 == 0).take_all()) == list(range(0, 100, 10))
    flat = df.flat_map(lambda r: [{"x": r["x"], "k": k} for k in range(r["x"] % 3)]).to_pandas()
    assert len(flat) == sum(i % 3 for i in range(100))
    sums = df.map_batches(lambda t: {"total": [sum(t.column("x").to_pylist())]}).take_all()
    assert len(sums) == 4 and sum(r["total"] for r in sums) == sum(range(100))
    sliced = df.map_batches(lambda t: t.slice(0, 1), batch_rows=5).count()
    assert sliced == 20  # 4 partitions x 25 rows in batches of 5, one row kept per batch


def test_read_csv_and_json(sp, tmp_path):
    frame = events(300)
    (tmp_path / "csv").mkdir()
    frame.iloc[:150].to_csv(tmp_path / "csv" / "a.csv", index=False)
    frame.iloc[150:].to_csv(tmp_path / "csv" / "b.csv", index=False)
    df = sp.read_csv(str(tmp_path / "csv"))
    pd.testing.assert_frame_equal(sorted_frame(df.to_pandas(), "id"), frame, check_dtype=False)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in frame.to_dict("records")))
    got = sp.read_json(str(path)).filter("user < 10").to_pandas()
    pd.testing.assert_frame_equal(sorted_frame(got, "id"), sorted_frame(frame[frame.user < 10], "id"), check_dtype=False)


def test_from_pandas_from_arrow_to_arrow(sp):
    frame = events(500)
    got = sp.from_pandas(frame, num_partitions=3).to_pandas()
    pd.testing.assert_frame_equal(sorted_frame(got, "id"), frame)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    assert sp.from_arrow(table, num_partitions=2).to_arrow().sort_by("id").equals(table)
    assert sp.from_items([1, 2, 3]).take_all() == [{"item": 1}, {"item": 2}, {"item": 3}]


def partitions_of(df):
    result = df.session._run(df.node)
    return [pa.concat_tables([pq.read_table(f) for f in files]).to_pandas() for files in result.partitions]


def test_hash_repartition_puts_equal_keys_in_one_partition(sp):
    frame = events(3000)
    parts = partitions_of(sp.from_pandas(frame, num_partitions=3).repartition(5, hash_by="user"))
    assert len(parts) == 5
    seen = {}
    for index, part in enumerate(parts):
        for user in set(part.user):
            assert seen.setdefault(user, index) == index, f"user {user} in partitions {seen[user]} and {index}"
    assert sum(len(p) for p in parts) == len(frame)
    assert sum(1 for p in parts if len(p)) >= 3  # 50 keys spread over several partitions


def test_repartition_by_column_and_by_rows(sp):
    frame = events(1000).assign(bucket=lambda f: f.id % 4)
    parts = partitions_of(sp.from_pandas(frame, 2).repartition(4, by="bucket"))
    assert [set(p.bucket) for p in parts] == [{0}, {1}, {2}, {3}]
    even = partitions_of(sp.from_pandas(frame, 3).repartition(4, by_rows=True))
    assert sum(len(p) for p in even) == 1000 and max(len(p) for p in even) - min(len(p) for p in even) <= 3
    with pytest.raises(flow.FlowInputError, match=r"by='bucket': value 3 is outside \[0, 3\)"):
        sp.from_pandas(frame, 2).repartition(3, by="bucket").count()


def test_partial_sql_aggregate_and_two_inputs(sp):
    frame = events(4000)
    users = pd.DataFrame({"user": range(50), "name": [f"u{i}" for i in range(50)]})
    left = sp.from_pandas(frame, 4).repartition(3, hash_by="user")
    right = sp.from_pandas(users, 2).repartition(3, hash_by="user")
    joined = flow.partial_sql(
        "select b.name, sum(a.amount) as total, count(*) as n from {0} a join {1} b on a.user = b.user group by b.name",
        left, right).to_pandas()
    expected = duckdb.sql("select b.name, sum(a.amount) as total, count(*) as n from frame a join users b "
                          "on a.user = b.user group by b.name").df()
    pd.testing.assert_frame_equal(sorted_frame(joined, "name"), sorted_frame(expected, "name"), check_dtype=False)
    with pytest.raises(flow.FlowInputError, match=r"inputs have \[3, 2\] partitions"):
        flow.partial_sql("select * from {0}, {1}", left, sp.from_pandas(users, 2))


def test_partial_sort_random_shuffle_limit_take(sp):
    frame = events(1200)
    df = sp.from_pandas(frame, num_partitions=3)
    for part in partitions_of(df.partial_sort(["user", "id"])):
        assert part[["user", "id"]].equals(part[["user", "id"]].sort_values(["user", "id"]).reset_index(drop=True))
    shuffled = df.random_shuffle(seed=3).to_pandas()
    assert sorted(shuffled.id) == list(frame.id) and list(shuffled.id) != list(frame.id)
    assert df.limit(7).count() == 7
    assert len(df.take(5)) == 5 and set(r["id"] for r in df.take(5)) <= set(frame.id)
    assert df.limit(0).count() == 0
    assert df.filter("id < 0").count() == 0


def test_write_parquet_one_file_per_partition(sp, tmp_path):
    frame = events(900)
    files = sp.from_pandas(frame, 3).repartition(2, hash_by="user").write_parquet(str(tmp_path / "out"))
    assert [os.path.basename(f) for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.ParquetFile(files[0]).metadata.row_group(0).column(0).compression == "ZSTD"
    got = pq.read_table(files).to_pandas()
    pd.testing.assert_frame_equal(sorted_frame(got, "id"), frame)
    assert not [f for f in os.listdir(tmp_path / "out") if ".tmp." in f]


def test_lazy_nothing_runs_before_an_action(sp, tmp_path):
    marker = tmp_path / "ran"

    def touch(row):
        marker.write_text("x")
        return row

    df = sp.read_parquet(str(tmp_path / "missing.parquet")).map(touch).repartition(2, hash_by="id")
    df = sp.partial_sql("select count(*) from {0}", df)
    assert not marker.exists() and os.listdir(os.path.join(sp.data_root, "tasks")) == [] and sp.stages == []
    with pytest.raises(flow.FlowInputError):
        df.count()
    live = sp.from_items([{"id": 1}]).map(touch)
    assert not marker.exists()
    assert live.count() == 1 and marker.exists()


def test_fusion_makes_one_stage_and_limit_is_pushed(sp):
    df = sp.from_items([{"x": i} for i in range(1000)], num_partitions=4)
    chain = df.map("x, x * 2 as y").filter("y % 3 = 0").map(lambda r: {"x": r["x"], "z": r["y"] + 1}).filter("z > 5")
    before = len(sp.stages)
    assert chain.count() == len([x for x in range(1000) if (2 * x) % 3 == 0 and 2 * x + 1 > 5])
    assert [s.kind for s in sp.stages[before:]] == ["source", "pipeline"]  # four steps, one task per partition
    assert sp.stages[-1].num_tasks == 4
    before = len(sp.stages)
    assert df.limit(3).count() == 3
    pushed = sp.stages[before]  # the source stage is cached from the count above
    assert pushed.label.startswith("limit(3) per partition") and pushed.rows == 12  # 3 per partition, not 1000


def test_bad_input_missing_file_schema_mismatch_sql_error(sp, tmp_path):
    frame = events(100)
    paths = write_parts(tmp_path / "in", frame, 2)
    missing = str(tmp_path / "in" / "gone.parquet")
    with pytest.raises(flow.FlowInputError) as info:
        sp.read_parquet(paths + [missing]).count()
    assert info.value.partition == 2 and info.value.files == [missing]
    assert "does not exist" in str(info.value) and "partition 2" in str(info.value)
    assert isinstance(info.value, ValueError)

    other = tmp_path / "in" / "part-2.parquet"
    pq.write_table(pa.table({"id": ["a"], "user": [1]}), other)
    with pytest.raises(flow.FlowInputError, match="schema mismatch") as info:
        sp.read_parquet(str(tmp_path / "in" / "*.parquet")).count()
    assert info.value.partition == 2 and info.value.files[0] == str(other)
    assert "id: string" in str(info.value) and "id: int64" in str(info.value)

    with pytest.raises(flow.FlowSQLError) as info:
        sp.read_parquet(paths).map("no_such_column + 1 as y").count()
    assert "no_such_column" in str(info.value) and info.value.partition in (0, 1)
    assert info.value.files == [paths[info.value.partition]]

    with pytest.raises(flow.FlowSQLError, match="syntax|Parser"):
        sp.partial_sql("selec * frm {0}", sp.read_parquet(paths)).count()


def test_progress_lines_and_svg(tmp_path, capsys):
    session = flow.init(data_root=str(tmp_path / "root"), num_executors=2, progress=True)
    df = session.from_items([{"k": i % 5, "v": i} for i in range(500)], 2).repartition(3, hash_by="k")
    assert session.partial_sql("select k, sum(v) as s from {0} group by k", df).count() == 5
    err = capsys.readouterr().err
    assert "[flow] stage 2 repartition(3, hash_by=k): 2/2 tasks" in err
    assert "[flow] stage 3 partial_sql(select k, sum(v) as s from {: 3/3 tasks, 5 rows" in err
    assert "B/s" in err and "done" in err
    svg = open(session.svg_path).read()
    assert svg.startswith("<svg") and svg.count('class="stage"') == 3
    assert "repartition(3, hash_by=k)" in svg and "3/3 tasks" in svg and "<line" in svg


def test_same_job_again_reuses_every_task(tmp_path):
    frame = events(800)
    path = write_parts(tmp_path / "in", frame, 2)

    def job(session):
        df = session.read_parquet(path).repartition(3, hash_by="user")
        return sorted(session.partial_sql("select user, sum(amount) s from {0} group by user", df).take_all(),
                      key=lambda r: r["user"])

    first = flow.init(data_root=str(tmp_path / "root"), num_executors=2, progress=False)
    result = job(first)
    assert first.tasks_run == 5 and first.tasks_reused == 0
    second = flow.init(data_root=str(tmp_path / "root"), num_executors=2, progress=False)
    assert job(second) == result and second.tasks_run == 0 and second.tasks_reused == 5


def test_demo_job(tmp_path):
    summary = flow.demo_job(str(tmp_path))
    assert summary["rows_in"] == 200_000 and summary["partitions"] == 4 and summary["total_matches"]
    assert 4000 < summary["rows_out"] <= 5000 and len(summary["output_files"]) == 4
    assert os.path.exists(summary["svg"]) and summary["seconds"] > 0
