"""fireflyer.ep (CPU shared-memory backend) through the Python API, with one subprocess per rank.

Each rank runs _WORKER, derives every rank's inputs from the same seed, checks what it receives against a
plain numpy computation and exits 0; the parent bounds every run so that a hang is a failure.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import uuid

import numpy as np
import pytest

from fireflyer import ep

PYTHON_DIR = pathlib.Path(__file__).resolve().parents[1]

_WORKER = r'''
import os, signal, sys, time
import numpy as np
from fireflyer import ep

group, rank, num_ranks, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
hidden, num_topk, num_experts = 256, 3, 4 * num_ranks
per_rank = num_experts // num_ranks

def inputs(r, num_tokens):
    rng = np.random.default_rng(1000 + r)
    x = rng.uniform(-2, 2, size=(num_tokens, hidden)).astype(np.float32)
    topk = np.stack([rng.choice(num_experts, size=num_topk, replace=False) for _ in range(num_tokens)]).astype(np.int64)
    topk[rng.random(topk.shape) < 0.2] = -1
    weights = rng.uniform(0.1, 1.0, size=topk.shape).astype(np.float32) * (topk >= 0)
    return x, topk, weights

def calc_diff(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    denominator = (a * a + b * b).sum()
    return 0.0 if denominator == 0 else 1 - 2 * (a * b).sum() / denominator

tokens_of = lambda r: 9 + 3 * r
x, topk, weights = inputs(rank, tokens_of(rank))
buffer = ep.Buffer((group, rank, num_ranks), num_nvl_bytes=16 << 20, timeout_s=float(os.environ.get("EP_TIMEOUT", "10")))

if mode == "normal":
    per_rank_count, none, per_expert, in_rank = buffer.get_dispatch_layout(topk, num_experts)
    assert none is None
    owner = np.where(topk >= 0, topk // per_rank, -1)
    expected_in_rank = np.stack([(owner == r).any(axis=1) for r in range(num_ranks)], axis=1)
    assert (in_rank == expected_in_rank).all() and (per_rank_count == expected_in_rank.sum(0)).all()
    recv_x, recv_idx, recv_w, counts, handle = buffer.dispatch(
        x, topk_idx=topk, topk_weights=weights, num_tokens_per_rank=per_rank_count, is_token_in_rank=in_rank,
        num_tokens_per_expert=per_expert, expert_alignment=2)
    expected = []
    for src in range(num_ranks):
        sx, stopk, _ = inputs(src, tokens_of(src))
        mine = ((stopk >= rank * per_rank) & (stopk < (rank + 1) * per_rank)).any(axis=1)
        expected.append(sx[mine])
    expected = np.concatenate(expected)
    assert np.array_equal(recv_x, expected), (recv_x.shape, expected.shape)
    local = recv_idx[recv_idx >= 0]
    assert counts == [int(-(-(local == e).sum() // 2) * 2) for e in range(per_rank)], counts
    cached_x, *_ = buffer.dispatch(x, handle=handle)
    assert np.array_equal(cached_x, recv_x)
    combined_x, combined_w = buffer.combine(recv_x, handle, topk_weights=recv_w)
    receivers = expected_in_rank.sum(axis=1, dtype=np.float32)[:, None]
    assert calc_diff(combined_x, x * receivers) < 5e-6
    assert np.allclose(combined_w, weights)
    # bfloat16 (uint16 bit patterns) goes through unchanged.
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)
    recv_bits, *_ = buffer.dispatch(bits, handle=handle)
    assert recv_bits.dtype == np.uint16 and np.array_equal(recv_bits, (expected.view(np.uint32) >> 16).astype(np.uint16))
    # DeepEP's num_worst_tokens: the outputs padded to that many rows (zeros; top-k indices -1), no per-expert list,
    # and the handle's combine and cached dispatch take and give that many rows.
    received = len(expected)
    worst = received + 5
    p_x, p_idx, p_w, p_counts, p_handle = buffer.dispatch(
        x, topk_idx=topk, topk_weights=weights, num_tokens_per_rank=per_rank_count, is_token_in_rank=in_rank,
        num_tokens_per_expert=per_expert, expert_alignment=2, num_worst_tokens=worst)
    assert p_counts == [] and p_x.shape == (worst, hidden) and p_idx.shape == (worst, num_topk)
    assert np.array_equal(p_x[:received], recv_x) and (p_x[received:] == 0).all()
    assert np.array_equal(p_idx[:received], recv_idx) and (p_idx[received:] == -1).all()
    assert np.array_equal(p_w[:received], recv_w) and (p_w[received:] == 0).all()
    p_cached, none_idx, _, none_counts, _ = buffer.dispatch(x, handle=p_handle)
    assert none_idx is None and none_counts is None and p_cached.shape == (worst, hidden)
    assert np.array_equal(p_cached[:received], recv_x)
    p_combined, p_combined_w = buffer.combine(p_x, p_handle, topk_weights=p_w)
    assert np.array_equal(p_combined, combined_x) and np.array_equal(p_combined_w, combined_w)
    # DeepEP's bias: each token's float32 sum starts at 0 + bias0 + bias1, then takes the ranks' rows in rank
    # order, rounded once: float32 exactly so; bfloat16 rounded to nearest even once.
    brng = np.random.default_rng(77 + rank)
    b0 = brng.uniform(-1, 1, size=x.shape).astype(np.float32)
    b1 = brng.uniform(-1, 1, size=x.shape).astype(np.float32)
    def biased_sum(rows, first, second):
        acc = np.float32(0) + first
        if second is not None:
            acc = acc + second
        for r in range(num_ranks):
            acc = acc + np.where(expected_in_rank[:, r:r + 1], rows, np.float32(0))
        return acc
    two, _ = buffer.combine(recv_x, handle, bias=(b0, b1))
    assert two.dtype == np.float32 and np.array_equal(two, biased_sum(x, b0, b1))
    one, _ = buffer.combine(recv_x, handle, bias=b1)
    assert np.array_equal(one, biased_sum(x, b1, None))
    to_float = lambda b: (b.astype(np.uint32) << 16).view(np.float32)
    def to_bf16(f):
        u = f.view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    b0_bits, b1_bits = to_bf16(b0), to_bf16(b1)
    bf16_two, _ = buffer.combine(recv_bits, handle, bias=(b0_bits, b1_bits))
    assert bf16_two.dtype == np.uint16
    assert np.array_equal(bf16_two, to_bf16(biased_sum(to_float(bits), to_float(b0_bits), to_float(b1_bits))))
elif mode in ("low_latency", "low_latency_fp8", "low_latency_fp8_round_scale"):
    use_fp8 = "fp8" in mode
    round_scale = mode.endswith("round_scale")
    max_tokens = 24
    recv, count, handle, event, hook = buffer.low_latency_dispatch(
        x, topk, max_tokens, num_experts, use_fp8=use_fp8, return_recv_hook=True, round_scale=round_scale)
    event.current_stream_wait()
    hook()
    if use_fp8:
        codes, scales = recv
        assert codes.dtype == np.uint8 and scales.shape == (per_rank, max_tokens * num_ranks, hidden // 128)
        # Dequantize with a table built from the e4m3fn definition (bias 7, 3 mantissa bits).
        table = np.array([(-1) ** (c >> 7) * ((2.0 ** ((c >> 3 & 15) - 7) * (1 + (c & 7) / 8)) if c >> 3 & 15 else
                                              (2.0 ** -6 * (c & 7) / 8)) for c in range(256)], dtype=np.float32)
        values = table[codes] * np.repeat(scales, 128, axis=2)

    else:
        values = recv
    for e in range(per_rank):
        rows = [sx[t] for src in range(num_ranks) for sx, stopk, _ in [inputs(src, tokens_of(src))]
                for t in range(len(sx)) if (stopk[t] == rank * per_rank + e).any()]
        assert count[e] == len(rows), (e, count[e], len(rows))
        if rows and use_fp8:
            # Each scale: amax / 448, or with round_scale the power of two at or above amax * (1 / 448) (DeepEP's,
            # 2^ceil(log2)), exactly.
            amax = np.maximum(np.abs(np.stack(rows)).reshape(len(rows), -1, 128).max(axis=2), np.float32(1e-4))
            got = scales[e, :len(rows)]
            if round_scale:
                above = amax * np.float32(1 / 448)
                mantissa, exponent = np.frexp(above)  # above = mantissa * 2^exponent, mantissa in [0.5, 1)
                expected = np.ldexp(np.float32(1), np.where(mantissa == 0.5, exponent - 1, exponent)).astype(np.float32)
                assert np.array_equal(got, expected), (got, expected)
            else:
                assert np.array_equal(got, amax / np.float32(448)), (got, amax / 448)
        if rows:
            tolerance = 0.15 if use_fp8 else 0
            assert np.abs(values[e, :len(rows)] - np.stack(rows)).max() <= tolerance
    combined, event, hook = buffer.low_latency_combine(values.astype(np.float32), topk, weights, handle,
                                                       return_recv_hook=True)
    hook()
    expected = x * (weights * (topk >= 0)).sum(axis=1, keepdims=True)
    assert calc_diff(combined, expected) < (1e-3 if use_fp8 else 5e-6), calc_diff(combined, expected)
    # DeepEP's out: the result lands there (in the hook), and it is what the call returns.
    out = np.full_like(combined, np.nan)
    again, _, hook = buffer.low_latency_combine(values.astype(np.float32), topk, weights, handle,
                                                return_recv_hook=True, out=out)
    assert again is out and np.isnan(out).all()
    hook()
    assert np.array_equal(out, combined)
    # DeepEP's zero_copy: the expert outputs are read from get_next_low_latency_combine_buffer(handle) (bfloat16
    # bits here), not from x.
    bits = (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    from_x, _, _ = buffer.low_latency_combine(bits, topk, weights, handle)
    staged = buffer.get_next_low_latency_combine_buffer(handle)
    assert staged.shape == bits.shape and staged.dtype == np.uint16
    assert buffer.get_next_low_latency_combine_buffer(handle) is staged
    staged[...] = bits
    from_staged, _, _ = buffer.low_latency_combine(np.zeros_like(bits), topk, weights, handle, zero_copy=True)
    assert from_staged.dtype == np.uint16 and np.array_equal(from_staged, from_x)
elif mode == "dead_rank":
    if rank == num_ranks - 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    started = time.monotonic()
    try:
        buffer.get_dispatch_layout(topk, num_experts)
        buffer.dispatch(x, topk_idx=topk, num_tokens_per_expert=np.zeros(num_experts, np.int32))
    except Exception as error:
        assert f"rank {num_ranks - 1}" in str(error), str(error)
        assert "died" in str(error), str(error)  # found by the liveness check, not the timeout
        assert time.monotonic() - started < 4
        sys.exit(42)
    raise AssertionError("dispatch succeeded with a dead rank")
print("OK")
'''


def _run_ranks(num_ranks: int, mode: str, timeout_s: float = 60, env_extra: dict | None = None) -> list[int]:
    group = f"pytest_{mode}_{uuid.uuid4().hex[:12]}"
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR), **(env_extra or {}))
    processes = [
        subprocess.Popen([sys.executable, "-c", _WORKER, group, str(rank), str(num_ranks), mode], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(num_ranks)
    ]
    codes = []
    for rank, process in enumerate(processes):
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail(f"rank {rank} of {mode} still running after {timeout_s} s (a hang)")
        if process.returncode not in (0, 42, -9):
            print(f"rank {rank} stderr:\n{stderr}")
        codes.append(process.returncode)
    return codes


@pytest.mark.parametrize("num_ranks", [2, 4])
def test_dispatch_cached_dispatch_and_combine(num_ranks: int) -> None:
    assert _run_ranks(num_ranks, "normal") == [0] * num_ranks


@pytest.mark.parametrize("num_ranks,mode", [(2, "low_latency"), (4, "low_latency"), (2, "low_latency_fp8"),
                                            (4, "low_latency_fp8"), (2, "low_latency_fp8_round_scale")])
def test_low_latency_round_trip(num_ranks: int, mode: str) -> None:
    assert _run_ranks(num_ranks, mode) == [0] * num_ranks


def test_dead_rank_is_an_error_on_every_other_rank() -> None:
    codes = _run_ranks(3, "dead_rank", timeout_s=30, env_extra={"EP_TIMEOUT": "2"})
    assert codes == [42, 42, -9]


def test_single_rank_layout_and_validation() -> None:
    buffer = ep.Buffer(f"pytest_single_{uuid.uuid4().hex[:12]}", 1 << 20, rank=0, num_ranks=1, timeout_s=2)
    topk = np.array([[0, 3], [-1, 1]], dtype=np.int64)
    per_rank, none, per_expert, in_rank = buffer.get_dispatch_layout(topk, 4)
    assert none is None and per_rank.tolist() == [2] and per_expert.tolist() == [1, 1, 0, 1]
    assert in_rank.dtype == np.bool_ and in_rank.tolist() == [[True], [True]]
    with pytest.raises(ValueError):
        buffer.get_dispatch_layout(np.array([[7]]), 4)
    ep.Buffer.set_num_sms(24)
    assert ep.Buffer.get_num_sms() == 24
    with pytest.raises(ValueError):
        ep.Buffer.set_num_sms(23)
    with pytest.raises(ValueError):
        ep.Buffer("bad/name", 1 << 20, rank=0, num_ranks=1)
    with pytest.raises(ValueError):
        ep.Buffer(("g", 0, 1), 0)


def test_deepep_options_are_ignored_refused_or_unknown() -> None:
    """DeepEP's scheduling arguments are accepted; the ones that would change results are refused unless at
    DeepEP's default (before anything runs); an unknown one is a TypeError."""
    buffer = ep.Buffer(f"pytest_options_{uuid.uuid4().hex[:12]}", 1 << 20, rank=0, num_ranks=1, timeout_s=2)
    topk = np.array([[0, 1], [1, -1]], dtype=np.int64)
    weights = np.array([[0.5, 0.25], [1.0, 0.0]], dtype=np.float32)
    x = np.arange(2 * 128, dtype=np.float32).reshape(2, 128)
    per_rank, _, per_expert, in_rank = buffer.get_dispatch_layout(topk, 2, previous_event=None, async_finish=True,
                                                                  allocate_on_comm_stream=False)
    args = dict(topk_idx=topk, topk_weights=weights, num_tokens_per_rank=per_rank, is_token_in_rank=in_rank,
                num_tokens_per_expert=per_expert)
    recv_x, _, recv_w, counts, handle = buffer.dispatch(x, **args, num_worst_tokens=0, config=None, async_finish=True)
    assert counts == [1, 2] and (recv_x == x).all()
    combined, _ = buffer.combine(recv_x, handle, topk_weights=recv_w, bias=None, previous_event=None)
    assert (combined == x).all()
    # num_worst_tokens below what arrived: an error naming both, after the collective (the buffer stays usable);
    # a padded handle's combine needs x with that many rows.
    with pytest.raises(ValueError, match="received 2 tokens, more than num_worst_tokens=1"):
        buffer.dispatch(x, **args, num_worst_tokens=1)
    with pytest.raises(ValueError, match="num_worst_tokens=-1"):
        buffer.dispatch(x, **args, num_worst_tokens=-1)
    padded_x, _, padded_w, padded_counts, padded_handle = buffer.dispatch(x, **args, num_worst_tokens=4)
    assert padded_counts == [] and padded_x.shape == (4, 128) and (padded_x[:2] == x).all()
    with pytest.raises(ValueError, match=r"x has 2 rows; the dispatch ran with num_worst_tokens=4"):
        buffer.combine(recv_x, padded_handle)
    padded_combined, _ = buffer.combine(padded_x, padded_handle, topk_weights=padded_w)
    assert (padded_combined == x).all()
    # A bias of the wrong form is refused before the collective starts.
    with pytest.raises(ValueError, match=r"bias is a tuple of 3"):
        buffer.combine(recv_x, handle, bias=(x, None, None))
    with pytest.raises(ValueError, match=r"bias is float32 \(1, 128\); expected x's dtype float32 and \(num_tokens, "
                                         r"hidden\) = \(2, 128\)"):
        buffer.combine(recv_x, handle, bias=x[:1])
    with pytest.raises(ValueError, match=r"bias is uint16"):
        buffer.combine(recv_x, handle, bias=(None, x.view(np.uint32).astype(np.uint16)))
    biased, _ = buffer.combine(recv_x, handle, bias=(None, x))
    assert (biased == x + x).all()
    with pytest.raises(TypeError, match="num_worst_token"):
        buffer.dispatch(x, handle=handle, num_worst_token=8)
    for name, value in (("use_ue8m0", True), ("dispatch_wait_recv_cost_stats", x)):
        with pytest.raises(NotImplementedError, match=name):
            buffer.low_latency_dispatch(x, topk, 4, 2, **{name: value})
    with pytest.raises(ValueError, match=r"cumulative_local_expert_recv_stats has float32 \(2, 128\); expected int32 \(2,\)"):
        buffer.low_latency_dispatch(x, topk, 4, 2, cumulative_local_expert_recv_stats=x)
    for name, value in (("use_logfmt", True), ("combine_wait_recv_cost_stats", x)):
        with pytest.raises(NotImplementedError, match=name):
            buffer.low_latency_combine(x, topk, weights, None, **{name: value})
    with pytest.raises(ValueError, match="handle is NoneType; expected a low_latency_dispatch handle"):
        buffer.low_latency_combine(x, topk, weights, None, zero_copy=True)
    # Nothing of the refused calls ran: the buffer still serves a cached dispatch.
    again, *_ = buffer.dispatch(x, handle=handle)
    assert (again == x).all()


def test_cpu_backend_answers_torch_inputs_with_torch_tensors() -> None:
    """As DeepEP's calls do: torch in, torch out (bf16 stays bf16, FP8 codes are float8_e4m3fn), on the CPU."""
    torch = pytest.importorskip("torch")
    buffer = ep.Buffer(f"pytest_torch_{uuid.uuid4().hex[:12]}", 1 << 20, rank=0, num_ranks=1, timeout_s=2)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(3, 128, generator=generator).to(torch.bfloat16)
    topk = torch.tensor([[0, 1], [1, -1], [0, -1]], dtype=torch.int64)
    weights = torch.rand(3, 2, generator=generator) * (topk >= 0)
    per_rank, _, per_expert, in_rank = buffer.get_dispatch_layout(topk, 2)
    assert isinstance(per_rank, torch.Tensor) and per_expert.tolist() == [2, 2] and in_rank.dtype == torch.bool
    recv_x, recv_idx, recv_w, counts, handle = buffer.dispatch(
        x, topk_idx=topk, topk_weights=weights, num_tokens_per_rank=per_rank, is_token_in_rank=in_rank,
        num_tokens_per_expert=per_expert)
    assert recv_x.dtype == torch.bfloat16 and torch.equal(recv_x, x) and counts == [2, 2]
    assert recv_idx.dtype == torch.int64 and recv_w.dtype == torch.float32 and torch.equal(recv_w, weights)
    combined, combined_w = buffer.combine(recv_x, handle, topk_weights=recv_w)
    assert combined.dtype == torch.bfloat16 and torch.equal(combined, x) and torch.equal(combined_w, weights)
    half, *_ = buffer.dispatch(x.half(), handle=handle)
    assert half.dtype == torch.float16 and torch.equal(half, x.half())

    stats = torch.zeros(2, dtype=torch.int32)
    (codes, scales), count, low_latency_handle, _, hook = buffer.low_latency_dispatch(
        x, topk, 4, 2, cumulative_local_expert_recv_stats=stats, use_fp8=True, return_recv_hook=True)
    assert codes.dtype == torch.float8_e4m3fn and scales.dtype == torch.float32 and codes.shape == (2, 4, 128)
    hook()  # fills the tensors returned above
    assert count.tolist() == [2, 2] and stats.tolist() == [2, 2]
    expert0 = codes[0, :2].float() * scales[0, :2].repeat_interleave(128, dim=1)
    reference = x[[0, 2]].float()
    assert (expert0 - reference).abs().max() <= 0.07 * reference.abs().max()
    expert_out = torch.ones(2, 4, 128, dtype=torch.bfloat16)
    out, _, _ = buffer.low_latency_combine(expert_out, topk, weights, low_latency_handle)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 128)
    assert torch.allclose(out[:, 0].float(), weights.sum(dim=1), atol=1e-2)
    # DeepEP's later arguments with torch CPU tensors: out, zero_copy, bias, num_worst_tokens.
    into = torch.full((3, 128), float("nan"), dtype=torch.bfloat16)
    returned, _, _ = buffer.low_latency_combine(expert_out, topk, weights, low_latency_handle, out=into)
    assert returned is into and torch.equal(into, out)
    staged = buffer.get_next_low_latency_combine_buffer(low_latency_handle)
    assert isinstance(staged, torch.Tensor) and staged.dtype == torch.bfloat16 and staged.shape == (2, 4, 128)
    staged.copy_(expert_out)
    from_staged, _, _ = buffer.low_latency_combine(torch.zeros_like(expert_out), topk, weights, low_latency_handle,
                                                   zero_copy=True)
    assert torch.equal(from_staged, out)
    biased, _ = buffer.combine(recv_x, handle, bias=(x, x))
    assert biased.dtype == torch.bfloat16 and torch.equal(biased, (x.float() * 3).to(torch.bfloat16))
    padded, padded_idx, _, padded_counts, padded_handle = buffer.dispatch(
        x, topk_idx=topk, topk_weights=weights, num_tokens_per_rank=per_rank, is_token_in_rank=in_rank,
        num_tokens_per_expert=per_expert, num_worst_tokens=5)
    assert isinstance(padded, torch.Tensor) and padded.dtype == torch.bfloat16 and padded.shape == (5, 128)
    assert torch.equal(padded[:3], x) and padded_counts == [] and (padded_idx[3:] == -1).all()
    padded_combined, _ = buffer.combine(padded, padded_handle)
    assert torch.equal(padded_combined, x)


def test_low_latency_dispatch_adds_to_the_cumulative_receive_statistics() -> None:
    """DeepEP's cumulative_local_expert_recv_stats: each receive adds every local expert's token count."""
    buffer = ep.Buffer(f"pytest_stats_{uuid.uuid4().hex[:12]}", 1 << 20, rank=0, num_ranks=1, timeout_s=2)
    x = np.arange(3 * 128, dtype=np.float32).reshape(3, 128)
    topk = np.array([[0, 1], [1, -1], [0, -1]], dtype=np.int64)
    weights = np.ones((3, 2), np.float32) * (topk >= 0)
    stats = np.array([5, 0], dtype=np.int32)
    for _ in range(2):
        _, count, handle, _, hook = buffer.low_latency_dispatch(x, topk, 4, 2, stats, use_fp8=False,
                                                                return_recv_hook=True)
        assert stats.tolist() in ([5, 0], [7, 2])  # not before the receive
        hook()
        buffer.low_latency_combine(np.zeros((2, 4, 128), np.float32), topk, weights, handle)
    assert count.tolist() == [2, 2] and stats.tolist() == [9, 4]


def test_backend_choice_is_validated() -> None:
    with pytest.raises(ValueError, match="backend"):
        ep.Buffer((f"pytest_backend_{uuid.uuid4().hex[:8]}", 0, 1), num_nvl_bytes=1 << 20, backend="gpu")
    buffer = ep.Buffer((f"pytest_backend_{uuid.uuid4().hex[:8]}", 0, 1), num_nvl_bytes=1 << 20, backend="cpu")
    per_rank, _, per_expert, in_rank = buffer.get_dispatch_layout(np.array([[0, -1]], np.int64), 2)
    assert per_rank.tolist() == [1] and per_expert.tolist() == [1, 0] and in_rank.tolist() == [[True]]
    buffer.synchronize()  # nothing to wait for on the CPU backend
    buffer.close()
    with pytest.raises(ValueError, match="no CPU backend"):
        buffer.dispatch(np.zeros((1, 8), np.float32), topk_idx=np.array([[0, -1]], np.int64),
                        num_tokens_per_expert=per_expert)
