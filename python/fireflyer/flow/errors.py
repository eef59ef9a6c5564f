"""Errors of fireflyer.flow: every one names the partition and the files it was working on."""

from __future__ import annotations

from typing import Sequence


class FlowError(Exception):
    """Base of flow errors. ``partition`` (int or None), ``files`` (list of paths) and ``message``."""

    def __init__(self, message: str, partition: int | None = None, files: Sequence[str] = ()):
        self.message = message
        self.partition = partition
        self.files = [str(f) for f in files]
        where = []
        if partition is not None:
            where.append(f"partition {partition}")
        if self.files:
            shown = ", ".join(self.files[:4]) + (f", ... ({len(self.files)} files)" if len(self.files) > 4 else "")
            where.append(f"files [{shown}]")
        super().__init__(f"{message} ({'; '.join(where)})" if where else message)

    def __reduce__(self):  # NOTE: keeps the attributes when the error crosses a process boundary.
        return (type(self), (self.message, self.partition, self.files))


class FlowInputError(FlowError, ValueError):
    """Bad input: a missing file, a schema that differs across files, an unreadable file, bad arguments."""


class FlowSQLError(FlowError, ValueError):
    """A SQL statement given to partial_sql / map / filter failed (syntax, unknown column, type error)."""


class FlowTaskError(FlowError, RuntimeError):
    """A task failed on every attempt (user function raised, disk full, worker died)."""

    def __init__(self, message: str, partition: int | None = None, files: Sequence[str] = (),
                 attempts: int = 0, stage: str = ""):
        self.attempts = attempts
        self.stage = stage
        super().__init__(message, partition, files)

    def __reduce__(self):
        return (type(self), (self.message, self.partition, self.files, self.attempts, self.stage))
