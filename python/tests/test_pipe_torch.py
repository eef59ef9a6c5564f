"""fireflyer.pipe_torch: DualPipe / DualPipeV against unpipelined training, over gloo on CPU processes
and over NCCL with one process per GPU (those cases skip where there are fewer GPUs than ranks).

Self-contained: `python3 -m pytest python/tests/test_pipe_torch.py` spawns the ranks itself (torch
multiprocessing, rendezvous on 127.0.0.1) and gives up after a bounded time. Skipped without torch.
"""

from __future__ import annotations

import datetime
import socket
import time

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TIMEOUT_S = 120


class Stage(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(hidden, hidden * 2, bias=False)
        self.linear2 = nn.Linear(hidden * 2, hidden, bias=False)

    def forward(self, x):
        return self.linear2(F.gelu(self.linear1(x)))


class OverlappedStage(Stage):
    """Has the anchor's hook: forward of one micro-batch, then backward of another."""

    calls = 0

    @classmethod
    def overlapped_forward_backward(cls, module0, inputs0, criterion0, labels0, module1, loss1, outputs1,
                                    output_grads1):
        cls.calls += 1
        outputs0 = module0(*inputs0)
        outputs0 = [outputs0] if isinstance(outputs0, torch.Tensor) else outputs0
        loss0 = criterion0(*outputs0, *labels0) if criterion0 is not None else None
        if loss1 is not None:
            loss1.backward()
        else:
            torch.autograd.backward(outputs1, output_grads1)
        return outputs0, loss0


def criterion(output, target):
    return F.mse_loss(output, target)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, kind, stage_class, chunks, backend="gloo"):
    from fireflyer.pipe_torch import DualPipe, DualPipeV, set_p2p_tensor_dtype, set_p2p_tensor_shapes

    if backend == "nccl":
        torch.cuda.set_device(rank)
        torch.set_default_device(f"cuda:{rank}")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(233)
        torch.set_default_dtype(torch.float64)
        hidden, micro_batch = 8, 3
        num_stages = world if kind == "dualpipe" else 2 * world
        cls = OverlappedStage if stage_class == "overlapped" else Stage
        full = nn.Sequential(*[cls(hidden) for _ in range(num_stages)])
        x = torch.randn(chunks * micro_batch, hidden)
        labels = torch.randn(chunks * micro_batch, hidden)
        # Reference: the unpipelined model, micro-batch by micro-batch.
        losses_ref, outputs_ref = [], []
        for mx, ml in zip(x.chunk(chunks), labels.chunk(chunks)):
            y = full(mx)
            loss = criterion(y, ml)
            loss.backward()
            losses_ref.append(loss.detach())
            outputs_ref.append(y.detach())
        loss_ref, output_ref = torch.stack(losses_ref), torch.cat(outputs_ref)

        set_p2p_tensor_shapes([(micro_batch, hidden)])
        set_p2p_tensor_dtype(torch.float64)
        if kind == "dualpipe":
            local = (cls(hidden), cls(hidden))
            local[0].load_state_dict(full[rank].state_dict())
            local[1].load_state_dict(full[world - 1 - rank].state_dict())
            model = DualPipe(local)
            first, last = rank == 0, rank == world - 1
            inputs = x.chunk(2)[0] if first else x.chunk(2)[1] if last else None
            step_labels = labels.chunk(2)[1] if first else labels.chunk(2)[0] if last else None
            loss, outputs = model.step(inputs, num_chunks=chunks, criterion=criterion, labels=(step_labels,))
            if first:
                torch.testing.assert_close(loss, loss_ref.chunk(2)[1], rtol=1e-12, atol=1e-12)
            elif last:
                torch.testing.assert_close(loss, loss_ref.chunk(2)[0], rtol=1e-12, atol=1e-12)
            else:
                assert loss is None
            assert outputs is None
            # Stage r lives on rank r (direction 0) and rank world-1-r (direction 1): add the copies.
            for p0, p1, ref in zip(local[0].parameters(), local[1].parameters(), full[rank].parameters()):
                gathered = [torch.empty_like(p1.grad) for _ in range(world)]
                dist.all_gather(gathered, p1.grad)
                torch.testing.assert_close(p0.grad + gathered[world - 1 - rank], ref.grad, rtol=1e-9, atol=1e-12)
            with torch.no_grad():
                loss, outputs = model.step(inputs, num_chunks=chunks, criterion=criterion, labels=(step_labels,),
                                           return_outputs=True)
            if first:
                torch.testing.assert_close(outputs, output_ref.chunk(2)[1])
            elif last:
                torch.testing.assert_close(outputs, output_ref.chunk(2)[0])
        else:
            local = (cls(hidden), cls(hidden))
            local[0].load_state_dict(full[rank].state_dict())
            local[1].load_state_dict(full[num_stages - 1 - rank].state_dict())
            model = DualPipeV(local)
            inputs = x if rank == 0 else None
            step_labels = labels if rank == 0 else None
            loss, outputs = model.step(inputs, num_chunks=chunks, criterion=criterion, labels=(step_labels,),
                                       return_outputs=True)
            if rank == 0:
                torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(outputs, output_ref)
            else:
                assert loss is None and outputs is None
            for module, stage in ((local[0], rank), (local[1], num_stages - 1 - rank)):
                for p, ref in zip(module.parameters(), full[stage].parameters()):
                    torch.testing.assert_close(p.grad, ref.grad, rtol=1e-9, atol=1e-12)
        if stage_class == "overlapped" and chunks > 2 * num_stages:
            assert OverlappedStage.calls > 0, "the steady phase must use the overlap hook"
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(world, kind, stage_class, chunks, backend="gloo"):
    context = mp.spawn(_worker, args=(world, _free_port(), kind, stage_class, chunks, backend), nprocs=world,
                       join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{kind} world={world} did not finish within {TIMEOUT_S} s")


@pytest.mark.parametrize("world,chunks", [(2, 4), (2, 8), (4, 8), (4, 12)])
@pytest.mark.parametrize("stage_class", ["plain", "overlapped"])
def test_dualpipe_matches_unpipelined(world, chunks, stage_class):
    _spawn(world, "dualpipe", stage_class, chunks)


@pytest.mark.parametrize("world,chunks", [(1, 2), (2, 4), (2, 7), (3, 10)])
@pytest.mark.parametrize("stage_class", ["plain", "overlapped"])
def test_dualpipev_matches_unpipelined(world, chunks, stage_class):
    _spawn(world, "dualpipev", stage_class, chunks)


def _require_gpus(world):
    if not torch.cuda.is_available() or torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs (one process per GPU), found "
                    f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    if not dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")


@pytest.mark.parametrize("world,chunks", [(2, 4), (2, 8), (4, 8), (8, 16)])
@pytest.mark.parametrize("stage_class", ["plain", "overlapped"])
def test_dualpipe_nccl_matches_unpipelined(world, chunks, stage_class):
    _require_gpus(world)
    _spawn(world, "dualpipe", stage_class, chunks, backend="nccl")


@pytest.mark.parametrize("world,chunks", [(2, 4), (2, 7), (4, 10), (8, 20)])
@pytest.mark.parametrize("stage_class", ["plain", "overlapped"])
def test_dualpipev_nccl_matches_unpipelined(world, chunks, stage_class):
    _require_gpus(world)
    _spawn(world, "dualpipev", stage_class, chunks, backend="nccl")


def test_bad_chunk_count_is_value_error():
    from fireflyer import _C

    with pytest.raises(ValueError, match="even number of micro-batches"):
        _C.pipe.generate("dualpipe", 4, 6)
