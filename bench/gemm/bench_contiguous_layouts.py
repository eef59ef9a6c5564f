"""The contiguous grouped GEMM on uneven segment layouts: the 256-row tile (indexed_256x128_cluster1x2, which runs
a tile holding two groups as two passes over K) against the 128-row tile it replaces (indexed_128x128_overlap) and
the heuristic's choice, beside one torch._scaled_mm (row-wise scales) per segment, in one run.

Layouts of m_sum = 32768 rows: equal segments (8 x 4096, every boundary on a 256-row tile edge), 8 and 32 segments of
random multiples of 128 rows (seeded; about half the boundaries fall inside a 256-row tile), and 32 segments of
random row counts each padded with -1 rows to a multiple of 128. Each record gives the layout's tiles holding two
groups ("split_tiles" of "tiles_m"), TFLOPS per configuration (median over rotated rounds; FLOP counts the valid
rows only), the baseline's and the ratios; each configuration's output is checked against the dequantised product
per segment (calc_diff). Timing as bench_gemm.py (CUDA graphs of 10 calls, median of cudaEvent times).

  PYTHONPATH=python python3 bench/gemm/bench_contiguous_layouts.py [--rounds 3] [--out PATH]
(`make bench` runs it; without torch or a CUDA GPU it prints why it skips.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import random
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_gemm  # noqa: E402

SHAPES = [(7168, 2048), (4096, 7168)]
M_SUM = 32768
CONFIGS = ["", "indexed_256x128_cluster1x2", "indexed_128x128_overlap"]


def layouts(seed: int) -> dict:
    """{name: [(group, valid rows, padded rows)]}: segments in group order, each padded to a multiple of 128."""
    rng = random.Random(seed)

    def random_blocks(groups: int) -> list:
        # `groups` positive block counts summing to M_SUM / 128.
        total = M_SUM // 128
        cuts = sorted(rng.sample(range(1, total), groups - 1))
        return [b - a for a, b in zip([0] + cuts, cuts + [total])]

    result = {"equal_8": [(g, 4096, 4096) for g in range(8)],
              "random_8": [(g, blocks * 128, blocks * 128) for g, blocks in enumerate(random_blocks(8))],
              "random_32": [(g, blocks * 128, blocks * 128) for g, blocks in enumerate(random_blocks(32))]}
    unaligned = []
    for g, blocks in enumerate(random_blocks(32)):
        rows = blocks * 128 - rng.randrange(0, 128)
        unaligned.append((g, rows, blocks * 128))
    result["unaligned_32"] = unaligned
    return result


def split_tiles(segments) -> tuple[int, int]:
    """(256-row tiles whose two 128-row blocks hold two different groups, padding blocks ignored; all tiles)."""
    blocks = []
    for group, rows, padded in segments:
        blocks += [group if b * 128 < rows else -1 for b in range(padded // 128)]
    tiles = [blocks[i:i + 2] for i in range(0, len(blocks), 2)]
    split = sum(1 for t in tiles if len(t) == 2 and t[0] >= 0 and t[1] >= 0 and t[0] != t[1])
    return split, len(tiles)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch = bench_gemm.import_cuda_torch("bench_contiguous_layouts")
    if torch is None:
        return 0
    from fireflyer import gemm

    device = torch.cuda.get_device_name()
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    records = []
    for n, k in SHAPES:
        for name, segments in layouts(args.seed).items():
            groups = len(segments)
            m = sum(padded for _, _, padded in segments)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(groups, n, k, device="cuda", dtype=torch.bfloat16)
            a, sa_rows = bench_gemm.quantize_rows(torch, x)
            sa = gemm.get_col_major_tma_aligned_tensor(sa_rows)
            qs = [bench_gemm.quantize_blocks(torch, w[g]) for g in range(groups)]
            b = torch.stack([q for q, _ in qs])
            sb = torch.stack([s for _, s in qs])
            indices, spans, begin = [], [], 0
            for group, rows, padded in segments:
                indices += [group] * rows + [-1] * (padded - rows)
                spans.append((begin, begin + rows, group))
                begin += padded
            m_indices = torch.tensor(indices, device="cuda", dtype=torch.int32)
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            valid = sum(rows for _, rows, _ in segments)
            flop = 2.0 * valid * n * k
            call = lambda: gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, sa), (b, sb), out, m_indices)  # noqa: E731
            diffs, times = {}, {config: [] for config in CONFIGS}
            for config in CONFIGS:
                bench_gemm.force_config(config)
                out.fill_(float("nan"))
                call()
                torch.cuda.synchronize()
                diffs[config or "heuristic"] = bench_gemm.grouped_diff(torch, a, sa_rows, b, sb, out, spans)
            for r in range(args.rounds):
                order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
                for config in order:
                    bench_gemm.force_config(config)
                    times[config].append(bench_gemm.time_graph(torch, call))
            bench_gemm.force_config("")
            scaled_inputs = []
            for begin, end, group in spans:
                xa, xs = bench_gemm.row_scales(torch, x[begin:end])
                wb, ws = bench_gemm.row_scales(torch, w[group])
                scaled_inputs.append((xa, xs, wb, ws))

            def scaled_all():
                for xa, xs, wb, ws in scaled_inputs:
                    torch._scaled_mm(xa, wb.t(), scale_a=xs, scale_b=ws.view(1, n), out_dtype=torch.bfloat16)

            scaled = bench_gemm.time_graph(torch, scaled_all)
            tflops = {config or "heuristic": round(flop / statistics.median(t) / 1e12, 1) for config, t in times.items()}
            split, tiles_m = split_tiles(segments)
            record = {"case": "contiguous_layout", "layout": name, "groups": groups, "m_sum": m, "valid_rows": valid,
                      "n": n, "k": k, "device": device, "split_tiles": split, "tiles_m": tiles_m,
                      "heuristic": gemm.heuristic_choice("contiguous", m // groups, n, k, groups, num_sms),
                      "tflops": tflops, "scaled_mm_rowwise_tflops": round(flop / scaled / 1e12, 1),
                      "ratio_vs_scaled_mm": round(scaled / statistics.median(times[""]), 3),
                      "ratio_256_vs_128": round(tflops["indexed_256x128_cluster1x2"] /
                                                tflops["indexed_128x128_overlap"], 3),
                      "calc_diff_vs_dequantised": diffs}
            print(json.dumps(record), flush=True)
            records.append(record)
            del x, w, a, sa, b, sb, out, m_indices
    out_path = pathlib.Path(args.out) if args.out else (
        bench_gemm.REPO_ROOT / "bench" / "results" / f"gemm_{bench_gemm.device_slug(device)}_contiguous_layouts.json")
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out_path.write_text(json.dumps({"benchmark": "gemm_contiguous_layouts", "device": device, "num_sms": num_sms,
                                    "date": date, "rounds": args.rounds, "seed": args.seed, "cases": records},
                                   indent=2) + "\n")
    print(f"wrote {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
