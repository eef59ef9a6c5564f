"""fireflyer.flow on the Ray executor: the same job gives the same answer as on local processes."""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'ray[default]'); the Ray executor is optional")
pd = pytest.importorskip("pandas")

from fireflyer import flow  # noqa: E402

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ray_cluster():
    tests_dir = os.path.join(PYTHON_DIR, "tests")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([PYTHON_DIR, tests_dir])}})
    yield
    ray.shutdown()


def bucket(row):
    return {"k": row["v"] % 7, "v": row["v"]}


def job(session):
    df = session.from_items([{"v": i} for i in range(3000)], num_partitions=3).map(bucket)
    df = df.repartition(4, hash_by="k")
    out = session.partial_sql("select k, count(*) as n, sum(v) as s from {0} group by k", df)
    return out.to_pandas().sort_values("k").reset_index(drop=True)


def test_ray_executor_matches_local(ray_cluster, tmp_path):
    on_ray = flow.init(data_root=str(tmp_path / "ray"), executor="ray", progress=False)
    assert on_ray.executor.name == "ray"
    ray_result = job(on_ray)
    local = flow.init(data_root=str(tmp_path / "local"), num_executors=2, progress=False)
    pd.testing.assert_frame_equal(ray_result, job(local))
    assert ray_result["n"].sum() == 3000 and len(ray_result) == 7
    assert on_ray.tasks_run == local.tasks_run == 7
