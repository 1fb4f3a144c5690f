"""Data-parallel training helpers: sharding, the global loss, and two gloo ranks on the CPU
training exactly as one process does.

The two-rank test launches this file itself under torchrun
(``python -m torch.distributed.run --nproc-per-node 2 <this file> <model> <out>``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ownchat.testing import free_port
from ownchat_trainer.batches import collate, encode_samples, weighted_loss_terms
from ownchat_trainer.engine.distributed import (
    DistributedContext,
    OptimizerByName,
    Strategy,
    barrier,
    decoder_layers,
    gathered_state_dict,
    global_loss,
    idle_sample,
    init_from_env,
    load_optimizer_state,
    local_share,
    main_only,
    shard_indices,
    sum_across_ranks,
    teardown,
    unwrap,
    wrap_model,
)

STEPS = 4
# 7 samples in steps of 3: the third step holds one sample, so rank 1 idles then.
BATCH_SIZE = 3
LEARNING_RATE = 1e-3
STRATEGIES: tuple[Strategy, ...] = ("ddp", "fsdp")

ROWS = [
    ("What is the price of the Zephyr X2?", "The Zephyr X2 router costs 129 euros.", 1.0),
    ("Error code E42?", "Error code E42 means the firmware update was interrupted.", 2.0),
    ("How long do refunds take?", "Our refund window is 30 days from delivery.", 0.5),
    ("It still fails.", "Please restart the device and try again.", 1.0),
    ("Hello?", "Hello, how can I help you today?", 1.5),
    ("Thanks!", "Thank you, that fixed it! Anything else?", 0.0),
    ("Who are you?", "You are a helpful support assistant for Acme.", 1.0),
]


def _samples() -> list[dict[str, Any]]:
    return [
        {
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "weight": w,
            "record": i,
        }
        for i, (q, a, w) in enumerate(ROWS)
    ]


def run_training(
    model_dir: Path, out_dir: Path, strategy: Strategy, context: DistributedContext
) -> None:
    """A few steps of full fine-tuning on this rank's shares; what the worker will do.

    Rank 0 writes ``weights.pt`` (the whole model) and the events; for DDP every
    rank also writes its own replica, ``replica-<rank>.pt``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ownchat_trainer.worker import batch_order

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, use_safetensors=True
    )
    model.to(context.device)
    pad_id = tokenizer.pad_token_id
    samples, _ = encode_samples(tokenizer, _samples(), 128)
    model = wrap_model(model, context, strategy)
    model.train()
    # AdamW's update is g / (|g| + eps): with the default eps, rounding noise in a
    # near-zero gradient moves a weight by up to lr; a larger eps keeps the
    # comparison about the gradients, which is what sharding could get wrong.
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0, eps=1e-6)
    events: list[dict[str, Any]] = []
    emit = main_only(events.append, context)
    order = batch_order(len(samples), BATCH_SIZE, seed=0)
    losses: list[float] = []
    norms: list[float] = []
    for step in range(1, STEPS + 1):
        batch = collate(local_share(samples, next(order), context, pad_id), pad_id)
        batch = batch.to(context.device)
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits
        loss = global_loss(*weighted_loss_terms(logits, batch.labels, batch.weights), context)
        loss.backward.backward()
        # The norm before clipping: AdamW and clipping would hide a wrong gradient scale.
        norm: Any = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if hasattr(norm, "full_tensor"):  # FSDP's parameters are DTensors
            norm = norm.full_tensor()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.value))
        norms.append(float(norm))
        emit(
            {
                "event": "metrics",
                "step": step,
                "loss": float(loss.value),
                "weight": float(loss.weight),
            }
        )

    state = gathered_state_dict(model, context)
    if strategy == "ddp":
        replica = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
        torch.save(replica, out_dir / f"replica-{context.rank}.pt")
    if context.is_main:
        assert state is not None
        torch.save({k: v.detach().cpu() for k, v in state.items()}, out_dir / "weights.pt")
        (out_dir / "losses.json").write_text(json.dumps({"loss": losses, "grad_norm": norms}))
    else:
        assert state is None
    (out_dir / f"events-{context.rank}.json").write_text(json.dumps(events))
    barrier(context)


def _rank_main(model_dir: Path, out_root: Path) -> None:
    context = init_from_env()
    try:
        assert context.distributed and context.backend == "gloo", context
        torch.set_num_threads(1)
        for strategy in STRATEGIES:
            started = time.perf_counter()
            run_training(model_dir, out_root / strategy, strategy, context)
            seconds = time.perf_counter() - started
            sys.stderr.write(f"rank {context.rank} {strategy}: {seconds:.1f} s\n")
    finally:
        teardown(context)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ownchat.testing import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("dist") / "tiny")


def test_shards_are_disjoint_ordered_and_cover_uneven_steps() -> None:
    step = [9, 4, 7, 1, 8]
    shares = [shard_indices(step, rank, 2) for rank in range(2)]
    assert shares == [[9, 7, 8], [4, 1]]
    assert shard_indices(step, 1, 2) == shares[1]  # deterministic
    for world in range(1, 8):
        shares = [shard_indices(step, rank, world) for rank in range(world)]
        assert sorted(i for share in shares for i in share) == sorted(step)
        sizes = [len(share) for share in shares]
        assert max(sizes) - min(sizes) <= 1
    assert shard_indices([3], 1, 2) == []
    with pytest.raises(ValueError):
        shard_indices(step, 2, 2)


def test_one_process_context_is_a_no_op() -> None:
    context = init_from_env({})
    assert (context.rank, context.world_size, context.distributed, context.is_main) == (
        0,
        1,
        False,
        True,
    )
    assert context.backend is None
    assert not torch.distributed.is_initialized()
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, context) is model
    assert unwrap(model) is model
    values = torch.tensor([1.5, 2.0])
    assert torch.equal(sum_across_ranks(values, context), values)
    barrier(context)
    teardown(context)


def _same_optimizer_state(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    # A checkpoint read with weights_only gives AdamW's betas back as a list.
    def groups(state: dict[str, Any]) -> list[dict[str, Any]]:
        return [{**group, "betas": list(group["betas"])} for group in state["param_groups"]]

    assert groups(ours) == groups(theirs)
    assert ours["state"].keys() == theirs["state"].keys()
    for index, entry in theirs["state"].items():
        for key, value in entry.items():
            assert torch.equal(ours["state"][index][key], value), (index, key)


def test_optimizer_state_is_saved_by_name_and_loads_back_exactly(tmp_path: Path) -> None:
    context = DistributedContext()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.randn(5, 3)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    by_name = OptimizerByName(model, optimizer, context)
    with pytest.raises(RuntimeError, match="gather"):
        by_name.state_dict()
    by_name.gather()
    torch.save(by_name.state_dict(), tmp_path / "optimizer.pt")
    saved = torch.load(tmp_path / "optimizer.pt", weights_only=True)
    assert set(saved["state"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}

    weights = [p.detach().clone() for p in model.parameters()]
    fresh = torch.optim.AdamW(model.parameters(), lr=1.0)
    OptimizerByName(model, fresh, context).load_state_dict(saved)
    _same_optimizer_state(fresh.state_dict(), optimizer.state_dict())
    # Loading sets up the optimizer's state with a step that must not move a weight.
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))

    # Checkpoints written before names were used hold the state by position.
    old = torch.optim.AdamW(model.parameters(), lr=1.0)
    load_optimizer_state(model, old, optimizer.state_dict())
    _same_optimizer_state(old.state_dict(), optimizer.state_dict())


def test_one_process_loss_is_the_weighted_mean() -> None:
    context = DistributedContext()
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.tensor([[-100, 3, 4, -100, -100], [-100, -100, 1, 2, 7]])
    weights = torch.tensor([2.0, 0.5])
    loss_sum, weight = weighted_loss_terms(logits, labels, weights)
    loss = global_loss(loss_sum, weight, context)
    expected = loss_sum / weight
    assert torch.equal(loss.backward, expected)
    assert float(loss.value) == pytest.approx(float(expected.detach()))
    assert float(loss.weight) == pytest.approx(2.0 * 2 + 0.5 * 3)
    zero = global_loss(loss_sum * 0, weight * 0, context)
    assert float(zero.value) == 0.0 and float(zero.weight) == 0.0


def test_idle_sample_adds_nothing(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    batch = collate([idle_sample(0)], 0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    loss_sum, weight = weighted_loss_terms(logits, batch.labels, batch.weights)
    global_loss(loss_sum, weight, DistributedContext()).backward.backward()
    assert float(weight) == 0.0 and float(loss_sum.detach()) == 0.0
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and not g.any() for g in grads)
    samples = [idle_sample(5)]
    context = DistributedContext(rank=1, world_size=2)
    assert local_share(samples, [0], context, 5) == [idle_sample(5)]
    assert local_share(samples, [0], DistributedContext(world_size=2), 5) == samples


def test_main_only_runs_on_rank_zero() -> None:
    seen: list[int] = []
    main_only(seen.append, DistributedContext(rank=0, world_size=2))(1)
    main_only(seen.append, DistributedContext(rank=1, world_size=2))(2)
    assert seen == [1]


def test_decoder_layers_are_the_llama_blocks(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    layers = decoder_layers(model)
    assert [type(layer).__name__ for layer in layers] == ["LlamaDecoderLayer"] * 2
    stack = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(1, 1)] * 3))
    assert len(decoder_layers(stack)) == 3


@pytest.mark.slow
def test_two_gloo_ranks_train_exactly_as_one_process(tiny_model: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        __file__,
        str(tiny_model),
        str(tmp_path / "ranks"),
    ]
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    torch.set_num_threads(1)
    run_training(tiny_model, tmp_path / "single", "ddp", init_from_env({}))
    single = json.loads((tmp_path / "single" / "losses.json").read_text())
    reference = torch.load(tmp_path / "single" / "weights.pt")
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    moved = max(float((reference[k] - start[k]).abs().max()) for k in reference)
    assert moved > 1e-4, "training did not change the weights"

    for strategy in STRATEGIES:
        out = tmp_path / "ranks" / strategy
        steps = json.loads((out / "losses.json").read_text())
        assert steps["loss"] == pytest.approx(single["loss"], abs=1e-5), strategy
        assert steps["grad_norm"] == pytest.approx(single["grad_norm"], abs=1e-5), strategy
        weights = torch.load(out / "weights.pt")
        assert weights.keys() == reference.keys()
        for name, value in reference.items():
            torch.testing.assert_close(weights[name], value, atol=1e-5, rtol=0, msg=name)
        events = [json.loads((out / f"events-{rank}.json").read_text()) for rank in (0, 1)]
        assert [e["step"] for e in events[0]] == list(range(1, STEPS + 1))
        assert events[1] == []
    replicas = [torch.load(tmp_path / "ranks" / "ddp" / f"replica-{r}.pt") for r in (0, 1)]
    for name, value in replicas[0].items():
        assert torch.equal(value, replicas[1][name]), name


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]), Path(sys.argv[2]))
