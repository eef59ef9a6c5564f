"""fireflyer.ep's CUDA intranode backend against its CPU backend: one subprocess per rank, all ranks on
the one visible GPU (several processes per GPU is how it is tested on one H200).

Each rank derives every rank's inputs from one seed, runs the same calls on a CPU ``Buffer`` and on a
CUDA ``Buffer`` (torch tensors) and checks that the CUDA results equal the CPU ones (bit for bit where
the CPU reference fixes the order of every addition; within float32 rounding for the low-latency
combine, whose additions are ordered by top-k slot). Skips without torch, a GPU or the CUDA backend.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
import uuid

import pytest

from fireflyer import _C

PYTHON_DIR = pathlib.Path(__file__).resolve().parents[1]


def _gpu_ready() -> str | None:
    if not _C.ep.cuda_backend_built():
        return "the ep CUDA backend is not built"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


pytestmark = pytest.mark.skipif(_gpu_ready() is not None, reason=str(_gpu_ready()))

_WORKER = r'''
import os, signal, sys, time
import numpy as np
import torch
from fireflyer import ep

group, rank, num_ranks, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
timeout_s = float(os.environ.get("EP_TIMEOUT", "20"))
hidden, num_topk, num_experts = 256, 3, 4 * num_ranks
per_rank = num_experts // num_ranks
# EP_TEST_SPREAD=1: rank r on GPU r % device_count (peers over NVLink), else every rank on GPU 0.
device = torch.device("cuda", rank % torch.cuda.device_count() if os.environ.get("EP_TEST_SPREAD") == "1" else 0)
torch.cuda.set_device(device)

def inputs(r, num_tokens, skew=False):
    rng = np.random.default_rng(1000 + r)
    x = rng.uniform(-2, 2, size=(num_tokens, hidden)).astype(np.float32)
    choices = per_rank if skew else num_experts  # skew: only rank 0's experts, the others receive nothing
    topk = np.stack([rng.choice(choices, size=num_topk, replace=False) for _ in range(num_tokens)]).astype(np.int64)
    topk[rng.random(topk.shape) < 0.2] = -1
    weights = rng.uniform(0.1, 1.0, size=topk.shape).astype(np.float32) * (topk >= 0)
    return x, topk, weights

def calc_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denominator = (a * a + b * b).sum()
    return 0.0 if denominator == 0 else 1 - 2 * (a * b).sum() / denominator

def bf16_bits(x):
    return (x.view(np.uint32) >> 16).astype(np.uint16)

def to_cuda_bf16(bits):
    return torch.from_numpy(bits.view(np.int16)).to(device).view(torch.bfloat16)

def from_cuda_bf16(t):
    return t.view(torch.int16).cpu().numpy().view(np.uint16)

def check_rows(what, name, cuda, cpu):
    """recv_x of one dispatch case on both backends: FP8 (codes, scales), bfloat16 bits, or float32."""
    if name == "float8":
        check_equal(what + " fp8 codes", cuda[0].view(torch.uint8).cpu().numpy(), cpu[0])
        check_equal(what + " fp8 scales", cuda[1].cpu().numpy(), cpu[1])
    elif name == "bfloat16":
        check_equal(what + " bf16", from_cuda_bf16(cuda), cpu)
    else:
        check_equal(what, cuda.cpu().numpy(), cpu)

def check_equal(what, cuda, cpu):
    cuda, cpu = np.asarray(cuda), np.asarray(cpu)
    assert cuda.shape == cpu.shape, (what, cuda.shape, cpu.shape)
    if not np.array_equal(cuda, cpu):
        bad = np.argwhere(cuda != cpu)
        raise AssertionError(f"rank {rank} {what}: {len(bad)} of {cuda.size} differ, first at {bad[0]}: "
                             f"{cuda[tuple(bad[0])]} vs {cpu[tuple(bad[0])]}")

tokens_of = lambda r: 9 + 3 * r
cpu = ep.Buffer((group + "_cpu", rank, num_ranks), num_nvl_bytes=16 << 20, timeout_s=timeout_s, backend="cpu")
gpu = ep.Buffer((group + "_gpu", rank, num_ranks), num_nvl_bytes=64 << 20, timeout_s=timeout_s, backend="cuda")

def normal_round(skew):
    x, topk, weights = inputs(rank, tokens_of(rank), skew)
    topk_t, weights_t = torch.from_numpy(topk).to(device), torch.from_numpy(weights).to(device)
    cpu_layout = cpu.get_dispatch_layout(topk, num_experts)
    gpu_layout = gpu.get_dispatch_layout(topk_t, num_experts)
    assert gpu_layout[1] is None
    for name, a, b in zip(("num_tokens_per_rank", "num_tokens_per_expert", "is_token_in_rank"),
                          (gpu_layout[0], gpu_layout[2], gpu_layout[3]), (cpu_layout[0], cpu_layout[2], cpu_layout[3])):
        check_equal(name, a.cpu().numpy(), b)
    per_rank_t, _, per_expert_t, in_rank_t = gpu_layout
    codes = np.random.default_rng(7 + rank).integers(0, 126, size=x.shape).astype(np.uint8)
    codes |= (np.random.default_rng(8 + rank).random(x.shape) < 0.5).astype(np.uint8) << 7
    scales = np.random.default_rng(9 + rank).uniform(0.01, 2, size=(x.shape[0], hidden // 128)).astype(np.float32)
    cases = [("float32", x, torch.from_numpy(x).to(device)),
             ("bfloat16", bf16_bits(x), to_cuda_bf16(bf16_bits(x))),
             ("float8", (codes, scales), (torch.from_numpy(codes).to(device).view(torch.float8_e4m3fn),
                                          torch.from_numpy(scales).to(device)))]
    cpu_args = dict(topk_idx=topk, topk_weights=weights, num_tokens_per_rank=cpu_layout[0],
                    is_token_in_rank=cpu_layout[3], num_tokens_per_expert=cpu_layout[2], expert_alignment=2)
    gpu_args = dict(topk_idx=topk_t, topk_weights=weights_t, num_tokens_per_rank=per_rank_t,
                    is_token_in_rank=in_rank_t, num_tokens_per_expert=per_expert_t, expert_alignment=2)
    for name, x_cpu, x_gpu in cases:
        r_cpu = cpu.dispatch(x_cpu, **cpu_args)
        r_gpu = gpu.dispatch(x_gpu, **gpu_args)
        check_rows("recv_x", name, r_gpu[0], r_cpu[0])
        check_equal(name + " recv_topk_idx", r_gpu[1].cpu().numpy(), r_cpu[1])
        check_equal(name + " recv_topk_weights", r_gpu[2].cpu().numpy(), r_cpu[2])
        assert r_gpu[3] == r_cpu[3], (name, r_gpu[3], r_cpu[3])
        handle_cpu, handle_gpu = r_cpu[4], r_gpu[4]
        # Cached dispatch moves the same rows.
        cached_cpu = cpu.dispatch(x_cpu, handle=handle_cpu)
        cached_gpu = gpu.dispatch(x_gpu, handle=handle_gpu)
        assert cached_gpu[1] is None and cached_gpu[3] is None
        check_rows("cached recv_x", name, cached_gpu[0], cached_cpu[0])
        # num_worst_tokens: the same padded outputs (zeros, top-k indices -1) and an empty per-expert list.
        worst = handle_cpu.num_recv_tokens + 3
        p_cpu = cpu.dispatch(x_cpu, **cpu_args, num_worst_tokens=worst)
        p_gpu = gpu.dispatch(x_gpu, **gpu_args, num_worst_tokens=worst)
        assert p_cpu[3] == [] and p_gpu[3] == []
        check_rows("padded recv_x", name, p_gpu[0], p_cpu[0])
        check_equal(name + " padded recv_topk_idx", p_gpu[1].cpu().numpy(), p_cpu[1])
        check_equal(name + " padded recv_topk_weights", p_gpu[2].cpu().numpy(), p_cpu[2])
        assert (p_cpu[1][handle_cpu.num_recv_tokens:] == -1).all()
        if name == "float8":
            continue
        padded_combined_gpu, _ = gpu.combine(p_gpu[0], p_gpu[4], topk_weights=p_gpu[2])
        padded_combined_cpu, _ = cpu.combine(p_cpu[0], p_cpu[4], topk_weights=p_cpu[2])
        got = from_cuda_bf16(padded_combined_gpu) if name == "bfloat16" else padded_combined_gpu.cpu().numpy()
        check_equal(name + " combined_x of a padded dispatch", got, padded_combined_cpu)
        # Combine: unweighted sums in source-rank order, bit-identical to the CPU reference.
        combined_cpu, w_cpu = cpu.combine(r_cpu[0], handle_cpu, topk_weights=r_cpu[2])
        combined_gpu, w_gpu = gpu.combine(r_gpu[0], handle_gpu, topk_weights=r_gpu[2])
        if name == "bfloat16":
            check_equal("bf16 combined_x", from_cuda_bf16(combined_gpu), combined_cpu)
        else:
            check_equal("combined_x", combined_gpu.cpu().numpy(), combined_cpu)
            receivers = cpu_layout[3].sum(axis=1, dtype=np.float32)[:, None]
            assert calc_diff(combined_gpu.cpu().numpy(), x * receivers) < 5e-6
        check_equal(name + " combined weights", w_gpu.cpu().numpy(), w_cpu)
        # DeepEP's bias (0 + bias0 + bias1 before the ranks' rows): bit-identical to the CPU reference, one and two
        # bias matrices.
        brng = np.random.default_rng(31 + rank)
        b0 = brng.uniform(-1, 1, size=x.shape).astype(np.float32)
        b1 = brng.uniform(-1, 1, size=x.shape).astype(np.float32)
        if name == "bfloat16":
            b0, b1 = bf16_bits(b0), bf16_bits(b1)
            b0_t, b1_t = to_cuda_bf16(b0), to_cuda_bf16(b1)
        else:
            b0_t, b1_t = torch.from_numpy(b0).to(device), torch.from_numpy(b1).to(device)
        for bias_cpu, bias_gpu in (((b0, b1), (b0_t, b1_t)), (b1, b1_t), ((None, b0), (None, b0_t))):
            biased_cpu, _ = cpu.combine(r_cpu[0], handle_cpu, bias=bias_cpu)
            biased_gpu, _ = gpu.combine(r_gpu[0], handle_gpu, bias=bias_gpu)
            got = from_cuda_bf16(biased_gpu) if name == "bfloat16" else biased_gpu.cpu().numpy()
            check_equal(name + " combined_x with bias", got, biased_cpu)
            assert not np.array_equal(biased_cpu, combined_cpu)

def low_latency_round(use_fp8, rounds=2, round_scale=False):
    max_tokens = tokens_of(num_ranks - 1)  # every rank's tokens fit
    x, topk, weights = inputs(rank, tokens_of(rank))
    bits = bf16_bits(x)
    topk_t, weights_t = torch.from_numpy(topk).to(device), torch.from_numpy(weights).to(device)
    stats_cpu = np.zeros(per_rank, np.int32)
    stats_gpu = torch.zeros(per_rank, dtype=torch.int32, device=device)
    for round_index in range(rounds):
        recv_cpu, count_cpu, handle_cpu, _, hook_cpu = cpu.low_latency_dispatch(
            bits, topk, max_tokens, num_experts, stats_cpu, use_fp8=use_fp8, return_recv_hook=True,
            round_scale=round_scale)
        hook_cpu()
        recv_gpu, count_gpu, handle_gpu, event, hook_gpu = gpu.low_latency_dispatch(
            to_cuda_bf16(bits), topk_t, max_tokens, num_experts, cumulative_local_expert_recv_stats=stats_gpu,
            use_fp8=use_fp8, return_recv_hook=(round_index == 0), round_scale=round_scale)
        event.current_stream_wait()
        hook_gpu()
        counts = count_gpu.cpu().numpy()
        check_equal("recv_count", counts, count_cpu)
        check_equal("cumulative recv stats", stats_gpu.cpu().numpy(), stats_cpu)
        check_equal("cumulative recv stats after this round", stats_cpu, count_cpu * (round_index + 1))
        for e in range(per_rank):
            n = counts[e]
            if use_fp8:
                codes = recv_gpu[0][e, :n].view(torch.uint8).cpu().numpy()
                mismatch = float(np.mean(codes != recv_cpu[0][e, :n])) if n else 0.0
                assert mismatch <= 1e-3, (e, mismatch)
                assert np.allclose(recv_gpu[1][e, :n].cpu().numpy(), recv_cpu[1][e, :n], rtol=1e-6, atol=0)
                if round_scale:  # powers of two, the same bits as the CPU's
                    check_equal(f"round_scale scales expert {e}", recv_gpu[1][e, :n].cpu().numpy(), recv_cpu[1][e, :n])
                    assert (np.frexp(recv_cpu[1][e, :n])[0] == 0.5).all()
            else:
                check_equal(f"ll recv_x expert {e}", from_cuda_bf16(recv_gpu[e, :n]), recv_cpu[e, :n])
        # Expert outputs: the CPU backend's received rows (dequantized), the same input on both backends.
        if use_fp8:
            table = np.array([(-1) ** (c >> 7) * ((2.0 ** ((c >> 3 & 15) - 7) * (1 + (c & 7) / 8)) if c >> 3 & 15
                                                  else (2.0 ** -6 * (c & 7) / 8)) for c in range(256)], np.float32)
            values = table[recv_cpu[0]] * np.repeat(recv_cpu[1], 128, axis=2)
        else:
            values = (recv_cpu.astype(np.uint32) << 16).view(np.float32)
        expert_bits = bf16_bits(np.ascontiguousarray(values, dtype=np.float32))
        combined_cpu, _, hook = cpu.low_latency_combine(expert_bits, topk, weights, handle_cpu)
        # The second round writes into a caller's tensor (DeepEP's out), which the call returns.
        out = torch.full((x.shape[0], hidden), float("nan"), dtype=torch.bfloat16, device=device) if round_index else None
        combined_gpu, event, hook = gpu.low_latency_combine(to_cuda_bf16(expert_bits), topk_t, weights_t, handle_gpu,
                                                            return_recv_hook=(round_index == 1), out=out)
        assert out is None or combined_gpu is out
        hook()
        if round_index == 0:
            # DeepEP's zero_copy: the rows come from get_next_low_latency_combine_buffer(handle), not from x.
            staged = gpu.get_next_low_latency_combine_buffer(handle_gpu)
            assert staged.dtype == torch.bfloat16 and staged.device == device
            staged.copy_(to_cuda_bf16(expert_bits))
            from_staged, _, _ = gpu.low_latency_combine(torch.zeros_like(staged), topk_t, weights_t, handle_gpu,
                                                        zero_copy=True)
            check_equal("zero_copy combined_x", from_cuda_bf16(from_staged), from_cuda_bf16(combined_gpu))
        a = (from_cuda_bf16(combined_gpu).astype(np.uint32) << 16).view(np.float32)
        b = (combined_cpu.astype(np.uint32) << 16).view(np.float32)
        assert calc_diff(a, b) < 1e-5, calc_diff(a, b)
        assert np.abs(a - b).max() <= 0.02 * max(1.0, float(np.abs(b).max())), np.abs(a - b).max()
        expected = x * (weights * (topk >= 0)).sum(axis=1, keepdims=True)
        assert calc_diff(a, expected) < (1e-3 if use_fp8 else 1e-4), calc_diff(a, expected)

if mode == "all":
    normal_round(skew=False)
    normal_round(skew=True)
    low_latency_round(use_fp8=False)
    low_latency_round(use_fp8=True)
    low_latency_round(use_fp8=True, rounds=1, round_scale=True)
    normal_round(skew=False)  # back to the normal mode after low-latency calls
    gpu.synchronize()
elif mode == "dead_rank":
    if rank == num_ranks - 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.3)
    x, topk, weights = inputs(rank, tokens_of(rank))
    started = time.monotonic()
    try:
        per_rank_t, _, per_expert_t, in_rank_t = gpu.get_dispatch_layout(torch.from_numpy(topk).to(device), num_experts)
        gpu.dispatch(torch.from_numpy(x).to(device), topk_idx=torch.from_numpy(topk).to(device),
                     num_tokens_per_expert=per_expert_t)
    except Exception as error:
        assert f"rank {num_ranks - 1}" in str(error), str(error)
        assert time.monotonic() - started < 5, time.monotonic() - started
        print("ERROR", error)
        sys.exit(42)
    raise AssertionError("dispatch succeeded with a dead rank")
elif mode == "mismatch":
    # The ranks dispatch rows of different widths: an error on every rank naming the other, not garbage.
    topk_t = torch.from_numpy(inputs(rank, 8)[1]).to(device)
    width = hidden if rank == 0 else 2 * hidden
    try:
        gpu.dispatch(torch.ones((8, width), device=device), topk_idx=topk_t,
                     num_tokens_per_expert=gpu.get_dispatch_layout(topk_t, num_experts)[2])
    except Exception as error:
        assert f"rank {1 - rank}" in str(error) and "hidden" in str(error), str(error)
        print("ERROR", error)
        sys.exit(42)
    raise AssertionError("dispatch succeeded with mismatched shapes")
elif mode == "silent_rank":
    # One low-latency round with every rank, then the last rank stays alive but never makes the next call:
    # the others' receive kernels must time out on the GPU and report it, not hang.
    x, topk, weights = inputs(rank, tokens_of(rank))
    x_t, topk_t = to_cuda_bf16(bf16_bits(x)), torch.from_numpy(topk).to(device)
    gpu.low_latency_dispatch(x_t, topk_t, 24, num_experts, use_fp8=True)
    gpu.synchronize()
    if rank == num_ranks - 1:
        time.sleep(timeout_s * 3)
        sys.exit(42)
    started = time.monotonic()
    try:
        gpu.low_latency_dispatch(x_t, topk_t, 24, num_experts, use_fp8=True)
        gpu.synchronize()
    except Exception as error:
        assert f"rank {num_ranks - 1}" in str(error) and "timed out" in str(error), str(error)
        assert time.monotonic() - started < timeout_s * 2 + 3, time.monotonic() - started
        print("ERROR", error)
        sys.exit(42)
    raise AssertionError("low_latency_dispatch succeeded with a silent rank")
gpu.close()
cpu.close()
print("OK")
'''


def _run_ranks(num_ranks: int, mode: str, timeout_s: float = 150, env_extra: dict | None = None) -> list[int]:
    group = f"pytest_cuda_{mode}_{uuid.uuid4().hex[:10]}"
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR), **(env_extra or {}))
    processes = [
        subprocess.Popen([sys.executable, "-c", _WORKER, group, str(rank), str(num_ranks), mode], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(num_ranks)
    ]
    codes = []
    deadline = time.monotonic() + timeout_s
    for rank, process in enumerate(processes):
        try:
            stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail(f"rank {rank} of {mode} still running after {timeout_s} s (a hang)")
        print(f"rank {rank} exit {process.returncode} stdout: {stdout.strip()[-500:]}")
        if process.returncode not in (0, 42, -9):
            print(f"rank {rank} stderr:\n{stderr[-4000:]}")
        codes.append(process.returncode)
    return codes


@pytest.mark.parametrize("num_ranks", [2, 4, 8])
def test_cuda_matches_cpu_backend(num_ranks: int) -> None:
    assert _run_ranks(num_ranks, "all") == [0] * num_ranks


def test_cuda_host_layout_matches_cpu_backend() -> None:
    # The host-planned normal mode (FF_EP_NORMAL_LAYOUT=host) stays correct too.
    assert _run_ranks(2, "all", env_extra={"FF_EP_NORMAL_LAYOUT": "host"}) == [0, 0]


def test_cuda_two_gpus_match_cpu_backend() -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs (one rank per GPU, peers over NVLink)")
    assert _run_ranks(2, "all", env_extra={"EP_TEST_SPREAD": "1"}) == [0, 0]


def test_cuda_killed_rank_is_an_error() -> None:
    assert _run_ranks(2, "dead_rank", env_extra={"EP_TIMEOUT": "10"}) == [42, -9]


def test_cuda_mismatched_shapes_are_an_error() -> None:
    assert _run_ranks(2, "mismatch", env_extra={"EP_TIMEOUT": "10"}) == [42, 42]


def test_cuda_silent_rank_times_out_on_the_gpu() -> None:
    assert _run_ranks(2, "silent_rank", env_extra={"EP_TIMEOUT": "2"}) == [42, 42]
