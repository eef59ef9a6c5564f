"""The Markdown tables of docs/mla.md's Performance section from a benchmark JSON (bench_mla.py --out).

Usage: python3 bench/mla/tables_mla.py [bench/results/mla_h200.json]
Prints the main table (every shape: ours bf16 and FP8 beside torch), the h_q 128 kernel variants
(when the run measured them) and the FP8 A/B (when the file has its "fp8_ab" entry)."""

from __future__ import annotations

import json
import pathlib
import sys

VARIANTS = [("ours_bf16", "lean2 (default), 1st"), ("ours_bf16_lean2", "lean2, later"), ("ours_bf16_lean", "lean"),
            ("ours_bf16_lean_bar3", "lean_bar3"), ("ours_bf16_lean_fold", "lean_fold"),
            ("ours_bf16_lean2_early", "lean2_early"), ("ours_bf16_pipelined", "pipelined"),
            ("ours_bf16_seesaw", "seesaw"), ("ours_bf16_cp_async", "cp.async"), ("ours_bf16_mma_sync", "mma.sync")]
AB = [("bf16", "bf16 (default kernel)"), ("fp8_channels", "FP8 channels"), ("fp8_channels_split_s", "FP8 channels, split S"),
      ("fp8_pair", "FP8 pair"), ("fp8_direct", "FP8 direct"), ("fp8_wide", "FP8 wide")]


def length_label(case) -> str:
    return f"{case['mean_len'] // 1024}K {'fixed' if case['lengths'] == 'fixed' else 'var.'}"


def main_table(cases) -> list[str]:
    lines = ["| s_q | h_q | lengths | ours bf16 | GB/s | TFLOPS | bf16 kernel | ours FP8 | FP8 GB/s | FP8 / bf16 | "
             "FP8 kernel | torch SDPA | bmm+softmax |", "|" + "---|" * 13]
    order = sorted(cases, key=lambda c: (c["h_q"], c["lengths"] != "fixed", c["s_q"], c["mean_len"]))
    for c in order:
        bf16, fp8 = c["ours_bf16"], c["ours_fp8"]
        lines.append(f"| {c['s_q']} | {c['h_q']} | {length_label(c)} | {bf16['ms']:.3f} ms | {bf16['GB/s']:.0f} | "
                     f"{bf16['TFLOPS']:.0f} | `{bf16['kernel']}` | {fp8['ms']:.3f} ms | {fp8['GB/s']:.0f} | "
                     f"{c['fp8_speedup_vs_bf16']:.2f}x | `{fp8['kernel']}` | {c['torch_sdpa']['ms']:.3f} ms | "
                     f"{c['torch_bmm_softmax']['ms']:.3f} ms |")
    return lines


def variants_table(cases) -> list[str]:
    wide = [c for c in cases if c["h_q"] == 128 and "ours_bf16_lean" in c]
    if not wide:
        return []
    present = [(key, label) for key, label in VARIANTS if key in wide[0]]
    lines = ["| s_q | lengths | " + " | ".join(label for _, label in present) + " |",
             "|" + "---|" * (2 + len(present))]
    for c in sorted(wide, key=lambda c: (c["lengths"] != "fixed", c["s_q"], c["mean_len"])):
        cells = [f"{c[key]['ms']:.3f} ({c[key]['TFLOPS']:.0f})" for key, _ in present]
        lines.append(f"| {c['s_q']} | {length_label(c)} | " + " | ".join(cells) + " |")
    return lines


def ab_table(ab, cases) -> list[str]:
    """The FP8 A/B; the default kernel's ratio (the main table's FP8 kernel at h_q 16 and that s_q) in bold."""
    default = {c["s_q"]: c["ours_fp8"]["kernel"] for c in cases if c["h_q"] == 16}
    present = [(key, label) for key, label in AB if key in ab["cases"][0]]
    lines = ["| s_q | length | " + " | ".join(label for _, label in present) + " |", "|" + "---|" * (2 + len(present))]
    for c in sorted(ab["cases"], key=lambda c: (c["s_q"], c.get("lengths", "fixed") != "fixed", c["mean_len"])):
        cells = []
        for key, _ in present:
            entry = c[key]
            cell = f"{entry['ms']:.4f} ms, {entry['GB/s']:.0f} GB/s"
            if "speedup_vs_bf16" in entry:
                ratio = f"{entry['speedup_vs_bf16']:.2f}x"
                cell += f", **{ratio}**" if entry.get("kernel") == default.get(c["s_q"]) else f", {ratio}"
            cells.append(cell)
        label = f"{c['mean_len'] // 1024}K" if c.get("lengths", "fixed") == "fixed" else length_label(c)
        lines.append(f"| {c['s_q']} | {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    path = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/mla_h200.json")
    data = json.loads(path.read_text())
    print(f"<!-- {data['device']}, {data['date']} -->\n")
    for lines in (main_table(data["cases"]), variants_table(data["cases"]),
                  ab_table(data["fp8_ab"], data["cases"]) if "fp8_ab" in data else []):
        if lines:
            print("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
