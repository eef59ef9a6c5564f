"""A local worker process: reads task specs from stdin, runs them, writes results to stdout.

Started by LocalExecutor as ``python -m fireflyer.flow.worker <threads>``. NOTE: a plain subprocess, not
multiprocessing: spawn/forkserver re-run the driver's ``__main__`` script in every worker (a script
without an ``if __name__ == "__main__"`` guard would start the job again), and fork can deadlock
when the driver holds DuckDB/Arrow threads. Messages are 8-byte little-endian lengths + cloudpickle.
"""

from __future__ import annotations

import struct
import sys

kMaxMessageBytes = 1 << 34


def read_message(stream) -> bytes | None:
    header = stream.read(8)
    if len(header) < 8:
        return None
    (length,) = struct.unpack("<Q", header)
    if length > kMaxMessageBytes:
        return None  # not our protocol: treat as a dead worker
    data = stream.read(length)
    return data if len(data) == length else None


def write_message(stream, data: bytes) -> None:
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def main() -> int:
    import cloudpickle
    import pyarrow as pa

    threads = int(sys.argv[-1]) if len(sys.argv) > 1 else 1
    pa.set_cpu_count(max(1, threads))
    pa.set_io_thread_count(max(1, threads))
    from fireflyer.flow.task import run_task

    # NOTE: results travel on a private copy of fd 1; fd 1 itself then points at stderr, so nothing
    # else that prints (user functions, native libraries writing to fd 1) can corrupt the channel.
    import os

    stdin = sys.stdin.buffer
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    while True:
        message = read_message(stdin)
        if message is None:
            return 0
        try:
            result = run_task(cloudpickle.loads(message))
        except BaseException as error:  # noqa: BLE001 - e.g. a function that cannot be unpickled here
            result = {"ok": False, "error": None, "error_type": type(error).__name__, "message": str(error),
                      "traceback": "", "retryable": True}
        try:
            payload = cloudpickle.dumps(result)
        except Exception as error:  # an unpicklable exception object
            result.update(error=None, message=f"{result.get('message')} (unpicklable: {error})")
            payload = cloudpickle.dumps(result)
        write_message(stdout, payload)


if __name__ == "__main__":
    sys.exit(main())
