"""Fireflyer: infrastructure for training and serving large Mixture-of-Experts models.

One package, one submodule per component: ``fireflyer.eplb``, ``fireflyer.trace`` (and, as they land,
``mla``, ``gemm``, ``ep``, ``pipe``, ``fs``, ``flow``). The native code lives in the nanobind
extension ``fireflyer._C``; the submodules are thin Python wrappers over it.
"""

from __future__ import annotations

__version__ = "0.1.0"

# NOTE: numpy is loaded before the native extension on purpose. On the GPU machine's image (Ubuntu
# 24.04, torch 2.11 venv), loading fireflyer._C first and pyarrow later, with numpy not yet loaded,
# aborted the process with "free(): invalid pointer" inside pyarrow's library load; with numpy loaded
# first the same imports work. numpy is a dependency of the package anyway.
import numpy  # noqa: F401,E402

try:
    from fireflyer import _C  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "fireflyer's native extension fireflyer._C is not built for this Python "
        f"({error}). Build it with `make` (source checkout, PYTHONPATH=python) or `pip install -e .`."
    ) from error


def built_with_cuda() -> bool:
    """True when the native extension was compiled with CUDA kernels."""
    return _C.common.built_with_cuda()


def visible_gpus() -> list[dict]:
    """The GPUs this process can use (name, SM count, memory); empty without CUDA or a GPU."""
    return _C.common.visible_gpus()


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), for naming the device a CPU number came from."""
    import pathlib
    import platform

    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def set_log_level(level: str) -> None:
    """Sets the native log level: trace, debug, info, warn, error or off."""
    _C.common.set_log_level(level)
