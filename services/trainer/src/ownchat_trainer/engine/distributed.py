"""Data-parallel training over several processes, or one.

Run under ``torchrun --nproc-per-node N -m ownchat_trainer.worker spec.json``
(the service builds that command: ``placement.Placement.worker_command``), or
plainly as one process, where every helper here is a no-op.

How a step stays the single-process step: every rank draws the same seeded
global batch, takes its share of the samples (``local_share``), and computes
the weighted loss sum S_r and weight W_r of that share. ``global_loss``
all-reduces (S_r, W_r) and gives each rank ``world_size * S_r / W`` to
backpropagate, where W is the global weight. DistributedDataParallel averages
the gradients over the ranks, so every rank ends with sum_r grad S_r / W: the
gradient of the single-process loss S / W over the whole batch. Clipping and
AdamW then see the same gradients on every rank and keep the replicas equal.

Models whose training state does not fit one GPU: ``wrap_model(..., "fsdp")``
shards parameters, gradients and optimizer state over the ranks with FSDP2
(``torch.distributed.fsdp.fully_shard``), one unit per decoder layer. The
arithmetic of the loss is the same. Every forward of a sharded model is a
collective (each layer gathers its weights from all ranks), so all ranks must
run the same number of them: validation runs empty batches to keep in step
(``sharded_mean(..., lockstep=True)``).

Checkpoints hold the whole model and the optimizer's state keyed by parameter
name (``gathered_state_dict``, ``gathered_optimizer_state``), gathered on rank
0 whatever the strategy: a job saved sharded resumes whole and the reverse.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ownchat.chat_template import IGNORE_INDEX
from ownchat_trainer.batches import EncodedSample
from ownchat_trainer.placement import Strategy as Strategy

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run; one process alone is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # Where this rank's model and batches live.
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # "nccl" or "gloo" when there is a process group; None for one process.
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """Whether several processes share each step."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that reports events and writes checkpoints."""
        return self.rank == 0


def init_from_env(
    environ: Mapping[str, str] | None = None, *, timeout: timedelta = timedelta(minutes=30)
) -> DistributedContext:
    """Joins the process group torchrun describes, or returns the one-process context.

    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` from ``environ`` (the
    process environment when None); the rendezvous itself reads
    ``MASTER_ADDR``/``MASTER_PORT`` from the process environment, as torchrun
    sets them. On CUDA the backend is NCCL and rank r uses ``cuda:LOCAL_RANK``
    (the service's ``CUDA_VISIBLE_DEVICES`` decides which GPU that is); on the
    CPU it is gloo. ``timeout`` bounds how long a collective waits for a slow
    rank (rank 0 writing a checkpoint, say) before the run fails.
    """
    env = os.environ if environ is None else environ
    world_size = int(env.get("WORLD_SIZE", "1"))
    on_cuda = torch.cuda.is_available()
    if world_size <= 1:
        return DistributedContext(device=torch.device("cuda:0" if on_cuda else "cpu"))
    rank = int(env["RANK"])
    local_rank = int(env.get("LOCAL_RANK", str(rank)))
    if on_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world_size,
            timeout=timeout,
            device_id=device if on_cuda else None,
        )
    return DistributedContext(rank, world_size, local_rank, device, backend)


def teardown(context: DistributedContext) -> None:
    """Leaves the process group; call once at the end, also after a failure."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    """Waits until every rank gets here (after rank 0 saved, before others read)."""
    if context.distributed:
        dist.barrier()


def shard_indices(step_indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of a step's sample indices.

    Every ``world_size``-th index starting at ``rank``: the shares are disjoint,
    cover the step, keep its order, and differ in size by at most one. A rank
    gets none when the step has fewer samples than ranks (see ``idle_sample``).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not within a world of {world_size}")
    return list(step_indices[rank::world_size])


def idle_sample(pad_token_id: int) -> EncodedSample:
    """A sample that weighs nothing, for a rank whose share of a step is empty.

    Every rank must run forward and backward each step, because the gradient
    all-reduce waits for all of them; this sample adds zero to the loss, the
    weight and every gradient.
    """
    return EncodedSample(
        input_ids=[pad_token_id, pad_token_id],
        labels=[IGNORE_INDEX, IGNORE_INDEX],
        weight=0.0,
        record=-1,
    )


def local_share(
    samples: Sequence[EncodedSample],
    step_indices: Sequence[int],
    context: DistributedContext,
    pad_token_id: int,
) -> list[EncodedSample]:
    """The samples this rank trains on in a step, never empty (``idle_sample`` if so).

    ``step_indices`` is the whole step's batch, the same on every rank (draw it
    from one seeded order on all of them).
    """
    mine = [samples[i] for i in shard_indices(step_indices, context.rank, context.world_size)]
    return mine or [idle_sample(pad_token_id)]


@dataclass(frozen=True)
class GlobalLoss:
    """A step's loss over all ranks: device scalars, read only once the step is launched."""

    # Call ``.backward()`` on this: world_size * local sum / global weight.
    backward: torch.Tensor
    # The step's loss as one process over the whole batch would report it.
    value: torch.Tensor
    # The global weight (weighted loss-token count) the loss is normalised by.
    weight: torch.Tensor


def global_loss(
    loss_sum: torch.Tensor, weight_sum: torch.Tensor, context: DistributedContext
) -> GlobalLoss:
    """Normalises this rank's weighted loss sum by the weight of the whole step.

    ``loss_sum`` and ``weight_sum`` are this rank's (``batches.weighted_loss_terms``):
    scalars on its device, ``loss_sum`` with its graph. One all-reduce of the
    pair; with one process this is ``loss_sum / weight_sum`` as before. A step
    whose samples all weigh 0 has loss 0 and zero gradients. Nothing is read
    back to the host: that would hold it there until the forward is done,
    instead of launching the backward behind it.
    """
    terms = torch.stack([loss_sum.detach().float(), weight_sum.detach().float()])
    if context.distributed:
        dist.all_reduce(terms, op=dist.ReduceOp.SUM)
    total, weight = terms[0], terms[1].clamp_min(1e-8)
    # DDP divides the summed gradients by world_size; multiply it back here.
    # (Dividing by weight / world_size keeps one process bit-identical to S / W.)
    backward = loss_sum / (weight / context.world_size)
    return GlobalLoss(backward, total / weight, terms[1])


def sum_across_ranks(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The element-wise sum of ``values`` over all ranks (a new tensor; no gradient).

    For validation: each rank sums (loss, weight) over its share, then this.
    """
    total = values.detach().clone()
    if context.distributed:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def sharded_mean(
    items: Sequence[T],
    batch_size: int,
    context: DistributedContext,
    terms: Callable[[Sequence[T]], tuple[torch.Tensor, torch.Tensor]],
    *,
    lockstep: bool = False,
) -> float | None:
    """Sum of numerators over sum of denominators of ``terms`` over every batch of
    ``items``, each rank taking every n-th item; None when the denominator is 0.

    For validation losses: ``terms`` gives a batch's (weighted loss sum, weight).
    ``lockstep`` (a sharded model, whose forward is a collective): every rank
    runs as many batches as rank 0, which has the most; the others' last one
    is empty, and ``terms`` must run the model on it and return zeros.
    """
    mine = list(items[context.rank :: context.world_size])
    batches = -(-len(mine) // batch_size)
    if lockstep:
        batches = -(-len(items[0 :: context.world_size]) // batch_size)
    totals = torch.zeros(2, dtype=torch.float64, device=context.device)
    for start in range(0, batches * batch_size, batch_size):
        numerator, denominator = terms(mine[start : start + batch_size])
        totals += torch.stack([numerator.detach().double(), denominator.detach().double()])
    totals = sum_across_ranks(totals, context)
    if float(totals[1]) <= 0:
        return None
    return float(totals[0] / totals[1])


def wrap_model(
    model: nn.Module, context: DistributedContext, strategy: Strategy = "ddp"
) -> nn.Module:
    """The model ready for data-parallel training; itself when there is one process.

    Move the model to ``context.device`` first, and build the optimizer from
    the returned model's parameters afterwards (FSDP replaces them with
    sharded ones).

    - ``"ddp"``: DistributedDataParallel; every rank holds the whole model and
      optimizer, gradients are averaged in buckets during backward (the
      gradients are views into the buckets: no second copy). Rank 0's weights
      are broadcast at wrapping, so the replicas start equal.
    - ``"fsdp"``: FSDP2, ``fully_shard`` on each decoder layer then on the
      root: each rank holds 1/world of the parameters, gradients and AdamW
      state, and gathers a layer's weights only while computing it. For
      models whose training state does not fit one GPU. Gradients are averaged
      over ranks too, so ``global_loss`` applies unchanged.
    """
    if not context.distributed:
        return model
    if strategy == "ddp":
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(context.device.type, (context.world_size,))
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"unknown strategy {strategy!r}; use 'ddp' or 'fsdp'")


def is_sharded(model: nn.Module) -> bool:
    """Whether ``wrap_model`` sharded the model (FSDP): its forward is then a collective."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated decoder blocks, the unit FSDP gathers at a time.

    Hugging Face models name that class in ``_no_split_modules``; otherwise the
    longest ``nn.ModuleList`` is taken to be the stack of layers.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if layers:
        return layers
    lists: list[nn.ModuleList] = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no stack of layers to shard")
    longest: nn.ModuleList = max(lists, key=len)
    return list(longest)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (``save_pretrained``, ``config``); else itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def gathered_state_dict(
    model: nn.Module, context: DistributedContext, *, trainable_only: bool = False
) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0, None on the others.

    Call it on every rank: under FSDP it gathers the shards (a collective, the
    result offloaded to the CPU). Pass it to ``unwrap(model).save_pretrained(
    target, state_dict=...)`` on rank 0. ``trainable_only``: the weights that
    train (an adapter's), not the frozen ones.
    """
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        options = StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only
        )
        state: dict[str, Any] = get_model_state_dict(model, options=options)
        return state if context.is_main else None
    if not context.is_main:
        return None
    inner = unwrap(model)
    if not trainable_only:
        return inner.state_dict()
    trains = {name for name, parameter in inner.named_parameters() if parameter.requires_grad}
    return {name: value for name, value in inner.state_dict().items() if name in trains}


def gathered_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, context: DistributedContext
) -> dict[str, Any] | None:
    """The optimizer's whole state on rank 0, keyed by parameter name; None on the others.

    Call it on every rank (under FSDP it gathers the shards). Names rather
    than positions, and whole rather than sharded, so that
    :func:`load_optimizer_state` puts it back under any strategy.
    """
    if not context.is_main and not is_sharded(model):
        return None  # a replica's state is rank 0's: nothing to take part in
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    state = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return dict(state) if context.is_main else None


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Puts back :func:`gathered_optimizer_state`'s state, sharding it as the model is.

    Call it on every rank with the same ``state``, before the first step. A
    state keyed by position (``optimizer.state_dict()``, checkpoints written
    before names were used) loads as it is, unsharded only.
    """
    saved = state.get("state") or {}
    if any(isinstance(key, int) for key in saved):
        if is_sharded(model):
            raise ValueError("this checkpoint's optimizer state cannot be sharded; resume it whole")
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


class OptimizerByName:
    """An optimizer as checkpoints hold it (``checkpoint.Stateful``): its state keyed
    by parameter name and whole, whatever the strategy.

    Saving: call :meth:`gather` on every rank (a collective under FSDP), then
    rank 0's ``state_dict`` is what was gathered. Loading shards it again.
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, context: DistributedContext
    ) -> None:
        self._model = model
        self._optimizer = optimizer
        self._context = context
        self._gathered: dict[str, Any] | None = None

    def gather(self) -> None:
        """Takes the state now, on every rank; rank 0 keeps it for ``state_dict``."""
        self._gathered = gathered_optimizer_state(self._model, self._optimizer, self._context)

    def state_dict(self) -> dict[str, Any]:
        """The gathered state, on rank 0 after :meth:`gather`."""
        if self._gathered is None:
            raise RuntimeError("gather() the optimizer's state first, on every rank")
        return self._gathered

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Puts a saved state back (every rank, the same state)."""
        load_optimizer_state(self._model, self._optimizer, state_dict)


def main_only(function: Callable[[T], None], context: DistributedContext) -> Callable[[T], None]:
    """``function`` on rank 0, a no-op elsewhere: one event stream, one checkpoint writer."""
    if context.is_main:
        return function

    def skip(_: T) -> None:
        return None

    return skip
