"""Progress of a flow job: a live line per stage on stderr, and an SVG of the job graph."""

from __future__ import annotations

import html
import os
import sys
import time
from dataclasses import dataclass, field


@dataclass
class Stage:
    """One stage of a job: a fused group of operations run as one task per partition."""

    id: int
    label: str
    kind: str  # "source", "pipeline", "shuffle", "gather"
    num_tasks: int
    parents: list[int] = field(default_factory=list)
    done: int = 0
    reused: int = 0
    retries: int = 0
    rows: int = 0
    bytes: int = 0
    start_s: float = 0.0
    end_s: float = 0.0

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end_s or time.time()) - self.start_s) if self.start_s else 0.0


def _human(value: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(value) < 1000 or suffix == "T":
            return f"{value:.0f}{suffix}{unit}" if suffix == "" else f"{value:.1f}{suffix}{unit}"
        value /= 1000.0
    return f"{value}{unit}"


class Progress:
    """Writes one line per stage: in place on a TTY, otherwise at most every ``interval_s`` and at the end."""

    def __init__(self, enabled: bool = True, stream=None, interval_s: float = 2.0):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self._last_print = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self, stage: Stage, total_stages: int) -> str:
        elapsed = stage.seconds
        rate = stage.bytes / elapsed if elapsed > 0 else 0.0
        remaining = stage.num_tasks - stage.done
        eta = elapsed / stage.done * remaining if stage.done else float("nan")
        eta_text = "done" if remaining == 0 else ("ETA ?" if eta != eta else f"ETA {eta:.1f}s")
        reused = f" ({stage.reused} reused)" if stage.reused else ""
        retries = f" {stage.retries} retries" if stage.retries else ""
        return (f"[flow] stage {stage.id + 1} {stage.label}: {stage.done}/{stage.num_tasks} tasks{reused}, "
                f"{_human(stage.rows)} rows, {_human(stage.bytes, 'B')}, {_human(rate, 'B/s')}, "
                f"{elapsed:.1f}s, {eta_text}{retries}")

    def update(self, stage: Stage, total_stages: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.time()
        if self._tty:
            self.stream.write("\r\033[K" + self.line(stage, total_stages) + ("\n" if final else ""))
            self.stream.flush()
        elif final or now - self._last_print >= self.interval_s:
            self.stream.write(self.line(stage, total_stages) + "\n")
            self.stream.flush()
            self._last_print = now


def write_svg(stages: list[Stage], path: str, title: str = "fireflyer.flow job") -> str:
    """Draws the stages as boxes (label, tasks, rows, bytes, time) in columns by depth, with edges."""
    by_id = {stage.id: stage for stage in stages}
    depth: dict[int, int] = {}
    for stage in stages:  # stages are in execution order, so parents come first
        depth[stage.id] = 1 + max((depth.get(p, 0) for p in stage.parents if p in by_id), default=-1)
    columns: dict[int, list[Stage]] = {}
    for stage in stages:
        columns.setdefault(depth[stage.id], []).append(stage)
    box_w, box_h, gap_x, gap_y, margin = 250, 82, 70, 24, 20
    position = {}
    for column, members in columns.items():
        for row, stage in enumerate(members):
            position[stage.id] = (margin + column * (box_w + gap_x), margin + 30 + row * (box_h + gap_y))
    width = margin * 2 + max(1, len(columns)) * (box_w + gap_x) - gap_x
    height = margin * 2 + 30 + max((len(m) for m in columns.values()), default=1) * (box_h + gap_y)
    colors = {"source": "#e8f1fb", "pipeline": "#eaf7ea", "shuffle": "#fdf0e0", "gather": "#f2eaf7"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="12">',
           '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto">'
           '<path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>',
           f'<text x="{margin}" y="{margin + 12}" font-size="14" font-weight="bold">{html.escape(title)}</text>']
    for stage in stages:
        x1, y1 = position[stage.id]
        for parent in stage.parents:
            if parent in position:
                x0, y0 = position[parent]
                out.append(f'<line x1="{x0 + box_w}" y1="{y0 + box_h / 2}" x2="{x1}" y2="{y1 + box_h / 2}" '
                           'stroke="#555" marker-end="url(#arrow)"/>')
    for stage in stages:
        x, y = position[stage.id]
        heading = f"#{stage.id + 1} {stage.label}"
        # About 30 bold monospace characters fit in a box; the full label is the box's tooltip.
        lines = [heading if len(heading) <= 30 else heading[:29] + "\u2026",
                 f"{stage.kind}: {stage.done}/{stage.num_tasks} tasks" + (f" ({stage.reused} reused)" if stage.reused else ""),
                 f"{_human(stage.rows)} rows, {_human(stage.bytes, 'B')}",
                 f"{stage.seconds:.2f} s" + (f", {stage.retries} retries" if stage.retries else "")]
        out.append(f'<g class="stage" id="stage-{stage.id}"><rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" '
                   f'fill="{colors.get(stage.kind, "#eee")}" stroke="#333"><title>{html.escape(heading)}</title></rect>')
        for i, text in enumerate(lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            out.append(f'<text x="{x + 8}" y="{y + 18 + i * 18}"{weight}>{html.escape(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, path)
    return path
