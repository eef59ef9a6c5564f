"""Executors: where flow tasks run. ``LocalExecutor`` (a process pool on this machine, the default)
and ``RayExecutor`` (Ray tasks, for several machines). Both only ship task specs (plain dicts) to
``fireflyer.flow.task.run_task`` and yield its results; retries are the driver's business."""

from __future__ import annotations

import atexit
import os
import selectors
import subprocess
import sys
import time
from typing import Iterable, Iterator

from fireflyer.flow import worker as worker_protocol
from fireflyer.flow.task import run_task

def _init_worker(threads: int) -> None:
    import pyarrow as pa

    pa.set_cpu_count(max(1, threads))
    pa.set_io_thread_count(max(1, threads))


class _Worker:
    """One worker process (see fireflyer.flow.worker) and the task it is running."""

    def __init__(self, threads: int):
        env = dict(os.environ)
        # The worker sees the driver's import path, so functions pickled by reference import there too.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.process = subprocess.Popen([sys.executable, "-c", "import sys; from fireflyer.flow.worker import main; sys.exit(main())", str(threads)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.spec: dict | None = None
        self.started_s = 0.0

    def send(self, spec: dict) -> None:
        import cloudpickle

        self.spec, self.started_s = spec, time.time()
        worker_protocol.write_message(self.process.stdin, cloudpickle.dumps(spec))

    def receive(self) -> dict | None:
        import cloudpickle

        message = worker_protocol.read_message(self.process.stdout)
        return None if message is None else cloudpickle.loads(message)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


_POOLS: dict[tuple[int, int], list[_Worker]] = {}


def _shutdown_pools() -> None:
    for workers in _POOLS.values():
        for worker in workers:
            try:
                worker.process.stdin.close()
                worker.process.wait(timeout=5)
            except Exception:  # noqa: BLE001 - best effort at exit
                worker.stop()
    _POOLS.clear()


atexit.register(_shutdown_pools)


def _failure(message: str, error_type: str = "WorkerError") -> dict:
    return {"ok": False, "error": None, "error_type": error_type, "message": message, "traceback": "",
            "retryable": True}


class LocalExecutor:
    """Runs tasks in ``num_executors`` worker processes on this machine. Workers are started once and
    shared by sessions of the same size, so repeated jobs do not pay the start-up (about a second)."""

    name = "local"

    def __init__(self, num_executors: int, threads_per_task: int, task_timeout_s: float):
        assert num_executors >= 1, num_executors
        self.num_executors = num_executors
        self.threads_per_task = threads_per_task
        self.task_timeout_s = task_timeout_s

    def _workers(self) -> list[_Worker]:
        key = (self.num_executors, self.threads_per_task)
        workers = _POOLS.setdefault(key, [])
        workers[:] = [w for w in workers if w.process.poll() is None]
        while len(workers) < self.num_executors:
            workers.append(_Worker(self.threads_per_task))
        return workers

    def run(self, specs: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        queue = list(specs)
        queue.reverse()
        workers = self._workers()
        busy: dict[int, _Worker] = {}  # stdout fd -> worker
        with selectors.DefaultSelector() as selector:
            while queue or busy:
                for index, worker in enumerate(workers):
                    if not queue:
                        break
                    if worker.spec is None:
                        if worker.process.poll() is not None:
                            worker = workers[index] = _Worker(self.threads_per_task)
                        worker.send(queue.pop())
                        busy[worker.process.stdout.fileno()] = worker
                        selector.register(worker.process.stdout, selectors.EVENT_READ)
                now = time.time()
                timeout = min(w.started_s + self.task_timeout_s for w in busy.values()) - now
                events = selector.select(timeout=max(0.0, timeout))
                ready = [busy[key.fd] for key, _ in events]
                for worker in list(busy.values()):
                    if worker not in ready and time.time() - worker.started_s > self.task_timeout_s:
                        ready.append(worker)
                        worker.stop()  # hung: kill it; a fresh one replaces it
                for worker in ready:
                    spec = worker.spec
                    selector.unregister(worker.process.stdout)
                    del busy[worker.process.stdout.fileno()]
                    worker.spec = None
                    result = worker.receive()  # None at EOF: the worker died or was killed above
                    if result is None:
                        worker.stop()
                        result = _failure(f"worker process exited (code {worker.process.returncode}) "
                                          f"or ran past task_timeout_s={self.task_timeout_s}")
                    yield spec, result

    def shutdown(self) -> None:
        pass  # workers live until exit; see _shutdown_pools


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
