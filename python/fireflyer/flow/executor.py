"""Executors: where flow tasks run. ``LocalExecutor`` (a process pool on this machine, the default)
and ``RayExecutor`` (Ray tasks, for several machines). Both only ship task specs (plain dicts) to
``fireflyer.flow.task.run_task`` and yield its results; retries are the driver's business."""

from __future__ import annotations

import atexit
import concurrent.futures as futures
import multiprocessing
import os
from typing import Iterable, Iterator

from fireflyer.flow.task import run_task

_POOLS: dict[tuple[int, int], futures.ProcessPoolExecutor] = {}


def _init_worker(threads: int) -> None:
    import pyarrow as pa

    pa.set_cpu_count(max(1, threads))
    pa.set_io_thread_count(max(1, threads))


def _shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _POOLS.clear()


atexit.register(_shutdown_pools)


class LocalExecutor:
    """Runs tasks in ``num_executors`` worker processes (spawned, kept for the life of the process so
    repeated jobs do not pay the start-up; pools are shared by sessions with the same size)."""

    name = "local"

    def __init__(self, num_executors: int, threads_per_task: int, task_timeout_s: float):
        assert num_executors >= 1, num_executors
        self.num_executors = num_executors
        self.threads_per_task = threads_per_task
        self.task_timeout_s = task_timeout_s

    def _pool(self) -> futures.ProcessPoolExecutor:
        key = (self.num_executors, self.threads_per_task)
        pool = _POOLS.get(key)
        if pool is None:
            # NOTE: spawn, not fork: the driver may hold DuckDB/Arrow threads, and forking a threaded
            # process can deadlock the child.
            pool = futures.ProcessPoolExecutor(self.num_executors, mp_context=multiprocessing.get_context("spawn"),
                                               initializer=_init_worker, initargs=(self.threads_per_task,))
            _POOLS[key] = pool
        return pool

    def run(self, specs: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        specs = list(specs)
        pool = self._pool()
        pending = {pool.submit(run_task, spec): spec for spec in specs}
        try:
            for future in futures.as_completed(pending, timeout=self.task_timeout_s * max(1, len(specs))):
                spec = pending[future]
                try:
                    result = future.result()
                except Exception as error:  # the worker died (BrokenProcessPool) or could not unpickle
                    _POOLS.pop((self.num_executors, self.threads_per_task), None)
                    result = {"ok": False, "error": None, "error_type": type(error).__name__,
                              "message": f"worker failed: {error}", "traceback": "", "retryable": True}
                yield spec, result
        except futures.TimeoutError:
            for future, spec in pending.items():
                if not future.done():
                    future.cancel()
                    yield spec, {"ok": False, "error": None, "error_type": "TimeoutError",
                                 "message": f"task did not finish in {self.task_timeout_s} s", "traceback": "",
                                 "retryable": True}

    def shutdown(self) -> None:
        pass  # pools live until exit; see _shutdown_pools


class RayExecutor:
    """Runs each task as a Ray task (num_cpus=1). Connects to ``ray_address`` unless Ray is already
    initialised in this process. Every machine needs fireflyer importable and data_root mounted at the
    same path (a shared file system: NFS, 3FS, or the Fireflyer fs FUSE mount)."""

    name = "ray"

    def __init__(self, ray_address: str | None, threads_per_task: int, task_timeout_s: float):
        try:
            import ray
        except ImportError as error:
            raise ImportError("the Ray executor needs ray (pip install 'ray[default]'); "
                              "leave ray_address=None to use the local executor") from error
        self.ray = ray
        if not ray.is_initialized():
            python_path = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__)))), os.environ.get("PYTHONPATH", "")] if p)
            ray.init(address=ray_address, runtime_env={"env_vars": {"PYTHONPATH": python_path}},
                     include_dashboard=False, log_to_driver=False)
        self.threads_per_task = threads_per_task
        self.task_timeout_s = task_timeout_s
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_ray_run_task)

    def run(self, specs: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        ray = self.ray
        refs = {self._remote.remote(spec, self.threads_per_task): spec for spec in specs}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1, timeout=self.task_timeout_s)
            if not done:
                for ref, spec in list(refs.items()):
                    ray.cancel(ref, force=True)
                    yield spec, {"ok": False, "error": None, "error_type": "TimeoutError",
                                 "message": f"no task finished in {self.task_timeout_s} s", "traceback": "",
                                 "retryable": True}
                return
            for ref in done:
                spec = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as error:  # the worker died
                    result = {"ok": False, "error": None, "error_type": type(error).__name__,
                              "message": f"ray worker failed: {error}", "traceback": "", "retryable": True}
                yield spec, result

    def shutdown(self) -> None:
        pass  # the caller owns the Ray cluster connection


def _ray_run_task(spec: dict, threads: int) -> dict:
    _init_worker(threads)
    result = run_task(spec)
    result["node"] = os.uname().nodename
    return result
