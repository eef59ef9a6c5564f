"""The end-to-end demo behind `make demo`.

Runs each component that exists on its embedded defaults, records a Chrome trace of the demo itself,
analyses that trace with ff-trace, and prints a summary. GPU parts run only where a GPU is present.

    python -m fireflyer.demo --build-dir build --out .demo
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

import fireflyer
from fireflyer import eplb, flow, gemm, mla, pipe, trace

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class Demo:
    def __init__(self, build_dir: pathlib.Path, out_dir: pathlib.Path):
        self.build_dir = build_dir
        self.out_dir = out_dir
        self.summary: list[tuple[str, str]] = []
        self.recorder = trace.global_recorder()
        self.recorder.clear()
        self.recorder.set_process_name("fireflyer demo")
        self.recorder.set_thread_name("demo main")
        self.recorder.enabled = True

    def step(self, title: str):
        print(f"\n== {title}", flush=True)
        return trace.span(title, "demo")

    def tool(self, name: str) -> pathlib.Path:
        path = self.build_dir / "bin" / name
        if not path.exists():
            raise SystemExit(f"demo: {path} is missing; build with `make` first")
        return path

    def run_tool(self, name: str, *args: str) -> str:
        command = [str(self.tool(name)), *args]
        print("$ " + " ".join(os.path.relpath(c) if os.path.exists(c) else c for c in command), flush=True)
        with trace.span(name, "tool"):
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            sys.stderr.write(result.stdout + result.stderr)
            raise SystemExit(f"demo: {name} failed with exit status {result.returncode}")
        return result.stdout

    # --- steps -----------------------------------------------------------------------------------

    def environment(self) -> None:
        with self.step("environment"):
            gpus = fireflyer.visible_gpus()
            print(f"CPU: {fireflyer.cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}")
            print(f"native extension built with CUDA: {fireflyer.built_with_cuda()}")
            if gpus:
                for gpu in gpus:
                    print(f"GPU {gpu['index']}: {gpu['name']}, {gpu['sm_count']} SMs, "
                          f"{gpu['memory_bytes'] / 2**30:.0f} GiB")
            else:
                print("GPU: none visible; GPU parts are skipped and CPU reference paths run")
            self.summary.append(("devices", gpus[0]["name"] if gpus else "CPU only"))

    def eplb_cli(self) -> None:
        with self.step("eplb: ff-eplb on the sample load file"):
            loads = REPO_ROOT / "deploy" / "samples" / "eplb_loads.csv"
            placement = self.out_dir / "eplb_placement.json"
            heatmap = self.out_dir / "eplb_heatmap.svg"
            output = self.run_tool("ff-eplb", str(loads), "--replicas", "40", "--groups", "8", "--nodes", "2",
                                   "--gpus", "8", "--policy", "refine", "--out", str(placement),
                                   "--svg", str(heatmap))
            print(output.rstrip())
            self.summary.append(("eplb sample placement", os.path.relpath(placement)))
            self.summary.append(("eplb heatmap (SVG)", os.path.relpath(heatmap)))

    def eplb_deepseek_shape(self) -> None:
        with self.step("eplb: DeepSeek-V3 shape (58 MoE layers x 256 experts, 288 replicas, 4 nodes x 8 GPUs)"):
            rng = np.random.default_rng(2026)
            ranks = np.arange(1, 257, dtype=np.float64)
            weight = np.stack([rng.permutation(4096 * ranks ** -1.2) for _ in range(58)]).round()
            start = time.perf_counter()
            with trace.span("rebalance_experts anchor", "eplb"):
                phy2log, log2phy, logcnt = eplb.rebalance_experts(weight, 288, 8, 4, 32)
            anchor_ms = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
            with trace.span("rebalance_experts refine", "eplb"):
                *_, stats = eplb.rebalance_experts(weight, 288, 8, 4, 32, policy="refine", return_stats=True)
            refine_ms = (time.perf_counter() - start) * 1e3
            print(f"anchor policy: {anchor_ms:.2f} ms, phy2log {tuple(phy2log.shape)}, "
                  f"log2phy {tuple(log2phy.shape)}, max replicas per expert {int(logcnt.max())}")
            print(f"imbalance (max GPU load / mean): anchor {stats['anchor_imbalance']:.4f}, "
                  f"refine {stats['refined_imbalance']:.4f} ({refine_ms:.2f} ms)")
            self.summary.append(("eplb imbalance anchor -> refine",
                                 f"{stats['anchor_imbalance']:.4f} -> {stats['refined_imbalance']:.4f}"))

    def pipeline(self) -> None:
        with self.step("pipe: DualPipe simulated (PP=8, 20 micro-batches, F=1 B=2 W=1 F&B=2.5)"):
            costs = {"F": 1, "B": 2, "W": 1, "FB": 2.5}
            schedule_trace = self.out_dir / "dualpipe_trace.json"
            schedule_svg = self.out_dir / "dualpipe_schedule.svg"
            result = pipe.simulate("dualpipe", pp=8, chunks=20, costs=costs, trace_path=str(schedule_trace),
                                   svg_path=str(schedule_svg))
            print(result["table"].rstrip())
            print("fastest schedules for PP=8, 20 micro-batches:")
            for entry in pipe.best(8, 20, costs)[:4]:
                print(f"  {entry['schedule']:<10} step {entry['step_time']:7.2f} on {entry['num_ranks']} ranks, "
                      f"peak memory {entry['max_peak_memory']:5.1f}")
            self.summary.append(("DualPipe step / bubble (table)",
                                 f"{result['step_time']:.1f} / {result['max_bubble']:.1f} ({result['table_bubble']:.1f})"))
            self.summary.append(("DualPipe schedule (SVG, trace)",
                                 f"{os.path.relpath(schedule_svg)}, {os.path.relpath(schedule_trace)}"))

    def data_flow(self) -> None:
        with self.step("flow: a partitioned job (read, hash repartition, partial SQL, sort, write Parquet)"):
            if importlib.util.find_spec("duckdb") is None:
                # Only where bootstrap could not install it (FF_ALLOW_MISSING=1 on a machine without a registry).
                print("duckdb is not installed here: the flow step is skipped")
                self.summary.append(("flow job", "skipped: duckdb not installed"))
                return
            data_root = self.out_dir / "flow"
            # A fresh scratch directory: a re-run would otherwise reuse every finished task.
            shutil.rmtree(data_root, ignore_errors=True)
            result = flow.demo_job(str(data_root))
            print(f"{result['rows_in']} rows in, {result['rows_out']} rows out, {result['partitions']} partitions, "
                  f"{result['stages']} stages, {result['tasks_run']} tasks run ({result['tasks_reused']} reused), "
                  f"{result['seconds']:.2f} s; totals match a direct computation: {result['total_matches']}")
            if not result["total_matches"]:
                raise SystemExit("demo: the flow job's totals do not match")
            self.summary.append(("flow job graph (SVG)", os.path.relpath(result["svg"])))

    def expert_parallel(self) -> None:
        with self.step("ep: an MoE layer over 4 CPU processes (dispatch, local experts, combine)"):
            group = f"ff-demo-{os.getpid()}"
            environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
            ranks = [subprocess.Popen([sys.executable, "-m", "fireflyer.ep_demo", "--group", group, "--rank", str(r),
                                       "--num-ranks", "4", "--timeout-s", "30"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=environment) for r in range(4)]
            results = []
            for process in ranks:
                try:
                    out, err = process.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    for other in ranks:
                        other.kill()
                    raise SystemExit("demo: an ep rank did not finish within 120 s")
                if process.returncode != 0:
                    sys.stderr.write(out + err)
                    raise SystemExit(f"demo: ep rank failed with exit status {process.returncode}")
                results.append(json.loads(out.strip().splitlines()[-1]))
            for result in results:
                print(f"rank {result['rank']}: received {result['received_tokens']} tokens, per local expert "
                      f"{result['tokens_per_local_expert']}, calc_diff vs one-process layer {result['calc_diff']:.1e}, "
                      f"{result['ms']:.1f} ms")
            worst = max(result["calc_diff"] for result in results)
            self.summary.append(("ep MoE layer, 4 processes", f"calc_diff {worst:.1e} vs one process"))

    def kernels(self) -> None:
        with self.step("kernels: FP8 GEMM and MLA decode"):
            # The CPU reference implementations first, checked against float64 numpy; then the sm_90a kernels
            # where a GPU, torch and the kernels are present (gemm_on_gpu, mla_on_gpu).
            where = "GPU present:" if fireflyer.visible_gpus() else "no GPU:"
            print(f"{where} running the CPU reference implementations, then the sm_90a kernels where built")
            rng = np.random.default_rng(3)
            x = rng.standard_normal((256, 512)).astype(np.float32)
            w = rng.standard_normal((384, 512)).astype(np.float32)
            start = time.perf_counter()
            with trace.span("gemm_fp8_fp8_bf16_nt (CPU)", "gemm"):
                a, sa = gemm.per_token_cast_to_fp8(x)
                b, sb = gemm.per_block_cast_to_fp8(w)
                out = np.empty((256, 384), np.uint16)
                gemm.gemm_fp8_fp8_bf16_nt((a, sa), (b, sb), out)
            gemm_ms = (time.perf_counter() - start) * 1e3
            gemm_diff = gemm.calc_diff(gemm.bf16_to_float32(out), x.astype(np.float64) @ w.T.astype(np.float64))
            print(f"gemm_fp8_fp8_bf16_nt 256x384x512: calc_diff vs the float64 product of the unquantised inputs "
                  f"{gemm_diff:.2e} (FP8 quantisation), {gemm_ms:.1f} ms")
            # The same layer's weight gradient dW = dY^T X (384 x 512) over its 256 tokens, accumulated in fp32 over
            # two micro-batches of 128 tokens: both operands cast per 1x128 along the tokens.
            dy = rng.standard_normal((256, 384)).astype(np.float32)
            dw = np.zeros((384, 512), np.float32)
            start = time.perf_counter()
            with trace.span("wgrad_gemm_fp8_fp8_fp32_nt (CPU)", "gemm"):
                for tokens in (slice(0, 128), slice(128, 256)):
                    a, sa = gemm.per_token_cast_to_fp8(np.ascontiguousarray(dy[tokens].T))
                    b, sb = gemm.per_token_cast_to_fp8(np.ascontiguousarray(x[tokens].T))
                    gemm.wgrad_gemm_fp8_fp8_fp32_nt((a, sa), (b, sb), dw)
            wgrad_ms = (time.perf_counter() - start) * 1e3
            wgrad_diff = gemm.calc_diff(dw, dy.T.astype(np.float64) @ x.astype(np.float64))
            print(f"wgrad_gemm_fp8_fp8_fp32_nt dW 384x512 over 2 x 128 tokens: calc_diff vs float64 dY^T X "
                  f"{wgrad_diff:.2e} (FP8 quantisation), {wgrad_ms:.1f} ms")
            gemm_diff = max(gemm_diff, wgrad_diff)

            seqlens = np.array([300, 64, 1000, 7], np.int32)
            h_q, blocks_per_seq = 16, 16
            q = gemm.float32_to_bf16(rng.standard_normal((4, 1, h_q, 576)).astype(np.float32))
            cache = gemm.float32_to_bf16(rng.standard_normal((4 * blocks_per_seq, 64, 1, 576)).astype(np.float32))
            block_table = rng.permutation(4 * blocks_per_seq).astype(np.int32).reshape(4, blocks_per_seq)
            start = time.perf_counter()
            with trace.span("flash_mla_with_kvcache (CPU)", "mla"):
                metadata, splits = mla.get_mla_metadata(seqlens, h_q, 1)
                out, lse = mla.flash_mla_with_kvcache(q, cache, block_table, seqlens, 512, metadata, splits)
            mla_ms = (time.perf_counter() - start) * 1e3
            q64 = gemm.bf16_to_float32(q).astype(np.float64)
            cache64 = gemm.bf16_to_float32(cache).astype(np.float64)
            expected = np.zeros((4, 1, h_q, 512))
            for i, n in enumerate(seqlens):
                keys = cache64[block_table[i, np.arange(n) // 64], np.arange(n) % 64, 0]  # (n, 576)
                scores = q64[i, 0] @ keys.T / np.sqrt(576.0)  # (h_q, n)
                weights = np.exp(scores - scores.max(axis=1, keepdims=True))
                expected[i, 0] = weights @ keys[:, :512] / weights.sum(axis=1, keepdims=True)
            mla_diff = gemm.calc_diff(gemm.bf16_to_float32(out), expected)
            print(f"flash_mla_with_kvcache b=4 h_q=16 lengths {seqlens.tolist()}: cos_diff vs float64 attention "
                  f"{mla_diff:.2e}, {mla_ms:.1f} ms")
            self.gemm_on_gpu()
            gpu_diff = self.mla_on_gpu(q, cache, block_table, seqlens, expected)
            if gpu_diff is not None:
                mla_diff = max(mla_diff, gpu_diff)
            if gemm_diff > 1e-2 or mla_diff > 1e-5:
                raise SystemExit("demo: a kernel's CPU reference disagrees with float64")
            self.summary.append(("FP8 GEMM + wgrad / MLA decode (CPU reference)",
                                 f"calc_diff {gemm_diff:.1e} / {mla_diff:.1e}"))

    def gemm_on_gpu(self) -> None:
        """One MoE layer's expert GEMMs on the sm_90a kernels when a GPU, torch and the gemm kernels are present:
        1024 tokens routed top-4 over 16 experts (hidden 2048, expert intermediate 1024), gate/up projection as a
        grouped contiguous GEMM, SiLU-and-multiply, down projection as a second one, the weighted combine; checked
        against float32 torch on the unquantised weights."""
        try:
            import torch
        except ImportError:
            print("MoE expert GEMMs on the GPU: skipped (torch is not installed)")
            return
        if not torch.cuda.is_available():
            print("MoE expert GEMMs on the GPU: skipped (no CUDA GPU)")
            return
        tokens, hidden, inter, experts, top_k = 1024, 2048, 1024, 16, 4
        generator = torch.Generator(device="cuda").manual_seed(5)
        x = torch.randn(tokens, hidden, device="cuda", generator=generator)
        w_up = torch.randn(experts, 2 * inter, hidden, device="cuda", generator=generator) / hidden**0.5
        w_down = torch.randn(experts, hidden, inter, device="cuda", generator=generator) / inter**0.5
        scores = torch.randn(tokens, experts, device="cuda", generator=generator).softmax(dim=1)
        weights, chosen = scores.topk(top_k, dim=1)
        # Contiguous layout: the (token, slot) pairs sorted by expert, each expert's segment padded to 128 rows.
        flat_expert = chosen.flatten()
        order = flat_expert.argsort(stable=True)
        counts = torch.bincount(flat_expert, minlength=experts).tolist()
        align = gemm.get_m_alignment_for_contiguous_layout()
        padded = [-(-c // align) * align for c in counts]
        m_sum = sum(padded)
        rows = torch.cat([torch.arange(p, device="cuda")[:c] + s for c, p, s in
                          zip(counts, padded, [sum(padded[:e]) for e in range(experts)])])
        m_indices = torch.full((m_sum,), -1, dtype=torch.int32, device="cuda")
        m_indices[rows] = flat_expert[order].int()
        gathered = torch.zeros(m_sum, hidden, device="cuda")
        gathered[rows] = x[order // top_k]
        up_q = [gemm.per_block_cast_to_fp8(w_up[e]) for e in range(experts)]
        down_q = [gemm.per_block_cast_to_fp8(w_down[e]) for e in range(experts)]
        b_up, sb_up = torch.stack([q for q, _ in up_q]), torch.stack([s for _, s in up_q])
        b_down, sb_down = torch.stack([q for q, _ in down_q]), torch.stack([s for _, s in down_q])
        try:
            torch.cuda.synchronize()
            start = time.perf_counter()
            with trace.span("MoE expert GEMMs (sm_90a)", "gemm"):
                a, sa = gemm.per_token_cast_to_fp8(gathered)
                up = torch.empty(m_sum, 2 * inter, device="cuda", dtype=torch.bfloat16)
                gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, sa), (b_up, sb_up), up, m_indices)
                act = torch.nn.functional.silu(up[:, :inter].float()) * up[:, inter:].float()
                a2, sa2 = gemm.per_token_cast_to_fp8(act)
                down = torch.empty(m_sum, hidden, device="cuda", dtype=torch.bfloat16)
                gemm.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a2, sa2), (b_down, sb_down), down, m_indices)
                out = torch.zeros(tokens, hidden, device="cuda")
                out.index_add_(0, order // top_k, down[rows].float() * weights.flatten()[order].unsqueeze(1))
                torch.cuda.synchronize()
        except RuntimeError as error:
            print(f"MoE expert GEMMs on the GPU: skipped ({error})")
            return
        ms = (time.perf_counter() - start) * 1e3
        expected = torch.zeros(tokens, hidden, device="cuda")
        for e in range(experts):
            token_ids, slot = (chosen == e).nonzero(as_tuple=True)
            h = x[token_ids] @ w_up[e].t()
            h = torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]
            expected.index_add_(0, token_ids, (h @ w_down[e].t()) * weights[token_ids, slot].unsqueeze(1))
        diff = gemm.calc_diff(out.double().cpu().numpy(), expected.double().cpu().numpy())
        device = torch.cuda.get_device_name()
        print(f"MoE layer on {device}: {tokens} tokens top-{top_k} of {experts} experts, 2 grouped contiguous FP8 "
              f"GEMMs (m_sum {m_sum}): calc_diff vs float32 unquantised {diff:.2e}, {ms:.1f} ms incl. casts")
        if diff > 1e-2:
            raise SystemExit("demo: the sm_90a MoE expert GEMMs disagree with float32")
        self.summary.append(("MoE expert GEMMs (sm_90a FP8)", f"calc_diff {diff:.1e} on {device}"))

    def mla_on_gpu(self, q, cache, block_table, seqlens, expected):
        """The same decode on the sm_90a kernel when a GPU, torch and the mla kernels are present:
        its cos_diff against float64 attention, or None where it cannot run."""
        from fireflyer import _C

        if not fireflyer.visible_gpus() or not _C.mla.HAS_CUDA:
            print("flash_mla_with_kvcache on the GPU: skipped (no GPU, or the mla CUDA kernels are not built)")
            return None
        try:
            import torch
        except ImportError:
            print("flash_mla_with_kvcache on the GPU: skipped (torch is not installed)")
            return None
        if not torch.cuda.is_available():
            print("flash_mla_with_kvcache on the GPU: skipped (torch sees no CUDA device)")
            return None

        def bf16(bits):
            return torch.from_numpy(np.ascontiguousarray(bits).view(np.int16)).view(torch.bfloat16).cuda()

        lengths = torch.from_numpy(seqlens).cuda()
        with trace.span("flash_mla_with_kvcache (sm_90a)", "mla"):
            metadata, splits = mla.get_mla_metadata(lengths, q.shape[2], 1)
            out, _ = mla.flash_mla_with_kvcache(bf16(q), bf16(cache), torch.from_numpy(block_table).cuda(), lengths,
                                                512, metadata, splits)
            torch.cuda.synchronize()
        diff = gemm.calc_diff(out.double().cpu().numpy(), expected)
        print(f"flash_mla_with_kvcache on {torch.cuda.get_device_name()}: cos_diff vs float64 attention {diff:.2e}")
        self.summary.append(("MLA decode (sm_90a kernel)", f"calc_diff {diff:.1e} on {torch.cuda.get_device_name()}"))
        return diff

    def file_system(self) -> None:
        with self.step("fs: the local cluster (mgmtd, meta, 3 storage x 2 targets at replication 3, FUSE mount)"):
            sys.path.insert(0, str(REPO_ROOT / "python" / "tests"))
            from test_fs_support import LocalCluster, fuse_unavailable_reason

            bin_dir = self.build_dir / "bin"
            missing = [t for t in ("ff-mgmtd", "ff-storage", "ff-admin", "ff-fuse") if not (bin_dir / t).exists()]
            reason = (f"{', '.join(missing)} not built (fs needs its libraries)" if missing
                      else fuse_unavailable_reason())
            if reason:
                print(f"fs step skipped: {reason}")
                self.summary.append(("fs local cluster", f"skipped: {reason}"))
                return
            import hashlib

            start = time.perf_counter()
            with LocalCluster(bin_dir, nodes=3, targets_per_node=2, heartbeat_timeout_s=10,
                              stats_interval_s=30) as cluster:
                try:
                    with trace.span("local cluster start", "fs"):
                        mount = cluster.start_all()
                    print(f"cluster up in {time.perf_counter() - start:.1f} s: mgmtd {cluster.mgmtd_address}, "
                          f"meta {', '.join(cluster.meta_addresses.values()) or 'in ff-fuse'}, mount {mount}")
                    rng = np.random.default_rng(6)
                    sums = {}
                    with trace.span("write files through the mount", "fs"):
                        (mount / "demo").mkdir()
                        for i, size in enumerate([0, 1, 4096, 1 << 20, (5 << 20) + 3]):
                            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
                            (mount / "demo" / f"file{i}.bin").write_bytes(data)
                            sums[f"file{i}.bin"] = hashlib.sha256(data).hexdigest()
                    listing = sorted(os.listdir(mount / "demo"))
                    print(f"ls {mount / 'demo'}: " + ", ".join(
                        f"{name} ({(mount / 'demo' / name).stat().st_size} B)" for name in listing))
                    with trace.span("read back and checksum", "fs"):
                        bad = [name for name, digest in sums.items()
                               if hashlib.sha256((mount / "demo" / name).read_bytes()).hexdigest() != digest]
                    if listing != sorted(sums) or bad:
                        raise SystemExit(f"demo: files read back through the mount differ: {bad or listing}")
                    print(f"{len(sums)} files written, listed, read back; sha256 all match")
                except BaseException:
                    print(cluster.logs())
                    raise
            print(f"cluster stopped and unmounted; fs step took {time.perf_counter() - start:.1f} s")
            self.summary.append(("fs local cluster + FUSE", f"{len(sums)} files written, read back, sha256 match"))

    def traces(self) -> None:
        trace_path = self.out_dir / "demo_trace.json"
        with self.step("trace: the demo's own trace, analysed by ff-trace"):
            self.recorder.write_json(str(trace_path))
            timeline = self.out_dir / "demo_timeline.svg"
            report_path = self.out_dir / "demo_trace_report.json"
            output = self.run_tool("ff-trace", str(trace_path), "--top", "8", "--json", str(report_path),
                                   "--svg", str(timeline))
            print(output.rstrip())
            self.summary.append(("demo trace (open in Perfetto UI)", os.path.relpath(trace_path)))
            self.summary.append(("trace timeline (SVG)", os.path.relpath(timeline)))
        # The final trace also holds the analysis step.
        self.recorder.write_json(str(trace_path))

    def run(self) -> None:
        start = time.perf_counter()
        self.environment()
        self.eplb_cli()
        self.eplb_deepseek_shape()
        self.pipeline()
        self.data_flow()
        self.expert_parallel()
        self.file_system()
        self.kernels()
        self.traces()
        self.recorder.enabled = False
        print("\n== summary")
        width = max(len(key) for key, _ in self.summary)
        for key, value in self.summary:
            print(f"  {key:<{width}}  {value}")
        print(f"demo finished in {(time.perf_counter() - start) * 1e3:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=os.environ.get("FF_BUILD_DIR", "build"))
    parser.add_argument("--out", default=".demo", help="scratch directory for everything the demo writes")
    args = parser.parse_args(argv)
    out_dir = pathlib.Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    Demo(pathlib.Path(args.build_dir).resolve(), out_dir).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
