"""The anchor's ``DualPipe`` / ``DualPipeV`` torch classes, driven by Fireflyer's C++ schedules.

Same API as DeepSeek's DualPipe::

    from fireflyer.pipe_torch import DualPipe, set_p2p_tensor_shapes, set_p2p_tensor_dtype
    set_p2p_tensor_shapes([(micro_batch_size, seq_len, hidden)])
    set_p2p_tensor_dtype(torch.float32)
    model = DualPipe((stage_r, stage_pp_minus_1_minus_r))          # rank r of pp
    loss, outputs = model.step(x, num_chunks=20, criterion=criterion, labels=(l,), return_outputs=False)

The op order of each rank comes from ``fireflyer._C.pipe.generate`` (the same generator the
simulator and the native executor use); this module only executes it: forwards, full backwards,
split backwards (I: input gradients now, W: parameter gradients where the schedule says), and the
overlapped pairs, through the stage class's ``overlapped_forward_backward`` classmethod when both
local stages are of one class that has it (the anchor's rule).

Transfers are ``torch.distributed`` isend/irecv. Every rank knows every rank's op list, so a receiver
posts its receives from a peer in the order that peer sends (ahead of need when the schedule consumes
out of order): messages match by order, which NCCL (no tags) needs, and gloo gets tags as well. Under
NCCL each direction of each link gets its own two-rank communicator, so a rank's sends to a peer never
queue behind its receives from that peer on one NCCL stream (that cycle deadlocks), and the links'
communicators are created up front in one global order (_warm_up_links).

Differences from the anchor: weight gradients are deferred without a custom autograd function (an I
runs ``autograd.backward(inputs=<stage inputs>, retain_graph=True)`` and its W runs the backward
again for the parameters), which works for any module at the price of re-walking the graph once.
"""

from __future__ import annotations

import abc
import collections
import json
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from fireflyer import _C

_TENSOR_SHAPES: Optional[List[Tuple[int, ...]]] = None
_TENSOR_DTYPE: Optional[torch.dtype] = None


def set_p2p_tensor_shapes(shapes: Sequence[Tuple[int, ...]]) -> None:
    """Shapes of the tensors one stage sends to the next (one entry per tensor), as in the anchor."""
    global _TENSOR_SHAPES
    _TENSOR_SHAPES = [tuple(shape) for shape in shapes]


def set_p2p_tensor_dtype(dtype: torch.dtype) -> None:
    global _TENSOR_DTYPE
    _TENSOR_DTYPE = dtype


def _tag(micro_batch: int, direction: int, is_grad: bool, index: int) -> int:
    # Unique per (src, dst) link within a step: a link carries one stage boundary per direction.
    return ((micro_batch * 2 + direction) * 2 + int(is_grad)) * 16 + index


class _ScheduledPipe(nn.Module, metaclass=abc.ABCMeta):
    _kind = ""

    def __init__(
        self,
        modules: Tuple[nn.Module, nn.Module],
        batch_dim: int = 0,
        process_group: Optional[dist.ProcessGroup] = None,
        rank_mapping: Optional[List[int]] = None,
    ) -> None:
        super().__init__()
        if len(modules) != 2:
            raise ValueError(f"{type(self).__name__} takes two modules, got {len(modules)}")
        self.module = nn.ModuleList(modules)
        self.overlapped_forward_backward = type(modules[0]) is type(modules[1]) and hasattr(
            type(modules[0]), "overlapped_forward_backward")
        self.batch_dim = batch_dim
        self.group = process_group or dist.distributed_c10d._get_default_group()
        self.num_ranks = self.group.size()
        if rank_mapping is None:
            rank_mapping = list(range(self.num_ranks))
        if sorted(rank_mapping) != list(range(self.num_ranks)):
            raise ValueError(f"rank_mapping={rank_mapping} must be a permutation of range({self.num_ranks})")
        # rank_mapping: group rank -> pipeline rank; inverse: pipeline rank -> group rank.
        self._inverse = [0] * self.num_ranks
        for group_rank, pp_rank in enumerate(rank_mapping):
            self._inverse[pp_rank] = group_rank
        self.rank = rank_mapping[self.group.rank()]
        self._link_groups = self._make_link_groups() if dist.get_backend(self.group) == "nccl" else {}

    def _make_link_groups(self):
        """One two-rank group per direction of every link this rank is on, keyed (src_pp, dst_pp).

        Only the two members create each group (use_local_synchronization), every rank in the same
        global order of pairs, so creation cannot deadlock; torch names repeated member sets apart."""
        groups = {}
        for src in range(self.num_ranks):
            for dst in range(self.num_ranks):
                if src == dst or self.rank not in (src, dst):
                    continue
                members = sorted([self._global_rank(src), self._global_rank(dst)])
                groups[(src, dst)] = dist.new_group(members, use_local_synchronization=True)
        self._warm_up_links(groups)
        return groups

    def _warm_up_links(self, groups) -> None:
        """Creates each link's NCCL communicator now, every rank in the same global order of links.

        NCCL creates a communicator at its first operation and blocks until both members arrive. Left
        to the schedule, rank 0 may first send on link (0, 1) while rank 1 first sends on (1, 0): each
        waits in the other link's creation forever. One message per link, in (src, dst) order, cannot
        deadlock: the smallest link not yet warmed always has both members waiting on it."""
        device = next(self.module[0].parameters()).device
        for (src, dst) in sorted(groups):
            probe = torch.zeros(1, device=device)
            if self.rank == src:
                dist.send(probe, dst=self._global_rank(dst), group=groups[(src, dst)])
            else:
                dist.recv(probe, src=self._global_rank(src), group=groups[(src, dst)])

    # --- schedule -------------------------------------------------------------------------------
    @abc.abstractmethod
    def _num_stages(self) -> int:
        """Pipeline stages of the schedule: pp for DualPipe, 2 * ranks for DualPipeV."""

    @abc.abstractmethod
    def _module_for(self, stage: int, direction: int) -> nn.Module:
        """The module this rank runs for (stage, direction)."""

    def _global_rank(self, pp_rank: int) -> int:
        return dist.get_global_rank(self.group, self._inverse[pp_rank])

    # --- communication ----------------------------------------------------------------------------
    def _expected_receives(self, document: dict) -> dict:
        """Per peer, the (is_grad, micro_batch, direction) messages it sends this rank, in its order."""
        expected = collections.defaultdict(collections.deque)
        stage_rank = document["stage_rank"]
        last = self._num_stages() - 1

        def forward_send(src, mb, stage, direction):
            if stage != last and stage_rank[direction][stage + 1] == self.rank != src:
                expected[src].append((False, mb, direction))

        def backward_send(src, mb, stage, direction):
            if stage != 0 and stage_rank[direction][stage - 1] == self.rank != src:
                expected[src].append((True, mb, direction))

        for src, ops in enumerate(document["ranks"]):
            for op in ops:
                kind = op["op"]
                if kind in ("F", "FB"):
                    forward_send(src, op["mb"], op["stage"], op["dir"])
                if self.forward_only:
                    continue
                if kind in ("B", "I"):
                    backward_send(src, op["mb"], op["stage"], op["dir"])
                elif kind == "FB":
                    backward_send(src, op["b_mb"], op["b_stage"], op["b_dir"])
        return expected

    def _post_receive(self, src: int, key) -> None:
        is_grad, micro_batch, direction = key
        device = next(self.module[0].parameters()).device
        tensors = [torch.empty(shape, dtype=_TENSOR_DTYPE, device=device) for shape in _TENSOR_SHAPES]
        group = self._link_groups.get((src, self.rank), self.group)
        works = [dist.irecv(t, src=self._global_rank(src), group=group, tag=_tag(micro_batch, direction, is_grad, i))
                 for i, t in enumerate(tensors)]
        self._posted[(src,) + key] = (tensors, works)

    def _recv(self, src: int, micro_batch: int, direction: int, is_grad: bool) -> List[torch.Tensor]:
        if _TENSOR_SHAPES is None or _TENSOR_DTYPE is None:
            raise RuntimeError("call set_p2p_tensor_shapes and set_p2p_tensor_dtype before step()")
        key = (is_grad, micro_batch, direction)
        queue = self._expected[src]
        while (src,) + key not in self._posted:
            if not queue:
                raise RuntimeError(f"rank {self.rank} waits for {'gradient' if is_grad else 'activation'} of "
                                   f"micro-batch {micro_batch} direction {direction} from rank {src}, which "
                                   f"the schedule never sends")
            self._post_receive(src, queue.popleft())
        tensors, works = self._posted.pop((src,) + key)
        for work in works:
            work.wait()
        return tensors

    def _send(self, dst: int, tensors: Sequence[torch.Tensor], micro_batch: int, direction: int, is_grad: bool) -> None:
        for i, tensor in enumerate(tensors):
            tensor = tensor.detach().contiguous()
            work = dist.isend(tensor, dst=self._global_rank(dst), group=self._link_groups.get((self.rank, dst), self.group),
                              tag=_tag(micro_batch, direction, is_grad, i))
            self._pending_sends.append((work, tensor))

    # --- compute --------------------------------------------------------------------------------
    def _is_last_stage(self, stage: int) -> bool:
        return stage == self._num_stages() - 1

    def _forward_inputs(self, task: dict) -> List[torch.Tensor]:
        mb, stage, direction = task["mb"], task["stage"], task["dir"]
        if stage == 0:
            return list(self._input_chunks[mb])
        src = self._stage_rank[direction][stage - 1]
        if src == self.rank:
            return self._local.pop(("act", mb, direction))
        tensors = self._recv(src, mb, direction, is_grad=False)
        if not self.forward_only:
            for t in tensors:
                t.requires_grad_()
        return tensors

    def _after_forward(self, task: dict, inputs: List[torch.Tensor], outputs, loss) -> None:
        mb, stage, direction = task["mb"], task["stage"], task["dir"]
        outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        self._inputs[(mb, stage, direction)] = inputs
        if self._is_last_stage(stage):
            if loss is not None:
                self._losses[mb] = loss
            if self.return_outputs:
                self._final_outputs[mb] = [o.detach() for o in outputs]
            self._outputs[(mb, stage, direction)] = outputs
            return
        self._outputs[(mb, stage, direction)] = outputs
        dst = self._stage_rank[direction][stage + 1]
        if dst == self.rank:
            self._local[("act", mb, direction)] = [o.detach().requires_grad_(not self.forward_only) for o in outputs]
        else:
            self._send(dst, outputs, mb, direction, is_grad=False)

    def _criterion_and_labels(self, task: dict):
        if self._is_last_stage(task["stage"]) and self.criterion is not None:
            return self.criterion, list(self._label_chunks[task["mb"]])
        return None, []

    def _forward(self, task: dict) -> None:
        inputs = self._forward_inputs(task)
        module = self._module_for(task["stage"], task["dir"])
        outputs = module(*inputs)
        criterion, labels = self._criterion_and_labels(task)
        out_list = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        loss = criterion(*out_list, *labels) if criterion is not None else None
        self._after_forward(task, inputs, out_list, loss)

    def _backward_operands(self, task: dict):
        """(loss or None, outputs, output_grads) of a task whose backward is due."""
        mb, stage, direction = task["mb"], task["stage"], task["dir"]
        outputs = self._outputs.pop((mb, stage, direction))
        if self._is_last_stage(stage):
            return self._losses[mb], [], []
        src = self._stage_rank[direction][stage + 1]
        if src == self.rank:
            grads = self._local.pop(("grad", mb, direction))
        else:
            grads = self._recv(src, mb, direction, is_grad=True)
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
        return None, [o for o, _ in pairs], [g for _, g in pairs]

    def _after_backward(self, task: dict) -> None:
        mb, stage, direction = task["mb"], task["stage"], task["dir"]
        inputs = self._inputs.pop((mb, stage, direction))
        if stage == 0:
            return
        grads = [t.grad for t in inputs]
        dst = self._stage_rank[direction][stage - 1]
        if dst == self.rank:
            self._local[("grad", mb, direction)] = grads
        else:
            self._send(dst, grads, mb, direction, is_grad=True)

    def _backward(self, task: dict, split: bool) -> None:
        loss, outputs, grads = self._backward_operands(task)
        tensors, tensor_grads = ([loss], None) if loss is not None else (outputs, grads)
        module = self._module_for(task["stage"], task["dir"])
        if not split:
            if tensors:
                torch.autograd.backward(tensors, tensor_grads)
        else:
            key = (task["mb"], task["stage"], task["dir"])
            inputs = [t for t in self._inputs[key] if t.requires_grad]
            if tensors and inputs:
                torch.autograd.backward(tensors, tensor_grads, inputs=inputs, retain_graph=True)
            self._weights[key] = (tensors, tensor_grads, module)
        self._after_backward(task)

    def _weight(self, task: dict) -> None:
        tensors, tensor_grads, module = self._weights.pop((task["mb"], task["stage"], task["dir"]))
        params = [p for p in module.parameters() if p.requires_grad]
        if tensors and params:
            torch.autograd.backward(tensors, tensor_grads, inputs=params)

    def _forward_backward(self, op: dict) -> None:
        forward_task = {"mb": op["mb"], "stage": op["stage"], "dir": op["dir"]}
        backward_task = {"mb": op["b_mb"], "stage": op["b_stage"], "dir": op["b_dir"]}
        if not self.overlapped_forward_backward:
            self._forward(forward_task)
            self._backward(backward_task, split=False)
            return
        inputs0 = self._forward_inputs(forward_task)
        module0 = self._module_for(forward_task["stage"], forward_task["dir"])
        criterion0, labels0 = self._criterion_and_labels(forward_task)
        loss1, outputs1, output_grads1 = self._backward_operands(backward_task)
        module1 = self._module_for(backward_task["stage"], backward_task["dir"])
        outputs0, loss0 = type(module0).overlapped_forward_backward(
            module0, inputs0, criterion0, labels0, module1, loss1, outputs1, output_grads1)
        self._after_forward(forward_task, inputs0, outputs0, loss0)
        self._after_backward(backward_task)

    # --- step -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def _assign_chunks(self, inputs, labels, num_chunks: int) -> None:
        """Maps this rank's input/label chunks to micro-batch ids."""

    def _scatter(self, tensors, pieces: int) -> List[List[torch.Tensor]]:
        chunks = [[] for _ in range(pieces)]
        for tensor in tensors:
            if tensor is None:
                continue
            parts = tensor.chunk(pieces, dim=self.batch_dim) if tensor.dim() > 0 else [tensor] * pieces
            if len(parts) != pieces:
                raise ValueError(f"cannot split a batch of {tensor.shape[self.batch_dim]} into {pieces} micro-batches")
            for i, part in enumerate(parts):
                chunks[i].append(part)
        return chunks

    def step(
        self,
        *inputs: Optional[torch.Tensor],
        num_chunks: int = 0,
        criterion: Optional[Callable] = None,
        labels: Sequence[Optional[torch.Tensor]] = (),
        return_outputs: bool = False,
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """One training step (or inference under ``torch.no_grad()``); see the anchor's docs.

        Returns (loss, outputs): on ranks that hold a last stage, the stacked per-micro-batch losses
        (when criterion is given) and, with return_outputs, the concatenated outputs; else None.
        """
        self.forward_only = not torch.is_grad_enabled()
        self.return_outputs = return_outputs
        self.criterion = criterion
        document = json.loads(_C.pipe.generate(self._kind, self._num_stages(), num_chunks))  # ValueError if bad
        self._stage_rank = document["stage_rank"]
        ops = document["ranks"][self.rank]
        self._input_chunks, self._label_chunks = {}, {}
        self._inputs, self._outputs, self._local, self._weights = {}, {}, {}, {}
        self._losses, self._final_outputs = {}, {}
        self._pending_sends = []
        self._expected = self._expected_receives(document)
        self._posted = {}
        self._assign_chunks(inputs, labels, num_chunks)
        if not self.forward_only and self._holds_loss_stage() and criterion is None:
            raise ValueError("criterion is required for training on the ranks that hold a last stage")
        for op in ops:
            task = {"mb": op["mb"], "stage": op["stage"], "dir": op["dir"]}
            kind = op["op"]
            if self.forward_only:
                if kind in ("F", "FB"):
                    self._forward(task)
                continue
            if kind == "F":
                self._forward(task)
            elif kind == "B":
                self._backward(task, split=False)
            elif kind == "I":
                self._backward(task, split=True)
            elif kind == "W":
                self._weight(task)
            elif kind == "FB":
                self._forward_backward(op)
            else:
                raise RuntimeError(f"unknown op {kind!r} in generated schedule")
        for work, _ in self._pending_sends:
            work.wait()
        self._pending_sends = []
        unreceived = [key for queue in self._expected.values() for key in queue] + list(self._posted)
        if unreceived:
            raise RuntimeError(f"rank {self.rank} ended the step with messages never received: {unreceived[:4]}")
        loss, outputs = None, None
        if self._losses and criterion is not None:
            loss = torch.stack([self._losses[mb].detach() for mb in sorted(self._losses)])
        if return_outputs and self._final_outputs:
            per_mb = [self._final_outputs[mb] for mb in sorted(self._final_outputs)]
            outputs = [torch.cat([chunk[i] for chunk in per_mb], dim=self.batch_dim) for i in range(len(per_mb[0]))]
            outputs = outputs[0] if len(outputs) == 1 else tuple(outputs)
        self._inputs, self._outputs, self._local, self._weights, self._losses = {}, {}, {}, {}, {}
        return loss, outputs

    def _holds_loss_stage(self) -> bool:
        last = self._num_stages() - 1
        return any(row[last] == self.rank for row in self._stage_rank)


class DualPipe(_ScheduledPipe):
    """Bidirectional pipeline: ``modules = (stage r, stage pp-1-r)`` on pipeline rank r of pp (even).

    Rank 0 takes the inputs of the forward direction and the labels of the reverse one; the last rank
    the other way round (labels on the first rank belong to inputs on the last rank)."""

    _kind = "dualpipe"

    def _num_stages(self) -> int:
        return self.num_ranks

    def _module_for(self, stage: int, direction: int) -> nn.Module:
        return self.module[direction]

    def _assign_chunks(self, inputs, labels, num_chunks: int) -> None:
        half = num_chunks // 2
        first, last = self.rank == 0, self.rank == self.num_ranks - 1
        if not (first or last):
            return
        input_chunks = self._scatter(inputs, half)
        label_chunks = self._scatter(labels, half)
        # Forward direction (0) enters at rank 0: micro-batches 0..half-1; reverse (1): half..2*half-1.
        input_offset = 0 if first else half
        label_offset = half if first else 0
        for k in range(half):
            self._input_chunks[input_offset + k] = input_chunks[k]
            self._label_chunks[label_offset + k] = label_chunks[k]


class DualPipeV(_ScheduledPipe):
    """DualPipe cut in half: ``modules = (stage r, stage 2n-1-r)`` on rank r of n; data enters and the
    loss is computed on rank 0."""

    _kind = "dualpipev"

    def _num_stages(self) -> int:
        return 2 * self.num_ranks

    def _module_for(self, stage: int, direction: int) -> nn.Module:
        return self.module[0] if stage == self.rank else self.module[1]

    def _assign_chunks(self, inputs, labels, num_chunks: int) -> None:
        if self.rank != 0:
            return
        input_chunks = self._scatter(inputs, num_chunks)
        label_chunks = self._scatter(labels, num_chunks)
        for k in range(num_chunks):
            self._input_chunks[k] = input_chunks[k]
            self._label_chunks[k] = label_chunks[k]
