#!/usr/bin/env python3
"""Our mla and gemm kernels beside the anchors' own kernels (FlashMLA's dense decode, DeepGEMM's FP8 GEMMs) on the
same GPU, in the same run, timed the same way; writes bench/results/anchors_<device>.json.

The anchors come prebuilt (see bench/baselines/README.md: `bash bench/baselines/fetch.sh` puts them under
.baselines/, which the GPU machine needs beside the build). Each case first checks that ours and the anchor
compute the same thing (cos_diff of the two outputs), then times both in --rounds rounds whose order alternates
(A B, B A, ...; each timing a CUDA graph of --calls calls, replayed --repeats times, median), and reports the
median over the rounds: the GPU's clock under its power cap moves with what ran just before, and alternating
gives both sides the same history. --sustained: for the heaviest shapes, each side also replays its graph back
to back for --sustained-seconds (after 0.5 s of settling), alternating over --rounds, which is the throughput at
the power cap.

  PYTHONPATH=python python3 bench/baselines/bench_anchors.py [--part mla,gemm,wgrad] [--quick] [--out PATH]
  python3 bench/baselines/bench_anchors.py --prewarm [--shard I/N]   # only compile DeepGEMM's kernels for every shape
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "python"))
sys.path.insert(0, str(REPO_ROOT / "bench" / "mla"))
sys.path.insert(0, str(REPO_ROOT / "bench" / "gemm"))
# The issue benchmarks' shapes, casts and helpers (capture_graph: warm-up on a side stream, `calls` calls in one graph).
from bench_gemm import CONTIGUOUS, DENSE_M, DENSE_NK, MASKED, quantize_blocks, quantize_rows  # noqa: E402
from bench_mla import BATCH, PAGE, capture_graph, cos_diff, quantize_fp8, replay_median  # noqa: E402

ANCHORS = REPO_ROOT / ".baselines" / "py"

MLA_LENGTHS = [1024, 4096, 8192, 16384, 32768]
# The heaviest shapes, also timed back to back (--sustained).
SUSTAINED_MLA = [(1, 128, 8192), (2, 128, 8192)]
SUSTAINED_GEMM = [("dense", (4096, 7168, 16384)), ("dense", (4096, 4096, 7168)), ("contiguous", CONTIGUOUS[0])]
# The weight-gradient GEMMs (--part wgrad): DeepGEMM's wgrad test shapes, (m, n) = a weight's shape, k = tokens;
# k-grouped: (groups, m, n, tokens per group).
WGRAD = [(m, n, k) for k in (4096, 8192)
         for m, n in ((7168, 2112), (1536, 24576), (512, 32768), (16384, 7168), (7168, 4096), (2048, 7168))]
K_GROUPED_WGRAD = [(4, 4096, 7168, 8192), (4, 7168, 2048, 8192), (8, 4096, 7168, 4096), (8, 7168, 2048, 4096)]


def load_anchors():
    """(deep_gemm, flash_mla_interface) from .baselines/py, each None when it does not load (with the reason)."""
    sys.path.insert(0, str(ANCHORS))
    reasons = {}
    deep_gemm = flash_mla = None
    try:
        from vllm.third_party import deep_gemm  # noqa: F811
    except Exception as e:  # reported in the JSON
        reasons["deep_gemm"] = f"{type(e).__name__}: {e}"
    try:
        from vllm.third_party.flashmla import flash_mla_interface as flash_mla  # noqa: F811
    except Exception as e:
        reasons["flash_mla"] = f"{type(e).__name__}: {e}"
    return deep_gemm, flash_mla, reasons


def time_graph(torch, graph, calls, repeats, warmup_s=0.05):
    """Seconds per call: the graph replayed untimed for warmup_s, then `repeats` timed replays, median."""
    begin = time.perf_counter()
    while time.perf_counter() - begin < warmup_s:
        graph.replay()
        torch.cuda.synchronize()
    return replay_median(graph, calls, repeats) / 1e3


def sustained(torch, graph, calls, seconds):
    """Seconds per call while the graph replays back to back for `seconds` (after 0.5 s of settling)."""
    begin = time.perf_counter()
    while time.perf_counter() - begin < 0.5:
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    replays = 0
    start.record()
    begin = time.perf_counter()
    while time.perf_counter() - begin < seconds:
        graph.replay()
        replays += 1
        if replays % 8 == 0:
            torch.cuda.synchronize()  # keep the host at most 8 replays ahead
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / (replays * calls)


def captured(torch, fn, calls, environment):
    """capture() with `environment` set while the calls are made (the kernel choice is fixed at capture)."""
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        return capture_graph(fn, calls)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def alternate(torch, functions: dict, args, seconds=None):
    """Median seconds per call of each function over args.rounds rounds of alternating order. functions: name ->
    callable, or (callable, environment variables set while it is captured)."""
    graphs = {}
    for name, fn in functions.items():
        fn, environment = fn if isinstance(fn, tuple) else (fn, {})
        graphs[name] = captured(torch, fn, args.calls, environment)
    samples = {name: [] for name in functions}
    names = list(functions)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            if seconds:
                samples[name].append(sustained(torch, graphs[name], args.calls, seconds))
            else:
                samples[name].append(time_graph(torch, graphs[name], args.calls, args.repeats))
    del graphs
    return {name: statistics.median(values) for name, values in samples.items()}


# ---------------------------------------------------------------------------------------------------- mla


def mla_inputs(torch, s_q, h_q, length, variable, generator):
    if variable:
        seqlens = torch.randint(length // 2, length * 3 // 2 + 1, (BATCH,), generator=generator)
    else:
        seqlens = torch.full((BATCH,), length)
    seqlens = seqlens.int()
    blocks = (seqlens + PAGE - 1) // PAGE
    num_blocks = int(blocks.sum())
    table = torch.zeros((BATCH, int(blocks.max())), dtype=torch.int32)
    physical = torch.randperm(num_blocks, generator=generator).int()
    offset = 0
    for i in range(BATCH):
        table[i, : blocks[i]] = physical[offset: offset + blocks[i]]
        offset += int(blocks[i])
    cache = torch.randn((num_blocks, PAGE, 1, 576), dtype=torch.bfloat16, device="cuda")
    q = torch.randn((BATCH, s_q, h_q, 576), dtype=torch.bfloat16, device="cuda")
    return q, cache, table.cuda(), seqlens.cuda(), int(seqlens.sum())


def mla_functions(torch, mla, flash_mla, q, cache, table, seqlens, num_sms):
    s_q, h_q = q.shape[1], q.shape[2]
    metadata, splits = mla.get_mla_metadata(seqlens, s_q * h_q, 1, num_sms=num_sms)
    sched, _ = flash_mla.get_mla_metadata()

    def ours():
        return mla.flash_mla_with_kvcache(q, cache, table, seqlens, 512, metadata, splits, check_values=False)

    def anchor():
        return flash_mla.flash_mla_with_kvcache(q, cache, table, seqlens, 512, sched, None)

    return ours, anchor


def run_mla(torch, flash_mla, args, num_sms, emit, variants=(False,)):
    from fireflyer import mla

    generator = torch.Generator().manual_seed(2025 + int(variants[0]))
    lengths = [8192] if args.quick else [int(x) for x in args.lengths.split(",")]
    for variable in variants:
        for length in lengths:
            for s_q in (1, 2):
                for h_q in [int(x) for x in args.h_q.split(",")]:
                    q, cache, table, seqlens, total = mla_inputs(torch, s_q, h_q, length, variable, generator)
                    ours, anchor = mla_functions(torch, mla, flash_mla, q, cache, table, seqlens, num_sms)
                    (o_out, o_lse), (a_out, a_lse) = ours(), anchor()
                    diff = cos_diff(o_out, a_out)
                    lse_diff = float((o_lse.float() - a_lse.float()).abs().max())
                    candidates = {"ours": ours, "flash_mla": anchor}
                    kernels = {"kernel_ours": mla.last_cuda_kernel()}
                    if s_q * h_q < 64 and args.mla_few_rows:
                        # The few-row shapes: our WGMMA kernel on them too (FF_MLA_KERNEL=wgmma: the tile's rows
                        # past s_q * h_q zero), and the FP8 cache on its few-row kernel and on the WGMMA kernel
                        # (issue #7 asks the FP8 cache >= 1.5x the bf16 speed where memory-bound).
                        candidates["ours_wgmma"] = (ours, {"FF_MLA_KERNEL": "wgmma"})
                        os.environ["FF_MLA_KERNEL"] = "wgmma"
                        w_out, _ = ours()
                        kernels["kernel_ours_wgmma"] = mla.last_cuda_kernel()
                        del os.environ["FF_MLA_KERNEL"]
                        kernels["cos_diff_ours_wgmma_vs_flash_mla"] = cos_diff(w_out, a_out)
                        metadata, splits = mla.get_mla_metadata(seqlens, s_q * h_q, 1, num_sms=num_sms)
                        fp8_cache = quantize_fp8(cache)

                        def ours_fp8():
                            return mla.flash_mla_with_kvcache(q, fp8_cache, table, seqlens, 512, metadata, splits,
                                                              is_fp8_kvcache=True, check_values=False)

                        f_out, _ = ours_fp8()
                        kernels["kernel_ours_fp8"] = mla.last_cuda_kernel()
                        kernels["cos_diff_ours_fp8_vs_flash_mla_bf16"] = cos_diff(f_out, a_out)
                        candidates["ours_fp8"] = ours_fp8
                        candidates["ours_fp8_wgmma"] = (ours_fp8, {"FF_MLA_KERNEL": "wgmma"})
                    seconds = alternate(torch, candidates, args)
                    flops = 2.0 * s_q * total * h_q * (576 + 512)
                    moved = total * 576 * 2 + q.numel() * 2 + BATCH * s_q * h_q * 512 * 2
                    record = {"part": "mla", "b": BATCH, "s_q": s_q, "h_q": h_q, "mean_len": length,
                              "lengths": "variable" if variable else "fixed", "sum_len": total,
                              "cos_diff_ours_vs_flash_mla": diff, "lse_max_abs_diff": lse_diff, **kernels}
                    for name, s in seconds.items():
                        record[name] = {"us": round(s * 1e6, 2), "GB/s": round(moved / s / 1e9, 1),
                                        "TFLOPS": round(flops / s / 1e12, 1)}
                    record["ratio_vs_flash_mla"] = round(seconds["flash_mla"] / seconds["ours"], 3)
                    for name in ("ours_fp8", "ours_fp8_wgmma"):
                        if name in seconds:  # GB/s of the bytes the FP8 cache moves
                            s8 = seconds[name]
                            record[name]["GB/s"] = round((moved - total * (576 * 2 - 656)) / s8 / 1e9, 1)
                    if "ours_wgmma" in seconds:
                        record["ratio_wgmma_vs_flash_mla"] = round(seconds["flash_mla"] / seconds["ours_wgmma"], 3)
                    emit(record)


def sustained_mla(torch, flash_mla, args, num_sms, emit):
    from fireflyer import mla

    generator = torch.Generator().manual_seed(7)
    for s_q, h_q, length in SUSTAINED_MLA:
        q, cache, table, seqlens, total = mla_inputs(torch, s_q, h_q, length, False, generator)
        ours, anchor = mla_functions(torch, mla, flash_mla, q, cache, table, seqlens, num_sms)
        seconds = alternate(torch, {"ours": ours, "flash_mla": anchor}, args, seconds=args.sustained_seconds)
        flops = 2.0 * s_q * total * h_q * (576 + 512)
        record = {"part": "mla_sustained", "b": BATCH, "s_q": s_q, "h_q": h_q, "mean_len": length,
                  "seconds_per_side_per_round": args.sustained_seconds, "rounds": args.rounds}
        for name, s in seconds.items():
            record[name] = {"us": round(s * 1e6, 2), "TFLOPS": round(flops / s / 1e12, 1)}
        record["ratio_vs_flash_mla"] = round(seconds["flash_mla"] / seconds["ours"], 3)
        emit(record)


# --------------------------------------------------------------------------------------------------- gemm


def col_major_aligned(torch, s):
    """(Not fireflyer.gemm.get_col_major_tma_aligned_tensor: --prewarm runs while fireflyer is being built.)
    (…, mn, kb) fp32 -> the same values with mn contiguous, each column padded to a multiple of 4 floats
    (the TMA-aligned layout both kernels read A's scales in)."""
    *lead, mn, kb = s.shape
    aligned = (mn + 3) // 4 * 4
    storage = torch.zeros(*lead, kb, aligned, dtype=torch.float32, device=s.device)
    storage[..., :mn] = s.transpose(-1, -2)
    return storage.transpose(-1, -2)[..., :mn, :]


def gemm_case(torch, kind, shape, generator):
    """Inputs of one case and the two calls ("ours", "deep_gemm") writing separate outputs."""
    torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=generator)))
    if kind == "dense":
        m, n, k = shape
        a, sa = quantize_rows(torch, torch.randn(m, k, device="cuda"))
        b, sb = quantize_blocks(torch, torch.randn(n, k, device="cuda"))
        return {"a": a, "sa": col_major_aligned(torch, sa), "b": b, "sb": sb, "flop": 2.0 * m * n * k,
                "bytes": m * k + n * k + 2 * m * n, "outs": [torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
                                                          for _ in range(2)]}
    if kind == "contiguous":
        groups, m_per, n, k = shape
        m = groups * m_per
        a, sa = quantize_rows(torch, torch.randn(m, k, device="cuda"))
        qs = [quantize_blocks(torch, torch.randn(n, k, device="cuda")) for _ in range(groups)]
        indices = torch.arange(groups, device="cuda", dtype=torch.int32).repeat_interleave(m_per)
        return {"a": a, "sa": col_major_aligned(torch, sa), "b": torch.stack([q for q, _ in qs]),
                "sb": torch.stack([s for _, s in qs]), "indices": indices, "flop": 2.0 * m * n * k,
                "bytes": m * k + groups * n * k + 2 * m * n,
                "outs": [torch.empty(m, n, dtype=torch.bfloat16, device="cuda") for _ in range(2)]}
    if kind == "wgrad":
        m, n, k = shape
        a, sa = quantize_rows(torch, torch.randn(m, k, device="cuda"))
        b, sb = quantize_rows(torch, torch.randn(n, k, device="cuda"))
        return {"a": a, "sa": col_major_aligned(torch, sa), "b": b, "sb": col_major_aligned(torch, sb),
                "flop": 2.0 * m * n * k, "bytes": m * k + n * k + 8 * m * n,
                "outs": [torch.zeros(m, n, dtype=torch.float32, device="cuda") for _ in range(2)]}
    if kind == "k_grouped_wgrad":
        groups, m, n, k = shape
        # Each group's (m, k) and (n, k) blocks K-major one after another; scales (groups * k / 128, rows).
        a_parts = [quantize_rows(torch, torch.randn(m, k, device="cuda")) for _ in range(groups)]
        b_parts = [quantize_rows(torch, torch.randn(n, k, device="cuda")) for _ in range(groups)]
        sizes = [k] * groups
        return {"a": torch.cat([q.reshape(-1) for q, _ in a_parts]),
                "sa": torch.cat([s.T for _, s in a_parts]).contiguous(),
                "b": torch.cat([q.reshape(-1) for q, _ in b_parts]),
                "sb": torch.cat([s.T for _, s in b_parts]).contiguous(),
                "sizes": sizes, "sizes_tensor": torch.tensor(sizes, dtype=torch.int32, device="cuda"),
                "flop": 2.0 * groups * m * n * k, "bytes": groups * (m * k + n * k + 8 * m * n),
                "outs": [torch.zeros(groups, m, n, dtype=torch.float32, device="cuda") for _ in range(2)]}
    groups, m_max, n, k = shape
    a, sa = quantize_rows(torch, torch.randn(groups * m_max, k, device="cuda"))
    qs = [quantize_blocks(torch, torch.randn(n, k, device="cuda")) for _ in range(groups)]
    return {"a": a.view(groups, m_max, k), "sa": col_major_aligned(torch, sa.view(groups, m_max, k // 128)),
            "b": torch.stack([q for q, _ in qs]), "sb": torch.stack([s for _, s in qs]),
            "masked_m": torch.full((groups,), m_max, dtype=torch.int32, device="cuda"), "expected_m": m_max,
            "flop": 2.0 * groups * m_max * n * k, "bytes": groups * (m_max * k + n * k + 2 * m_max * n),
            "outs": [torch.empty(groups, m_max, n, dtype=torch.bfloat16, device="cuda") for _ in range(2)]}


def gemm_functions(gemm, deep_gemm, kind, c):
    a, sa, b, sb = c["a"], c["sa"], c["b"], c["sb"]
    ours_out, anchor_out = c["outs"]
    if kind == "dense":
        def ours():
            gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), ours_out)

        def anchor():
            deep_gemm.fp8_gemm_nt((a, sa), (b, sb), anchor_out)
    elif kind == "contiguous":
        def ours():
            gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, sa), (b, sb), ours_out, c["indices"])

        def anchor():
            deep_gemm.m_grouped_fp8_gemm_nt_contiguous((a, sa), (b, sb), anchor_out, c["indices"])
    elif kind == "wgrad":
        def ours():
            gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), ours_out)

        def anchor():  # DeepGEMM's sm90 1D1D kernel: d = c + a b^T in fp32, in place
            deep_gemm.fp8_gemm_nt((a, sa), (b, sb), anchor_out, c=anchor_out, recipe=(1, 1, 128))
    elif kind == "k_grouped_wgrad":
        def ours():
            gemm.k_grouped_wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), ours_out, c["sizes"])

        def anchor():  # DeepGEMM takes the scales as the (rows, sum of k / 128) view of the same memory
            deep_gemm.k_grouped_fp8_gemm_nt_contiguous((a, sa.T), (b, sb.T), anchor_out, c["sizes"],
                                                       c["sizes_tensor"], anchor_out, recipe=(1, 1, 128))
    else:
        def ours():
            gemm.m_grouped_gemm_fp8_fp8_bf16_nt_masked((a, sa), (b, sb), ours_out, c["masked_m"], c["expected_m"])

        def anchor():
            deep_gemm.m_grouped_fp8_gemm_nt_masked((a, sa), (b, sb), anchor_out, c["masked_m"], c["expected_m"])
    return ours, anchor


def gemm_shapes(quick, wgrad=False):
    if wgrad:
        if quick:
            return [("wgrad", WGRAD[-3]), ("k_grouped_wgrad", K_GROUPED_WGRAD[0])]
        return [("wgrad", s) for s in WGRAD] + [("k_grouped_wgrad", s) for s in K_GROUPED_WGRAD]
    if quick:
        return [("dense", (4096, 7168, 16384)), ("contiguous", CONTIGUOUS[0]), ("masked", MASKED[0])]
    return ([("dense", (m, n, k)) for m in DENSE_M for n, k in DENSE_NK] + [("contiguous", s) for s in CONTIGUOUS]
            + [("masked", s) for s in MASKED])


def gemm_record(kind, shape):
    if kind in ("dense", "wgrad"):
        return {"case": kind, "m": shape[0], "n": shape[1], "k": shape[2]}
    if kind == "k_grouped_wgrad":
        return {"case": kind, "groups": shape[0], "m": shape[1], "n": shape[2], "k_per_group": shape[3]}
    key = "m_per_group" if kind == "contiguous" else "m"
    return {"case": kind, "groups": shape[0], key: shape[1], "n": shape[2], "k": shape[3]}


def parse_environment(text):
    """'NAME=VALUE[,NAME=VALUE...]' -> dict ('' -> {})."""
    environment = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if not name or not _:
            raise SystemExit(f"--gemm-alt: '{item}' is not NAME=VALUE")
        environment[name] = value
    return environment


def case_label(kind, shape):
    """'dense:64,7168,2048' (the form --gemm-filter matches and profile_gemm_pair.py takes)."""
    return f"{kind}:{','.join(map(str, shape))}"


def run_gemm(torch, deep_gemm, args, emit, wgrad=False):
    from fireflyer import gemm

    generator = torch.Generator().manual_seed(8)
    alts = [parse_environment(text) for text in args.gemm_alt]
    for kind, shape in gemm_shapes(args.quick, wgrad):
        if args.gemm_filter and not any(case_label(kind, shape).startswith(f) for f in args.gemm_filter.split(";")):
            continue
        c = gemm_case(torch, kind, shape, generator)
        ours, anchor = gemm_functions(gemm, deep_gemm, kind, c)
        ours()
        record = {"part": "wgrad" if wgrad else "gemm", **gemm_record(kind, shape)}
        try:
            anchor()
        except Exception as error:  # noqa: BLE001 - the anchor's refusal is a result to record, not a crash
            record["deep_gemm_error"] = f"{type(error).__name__}: {error}"[:300]
            emit(record)
            del c
            continue
        torch.cuda.synchronize()
        record["calc_diff_ours_vs_deep_gemm"] = cos_diff(c["outs"][0].float(), c["outs"][1].float())
        candidates = {"ours": ours, "deep_gemm": anchor}
        # Ours again with each --gemm-alt's environment variables, in the same alternating rounds: ours_alt,
        # ours_alt2, ...
        alt_names = ["ours_alt" if i == 0 else f"ours_alt{i + 1}" for i in range(len(alts))]
        for name, text, alt in zip(alt_names, args.gemm_alt, alts):
            candidates[name] = (ours, alt)
            record[f"{name}_environment"] = text
            # The alternative's own output against DeepGEMM's (ours' output buffer rewritten under its environment).
            c["outs"][0].zero_()
            captured(torch, ours, 1, alt).replay()
            torch.cuda.synchronize()
            record[f"calc_diff_{name}_vs_deep_gemm"] = cos_diff(c["outs"][0].float(), c["outs"][1].float())
        seconds = alternate(torch, candidates, args)
        for name, s in seconds.items():
            record[name] = {"us": round(s * 1e6, 2), "TFLOPS": round(c["flop"] / s / 1e12, 1),
                            "GB/s": round(c["bytes"] / s / 1e9, 1)}
        record["ratio_vs_deep_gemm"] = round(seconds["deep_gemm"] / seconds["ours"], 3)
        for name in alt_names:
            key = "ratio_alt_vs_deep_gemm" if name == "ours_alt" else f"ratio_{name[5:]}_vs_deep_gemm"
            record[key] = round(seconds["deep_gemm"] / seconds[name], 3)
        emit(record)
        del c


def sustained_gemm(torch, deep_gemm, args, emit):
    from fireflyer import gemm

    generator = torch.Generator().manual_seed(9)
    for kind, shape in SUSTAINED_GEMM:
        c = gemm_case(torch, kind, shape, generator)
        ours, anchor = gemm_functions(gemm, deep_gemm, kind, c)
        seconds = alternate(torch, {"ours": ours, "deep_gemm": anchor}, args, seconds=args.sustained_seconds)
        record = {"part": "gemm_sustained", **gemm_record(kind, shape),
                  "seconds_per_side_per_round": args.sustained_seconds, "rounds": args.rounds}
        for name, s in seconds.items():
            record[name] = {"us": round(s * 1e6, 2), "TFLOPS": round(c["flop"] / s / 1e12, 1)}
        record["ratio_vs_deep_gemm"] = round(seconds["deep_gemm"] / seconds["ours"], 3)
        emit(record)
        del c


def prewarm(torch, deep_gemm, shard, parts):
    """Compiles DeepGEMM's kernel for every benchmark shape of the GEMM parts asked for (gemm, wgrad; its JIT caches
    them on disk): shard i of n."""
    index, count = shard
    generator = torch.Generator().manual_seed(8)
    shapes = (gemm_shapes(False) if "gemm" in parts else []) + (gemm_shapes(False, True) if "wgrad" in parts else [])
    for i, (kind, shape) in enumerate(shapes):
        if i % count != index:
            continue
        c = gemm_case(torch, kind, shape, generator)
        begin = time.time()
        try:
            gemm_functions(None, deep_gemm, kind, c)[1]()
            torch.cuda.synchronize()
        except Exception as error:  # noqa: BLE001 - the benchmark records the anchor's refusal itself
            print(f"prewarm {kind} {shape}: {type(error).__name__}: {error}"[:300], flush=True)
        print(f"prewarm {kind} {shape}: {time.time() - begin:.1f} s", flush=True)
        del c


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="mla,gemm,wgrad")
    parser.add_argument("--quick", action="store_true",
                        help="8K fixed lengths only; three GEMM shapes, two weight-gradient ones")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sustained", action="store_true", help="also the back-to-back throughput of the heaviest shapes")
    parser.add_argument("--sustained-seconds", type=float, default=2.0)
    parser.add_argument("--h-q", default="16,128", help="MLA query heads")
    parser.add_argument("--lengths", default=",".join(str(x) for x in MLA_LENGTHS), help="MLA mean cache lengths")
    parser.add_argument("--fixed-only", action="store_true", help="MLA: fixed lengths only")
    parser.add_argument("--mla-few-rows", action="store_true",
                        help="MLA with fewer than 64 rows: also our WGMMA kernel (FF_MLA_KERNEL=wgmma) and the FP8 "
                             "cache on its few-row kernel and on the WGMMA kernel")
    parser.add_argument("--gemm-alt", action="append", default=[],
                        help="NAME=VALUE[,...]: also time our GEMM captured with these environment variables "
                             "(ours_alt, same rounds), e.g. FF_GEMM_PDL=0; repeated: ours_alt2, ours_alt3, ...")
    parser.add_argument("--gemm-filter", default="",
                        help="only GEMM cases whose label starts with one of these (';'-separated), labels as "
                             "'dense:64,7168,2048', 'contiguous:4,8192,4096,7168', 'masked:1,1024,4096,7168'")
    parser.add_argument("--prewarm", action="store_true")
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print(json.dumps({"benchmark": "anchors", "skipped": "torch is not installed"}))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"benchmark": "anchors", "skipped": "no CUDA GPU"}))
        return 0
    deep_gemm, flash_mla, reasons = load_anchors()
    if deep_gemm is None and flash_mla is None:
        print(json.dumps({"benchmark": "anchors", "skipped": "the anchors' kernels are not here (bench/baselines/fetch.sh)",
                          "reasons": reasons}))
        return 0
    if args.prewarm:
        if deep_gemm is None:
            print(f"prewarm: DeepGEMM does not load: {reasons}")
            return 1
        prewarm(torch, deep_gemm, tuple(int(x) for x in args.shard.split("/")), args.part.split(","))
        return 0
    device = torch.cuda.get_device_name()
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    slug = "h200" if "H200" in device else "h100" if "H100" in device else device.lower().replace(" ", "_")
    out = args.out or REPO_ROOT / "bench" / "results" / f"anchors_{slug}.json"
    records = []
    started = time.time()

    def write():
        document = {
            "benchmark": "ours beside the anchors' kernels on one GPU, same run, same timing",
            "device": device, "num_sms": num_sms, "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "anchors": {"flash_mla": "FlashMLA dense decode (sm90), as built into the vllm 0.24.0 wheel",
                        "deep_gemm": f"DeepGEMM {getattr(deep_gemm, '__version__', '?')} (sm90 FP8 1D2D kernels, its "
                                     "own JIT with nvcc), as built into the vllm 0.24.0 wheel"},
            "method": (f"per case: both outputs compared, then {args.rounds} rounds of alternating order; each timing "
                       f"a CUDA graph of {args.calls} calls, replayed untimed for 50 ms then {args.repeats} times, "
                       "median of cudaEvent times; the figure is the median over rounds. *_sustained: each side "
                       f"replays its graph back to back for {args.sustained_seconds} s after 0.5 s of settling, "
                       f"alternating over {args.rounds} rounds, median"),
            "inputs": "A's scales in the TMA-aligned column-major layout both GEMMs read (no repack in either); MLA: "
                      "random bf16 paged cache (page 64), permuted block table, non-causal; variable lengths "
                      "uniform in [L/2, 3L/2], seeded; ours_fp8*: our FP8 cache (656 bytes per token) of the same "
                      "values; ours_wgmma / ours_fp8_wgmma: FF_MLA_KERNEL=wgmma (the WGMMA kernel on fewer than "
                      "64 rows)",
            "seconds": round(time.time() - started, 1),
            "cases": records,
        }
        out.write_text(json.dumps(document, indent=1) + "\n")

    def emit(record):
        print(json.dumps(record), flush=True)
        records.append(record)
        write()  # after every case: a run cut short keeps what it measured

    # In order of importance (a run cut short by its time limit keeps what it measured): fixed MLA lengths, the
    # GEMMs, the sustained figures, variable MLA lengths.
    parts = args.part.split(",")
    for part, anchor in (("mla", flash_mla), ("gemm", deep_gemm), ("wgrad", deep_gemm)):
        if part in parts and anchor is None:
            emit({"part": part, "skipped": reasons})
    mla_on = "mla" in parts and flash_mla is not None
    gemm_on = "gemm" in parts and deep_gemm is not None
    wgrad_on = "wgrad" in parts and deep_gemm is not None
    if mla_on:
        run_mla(torch, flash_mla, args, num_sms, emit, variants=(False,))
    if gemm_on:
        run_gemm(torch, deep_gemm, args, emit)
    if wgrad_on:
        run_gemm(torch, deep_gemm, args, emit, wgrad=True)
    if args.sustained and mla_on:
        sustained_mla(torch, flash_mla, args, num_sms, emit)
    if args.sustained and gemm_on:
        sustained_gemm(torch, deep_gemm, args, emit)
    if mla_on and not (args.quick or args.fixed_only):
        run_mla(torch, flash_mla, args, num_sms, emit, variants=(True,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
