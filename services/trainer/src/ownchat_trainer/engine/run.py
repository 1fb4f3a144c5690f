"""One job from its spec to its last event: the worker's composition of the engine.

Order matters for an exact resume: the generators are seeded first, the model,
data, optimizer and schedule are built the same way whether the run is fresh or
resumed, and only then does ``checkpoint.load_checkpoint`` put back the
optimizer, the schedule and the generators of the checkpoint, and
``skip_batches`` the data position.

``torch.compile`` is not used: a worker compiles afresh at every start and
resume (minutes for a large model), packed steps change shape every step (a
recompile each, or dynamic shapes), and the expensive parts (attention, the
chunked cross-entropy, the fused optimizer) already run in fused kernels.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ownchat_trainer.batches import encode_samples, read_split
from ownchat_trainer.engine import fused_kernels, lean_activations, varlen_attention
from ownchat_trainer.engine.checkpoint import (
    MODEL_DIR,
    STATE_FILE,
    TrainingState,
    clean_incomplete,
    latest_checkpoint,
    load_checkpoint,
    skip_batches,
)
from ownchat_trainer.engine.distributed import (
    DistributedContext,
    OptimizerByName,
    barrier,
    init_from_env,
    main_only,
    teardown,
    wrap_model,
)
from ownchat_trainer.engine.dpo import encode_preferences
from ownchat_trainer.engine.loop import Emit, LoopSettings, Objective, Trainee, TrainingLoop
from ownchat_trainer.engine.lora import (
    LoraSettings,
    add_lora,
    hold_frozen_linear_weights_in,
    trainable_parameters,
)
from ownchat_trainer.engine.run_dpo import DpoObjective, with_reference
from ownchat_trainer.engine.run_sft import SftObjective
from ownchat_trainer.engine.schedule import batch_order, learning_rate_factor

if TYPE_CHECKING:
    from ownchat_trainer.worker import WorkerSpec

Autocast = Callable[[], AbstractContextManager[Any]]

logger = logging.getLogger("ownchat.trainer.worker")


def run_job(spec: WorkerSpec, emit: Emit, should_stop: Callable[[], bool]) -> None:
    """Trains (or resumes, or pauses) the job; raises on failure. Every rank calls it."""
    _configure_process(spec)
    context = init_from_env()
    try:
        _run(spec, main_only(emit, context), should_stop, context)
    finally:
        teardown(context)


def _configure_process(spec: WorkerSpec) -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if spec.deterministic:
        # cuBLAS is deterministic only with a fixed workspace, set before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)


def _run(
    spec: WorkerSpec, emit: Emit, should_stop: Callable[[], bool], context: DistributedContext
) -> None:
    from transformers import AutoTokenizer

    if context.is_main:
        spec.output_dir.mkdir(parents=True, exist_ok=True)
        clean_incomplete(spec.output_dir)
    barrier(context)
    resume = latest_checkpoint(spec.output_dir)

    tokenizer = AutoTokenizer.from_pretrained(spec.base_model_dir)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    max_length = _max_length(spec)
    encode: Any = encode_preferences if spec.method == "dpo" else encode_samples
    train_items, dropped = encode(tokenizer, _read(spec.train_split, spec.method), max_length)
    validation_items, _ = encode(tokenizer, _read(spec.validation_split, spec.method), max_length)
    if not train_items:
        raise ValueError(
            f"no training sample keeps a token to learn within max_seq_length={max_length}; "
            "raise max_seq_length"
        )

    on_cuda = context.device.type == "cuda"
    autocast = _autocast(context.device)
    attention = _attention(context.device, spec.packing and spec.method != "dpo")
    # Under bf16 autocast an adapter's frozen base computes the same in bf16.
    hold_frozen_in_bf16 = spec.uses_lora and autocast is not nullcontext
    resumed_from = None
    if resume is not None:
        resumed_from = TrainingState.from_json((resume / STATE_FILE).read_text("utf-8")).step
    emit(
        {
            "event": "started",
            "device": _device_name(context),
            "total_steps": spec.max_steps,
            "message": _describe(spec, context, len(train_items), dropped, len(validation_items))
            + f", attention {attention}"
            + (", Liger Kernel layers" if fused_kernels.available(context.device) else "")
            + (", bf16 autocast" if autocast is not nullcontext else "")
            + (", frozen base weights in bf16" if hold_frozen_in_bf16 else "")
            + (f"; resuming from step {resumed_from}" if resume is not None else ""),
            "resumed_from_step": resumed_from,
        }
    )

    base: Any = None
    if spec.method == "dpo" and not spec.uses_lora:
        # The reference is the base model, scored once before training.
        base = _load(spec.base_model_dir, attention, context.device).to(context.device)
        emit({"event": "message", "message": f"scoring {len(train_items)} pairs with the base"})
        score = {"pad_token_id": pad_id, "batch_size": spec.batch_size, "autocast": autocast}
        train_items = with_reference(base, train_items, context, **score)
        validation_items = with_reference(base, validation_items, context, **score)
        if resume is not None:
            # The checkpoint's weights are trained instead; free the base's memory first.
            base = None
            gc.collect()
            if on_cuda:
                torch.cuda.empty_cache()
    # A sharded model stays on the CPU until ``fully_shard`` moves each rank's
    # shard to its GPU: no rank ever holds the whole model there.
    sharded = context.distributed and spec.strategy == "fsdp"
    place = torch.device("cpu") if sharded and base is None else context.device
    trainable = _trainable_model(spec, resume, attention, context, base, place)
    if hold_frozen_in_bf16:
        hold_frozen_linear_weights_in(trainable, torch.bfloat16)
    model = wrap_model(trainable, context, "fsdp" if sharded else "ddp")
    objective: Objective
    if spec.method == "dpo":
        objective = DpoObjective(
            model,
            train_items,
            validation_items,
            context,
            pad_token_id=pad_id,
            batch_size=spec.batch_size,
            beta=spec.dpo_beta,
        )
    else:
        objective = SftObjective(
            model,
            train_items,
            validation_items,
            context,
            pad_token_id=pad_id,
            max_length=max_length,
            batch_size=spec.batch_size,
            packing=spec.packing,
            # Rows a multiple of 8 wide suit tensor cores; the CPU gains nothing.
            pad_to_multiple_of=8 if on_cuda else 1,
        )

    optimizer = torch.optim.AdamW(
        trainable_parameters(model), lr=spec.learning_rate, weight_decay=0.0, fused=on_cuda
    )
    warmup = math.ceil(spec.warmup_ratio * spec.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, spec.max_steps, warmup)
    )
    order = batch_order(len(train_items), spec.batch_size, spec.seed)
    state = TrainingState()
    if resume is not None:
        # Last: it also restores the random generators.
        named = OptimizerByName(model, optimizer, context)
        state = load_checkpoint(resume, named, scheduler, rank=context.rank)
        order = skip_batches(order, state.batches_consumed)

    settings = LoopSettings(
        output_dir=spec.output_dir,
        max_steps=spec.max_steps,
        eval_interval_steps=spec.eval_interval_steps,
        checkpoint_interval_steps=spec.checkpoint_interval_steps,
        early_stopping_patience=spec.early_stopping_patience,
        keep_checkpoints=spec.keep_checkpoints,
        batches_per_epoch=-(-len(train_items) // spec.batch_size),
    )
    trainee = Trainee(
        model=model,
        tokenizer=tokenizer,
        model_kind="lora_adapter" if spec.uses_lora else "full",
        optimizer=optimizer,
        scheduler=scheduler,
        context=context,
        autocast=autocast,
    )
    TrainingLoop(settings, trainee, objective, order, state, emit, should_stop).run()


def _max_length(spec: WorkerSpec) -> int:
    """The spec's sequence length, capped at the model's context window."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec.base_model_dir)
    window = getattr(config, "max_position_embeddings", None) or spec.max_seq_length
    return min(spec.max_seq_length, int(window))


def _trainable_model(
    spec: WorkerSpec,
    resume: Path | None,
    attention: str,
    context: DistributedContext,
    base: Any | None,
    place: torch.device,
) -> Any:
    """The model to train, on ``place``, in train mode: as the checkpoint has it, if any.

    ``base`` is the base model when already loaded (unchanged).
    """
    device = context.device
    if spec.uses_lora:
        model = base if base is not None else _load(spec.base_model_dir, attention, device)
        model.to(place)
        if resume is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(resume / MODEL_DIR), is_trainable=True)
        else:
            alpha = spec.lora_alpha or 2.0 * spec.lora_rank
            model = add_lora(model, LoraSettings(rank=spec.lora_rank, alpha=alpha))
    elif resume is not None:
        model = _load(resume / MODEL_DIR, attention, device)
    else:
        model = base if base is not None else _load(spec.base_model_dir, attention, device)
    model.to(place)
    model.train()
    return model


def _read(split: Path, method: str) -> list[dict[str, Any]]:
    """A split's rows, refused when they are not the kind the method trains on."""
    rows = read_split(split)
    key, kind = ("chosen", "preference") if method == "dpo" else ("messages", "chat")
    if rows and key not in rows[0]:
        raise ValueError(f"{method} trains on a {kind} split; {split.name} is not one")
    return rows


def _load(directory: Path, attention: str, device: torch.device) -> Any:
    """A causal LM in float32 (the optimizer's master weights), with the attention wanted,
    keeping fewer activations (``lean_activations``) and, on a GPU, with Liger
    Kernel's fused layers (``fused_kernels``).

    Falls back to sdpa, then eager, when the architecture lacks it.
    """
    from transformers import AutoModelForCausalLM

    candidates = list(dict.fromkeys([attention, "sdpa", "eager"]))
    for index, implementation in enumerate(candidates):
        try:
            model = AutoModelForCausalLM.from_pretrained(
                directory,
                dtype=torch.float32,
                use_safetensors=True,
                attn_implementation=implementation,
            )
        except (ValueError, ImportError) as error:
            if index == len(candidates) - 1:
                raise
            logger.warning("attention %s unavailable (%s); trying the next", implementation, error)
            continue
        lean = lean_activations.apply_lean_activations(model)
        fused_kernels.apply_fused_kernels(model, device, swiglu=not lean)
        return model
    raise AssertionError("unreachable")


def _attention(device: torch.device, packed: bool) -> str:
    """The attention implementation: a varlen kernel for packed steps.

    On a GPU ``flash_attn``'s where installed, else PyTorch's own; on a CPU
    sdpa over each sample (``varlen_attention``, packed batches only: it needs
    the sample offsets); sdpa otherwise.
    """
    kernel = varlen_attention.kernel_for(device)
    if packed and kernel is not None and varlen_attention.register(kernel):
        return varlen_attention.ATTENTION_NAME
    return "sdpa"


def _autocast(device: torch.device) -> Autocast:
    """bf16 autocast on a CUDA device that has bf16; float32 otherwise."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


def _device_name(context: DistributedContext) -> str:
    """ "cpu", "cuda:0", or "cuda:0,1" for one process a GPU (indices as the worker sees them)."""
    if context.device.type != "cuda":
        return "cpu"
    return "cuda:" + ",".join(str(rank) for rank in range(context.world_size))


def _describe(
    spec: WorkerSpec, context: DistributedContext, samples: int, dropped: int, validation: int
) -> str:
    unit = "pairs" if spec.method == "dpo" else "samples"
    sharded = context.distributed and spec.strategy == "fsdp"
    batches = "packed" if spec.packing and spec.method != "dpo" else "padded"
    return (
        f"{spec.method} on {_device_name(context)}"
        + (f" ({context.world_size} processes" if context.distributed else "")
        + (", training state sharded with FSDP" if sharded else "")
        + (")" if context.distributed else "")
        + f": {samples} {unit}"
        + (f" ({dropped} dropped: nothing to learn within the length)" if dropped else "")
        + f", {validation} validation {unit}, {spec.max_steps} steps of {spec.batch_size} "
        + f"{unit} in {batches} batches"
    )
