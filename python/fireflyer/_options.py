"""Keyword arguments of the DeepSeek APIs we mirror (DeepEP, DeepGEMM) that do not apply here.

A call written for the anchor must never get a silently different answer: its scheduling and tuning hints are
accepted and ignored, arguments that would change the result are accepted only at the anchor's default (any
other value raises NotImplementedError naming it, before anything runs), and any other keyword is a TypeError.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping


def _describe(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_describe(item) for item in value) + ")"
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (int, float)):
        return f"<{type(value).__name__} of shape {tuple(shape)}>"
    return repr(value)


def check_anchor_options(function: str, options: Mapping[str, Any], hints: Collection[str],
                         defaults: Mapping[str, Any], notes: Mapping[str, str] = {}) -> None:
    """``hints``: accepted, no effect. ``defaults``: name -> the only value accepted (None: must be None).
    ``notes``: name -> what to do instead, appended to the refusal."""
    for name, value in options.items():
        if name in defaults:
            default = defaults[name]
            if (value is not None) if default is None else (value != default):
                raise NotImplementedError(f"{function}: {name}={_describe(value)} is not supported (only "
                                          f"{default!r}){notes.get(name, '')}")
        elif name not in hints:
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")
