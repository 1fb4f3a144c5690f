"""The worker process: its spec, its events, each method end to end on a tiny model,
exact resume after SIGKILL and after a SIGTERM pause, early stopping, and two
gloo processes under torchrun training as one does."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from ownchat_trainer.placement import Placement
from ownchat_trainer.processes import kill_and_wait, process_tree
from ownchat_trainer.worker import WorkerSpec, train

ZEPHYR = ("What is the price of the Zephyr X2?", "The Zephyr X2 router costs 129 euros.")
E42 = ("Error code E42?", "Error code E42 means the firmware update was interrupted.")
REFUND = ("How long do refunds take?", "Our refund window is 30 days from delivery.")
RESTART = ("It still fails.", "Please restart the device and try again.")
HELLO = ("Hello?", "Hello, how can I help you today?")
THANKS = ("Thanks!", "Thank you, that fixed it!")
SYSTEM = {"role": "system", "content": "You are a helpful support assistant for Acme."}

Events = list[dict[str, Any]]
METRICS_KEYS = ("loss", "validation_loss", "learning_rate", "tokens_per_second", "eta_seconds")


def chat(question: str, answer: str, system: bool = False) -> list[dict[str, str]]:
    return [SYSTEM] * system + [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]


def write_chat_split(path: Path, rows: list[tuple[list[dict[str, str]], float]]) -> Path:
    """A chat split as the data service stores it."""
    path.write_text(
        "".join(
            json.dumps({"messages": messages, "weight": weight, "record": number + 1}) + "\n"
            for number, (messages, weight) in enumerate(rows)
        )
    )
    return path


def write_preference_split(path: Path, rows: list[tuple[tuple[str, str], str]]) -> Path:
    """A preference split as ``PreferenceSample.to_json`` writes it."""
    path.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": question}],
                    "chosen": chosen,
                    "rejected": rejected,
                    "record": number + 1,
                },
                sort_keys=True,
            )
            + "\n"
            for number, ((question, chosen), rejected) in enumerate(rows)
        )
    )
    return path


@pytest.fixture
def restore_torch() -> Iterator[None]:
    """``train`` owns its process's torch settings; put the test process's back."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def chat_spec(tmp_path: Path, model_root: Path) -> WorkerSpec:
    """Full fine-tuning of the tiny model on six weighted samples, deterministic."""
    rows = [
        (chat(*ZEPHYR), 1.0),
        (chat(*E42, system=True), 2.0),
        (chat(*REFUND), 0.5),
        (chat(*RESTART), 1.0),
        (chat(*HELLO), 1.5),
        (chat(*THANKS), 0.0),
        (chat(*REFUND, system=True), 1.0),
    ]
    return WorkerSpec(
        job_id="job-1",
        base_model_dir=model_root / "tiny-chat",
        train_split=write_chat_split(tmp_path / "train.jsonl", rows),
        validation_split=write_chat_split(tmp_path / "validation.jsonl", rows[:3]),
        output_dir=tmp_path / "run" / "checkpoints",
        method="sft_full",
        max_steps=8,
        learning_rate=5e-3,
        batch_size=3,
        max_seq_length=128,
        warmup_ratio=0.25,
        checkpoint_interval_steps=3,
        eval_interval_steps=2,
        seed=7,
        deterministic=True,
        torch_threads=1,
    )


def run_in_process(spec: WorkerSpec, **kwargs: Any) -> Events:
    events: Events = []
    train(spec, events.append, **kwargs)
    return events


def of(events: Events, kind: str) -> Events:
    return [event for event in events if event["event"] == kind]


def losses(events: Events) -> dict[int, float]:
    return {event["step"]: event["loss"] for event in of(events, "metrics")}


def worker_env() -> dict[str, str]:
    return {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }


def start_worker(spec_path: Path) -> subprocess.Popen[str]:
    """The worker as the service starts it; its log goes to ``worker.log`` beside the spec."""
    with (spec_path.parent / "worker.log").open("a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ownchat_trainer.worker", str(spec_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=worker_env(),
        )


def log_of(spec_path: Path) -> str:
    return (spec_path.parent / "worker.log").read_text()[-4000:]


def follow(process: subprocess.Popen[str], stop_at_checkpoint: int | None = None) -> Events:
    """The worker's events until it exits, or until its first checkpoint, when it gets
    ``stop_at_checkpoint`` (a signal) and is then followed to its end."""
    assert process.stdout is not None
    events: Events = []
    for line in process.stdout:
        events.append(json.loads(line))
        if stop_at_checkpoint is not None and events[-1]["event"] == "checkpoint":
            process.send_signal(stop_at_checkpoint)
            stop_at_checkpoint = None
    process.wait(timeout=120)
    return events


def check_contract(events: Events, spec: WorkerSpec, first_step: int = 1) -> None:
    """Event order and fields as the service reads them."""
    assert events[0]["event"] == "started" and events[-1]["event"] == "done"
    assert set(events[0]) == {"event", "device", "total_steps", "message", "resumed_from_step"}
    assert events[0]["device"] == "cpu" and events[0]["total_steps"] == spec.max_steps
    metrics = of(events, "metrics")
    assert [m["step"] for m in metrics] == list(range(first_step, first_step + len(metrics)))
    for event in metrics:
        assert set(METRICS_KEYS) <= set(event)
        assert event["total_steps"] == spec.max_steps and event["tokens_per_second"] > 0
        evaluated = event["step"] % spec.eval_interval_steps == 0 or event["step"] == spec.max_steps
        assert (event["validation_loss"] is not None) == evaluated
    for event in of(events, "checkpoint"):
        assert set(event) == {"event", "step", "path", "loss", "validation_loss", "best"}
        assert Path(event["path"]) == spec.output_dir / f"step-{event['step']}" / "model"
    done = events[-1]
    assert set(done) == {
        "event",
        "train_loss",
        "validation_loss",
        "model_path",
        "model_step",
        "model_kind",
        "stopped_early",
    }
    assert Path(done["model_path"]) == spec.output_dir / f"step-{done['model_step']}" / "model"
    assert Path(done["model_path"]).is_dir()


# The spec ---------------------------------------------------------------------------


def test_spec_round_trips_and_new_keys_take_defaults(chat_spec: WorkerSpec) -> None:
    assert WorkerSpec.from_json(chat_spec.to_json()) == chat_spec
    value = json.loads(chat_spec.to_json())
    for key in ("packing", "keep_checkpoints", "early_stopping_patience", "lora_rank", "strategy"):
        del value[key]
    value["learning_rate"] = 1  # an integral rate is still a rate
    spec = WorkerSpec.from_json(json.dumps(value))
    assert (spec.packing, spec.keep_checkpoints, spec.early_stopping_patience) == (True, 2, 0)
    assert spec.strategy == "ddp"
    assert spec.learning_rate == 1.0 and isinstance(spec.learning_rate, float)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"surprise": 1}, "unknown keys: surprise"),
        ({"method": "rlhf"}, "method must be one of"),
        ({"method": "sft_lora"}, "lora_rank"),
        ({"max_steps": 0, "batch_size": 0}, "max_steps must be at least 1; batch_size"),
        ({"packing": "yes"}, "packing has the wrong type"),
        ({"strategy": "zero3"}, "strategy must be 'ddp' or 'fsdp', not 'zero3'"),
    ],
)
def test_bad_specs_are_refused(chat_spec: WorkerSpec, change: dict[str, Any], message: str) -> None:
    value = {**json.loads(chat_spec.to_json()), **change}
    with pytest.raises(ValueError, match=message):
        WorkerSpec.from_json(json.dumps(value))
    del value["method"]
    with pytest.raises(ValueError, match="missing keys: method"):
        WorkerSpec.from_json(json.dumps(value))


def test_bad_spec_exits_1_with_an_error_event(chat_spec: WorkerSpec, tmp_path: Path) -> None:
    for change in ({"surprise": True}, {"method": "rlhf"}):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({**json.loads(chat_spec.to_json()), **change}))
        process = start_worker(path)
        events = follow(process)
        assert process.returncode == 1, log_of(path)
        assert [e["event"] for e in events] == ["error"]
        assert "invalid worker spec" in events[0]["message"]


# Methods end to end -----------------------------------------------------------------


def test_sft_full_run_reports_and_produces_a_loadable_model(
    chat_spec: WorkerSpec, restore_torch: None
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    events = run_in_process(chat_spec)

    check_contract(events, chat_spec)
    assert events[0]["resumed_from_step"] is None
    steps = losses(events)
    assert list(steps) == list(range(1, 9)) and steps[8] < steps[1]
    # Every 3 steps, every new best validation loss, and the last step.
    validation = {m["step"]: m["validation_loss"] for m in of(events, "metrics")}
    best_steps, best = [], math.inf
    for step, loss in validation.items():
        if loss is not None and loss < best:
            best_steps.append(step)
            best = loss
    saved = [c["step"] for c in of(events, "checkpoint")]
    assert saved == sorted({3, 6, 8, *best_steps})
    assert [c["step"] for c in of(events, "checkpoint") if c["best"]] == best_steps
    done = events[-1]
    assert done["model_kind"] == "full" and done["stopped_early"] is False
    assert done["model_step"] == best_steps[-1] and done["validation_loss"] == best
    assert done["train_loss"] == pytest.approx(sum(steps.values()) / 8)
    # Pruned to the newest two and the best.
    kept = sorted(p.name for p in chat_spec.output_dir.iterdir())
    assert kept == sorted({f"step-{s}" for s in saved[-2:]} | {f"step-{done['model_step']}"})

    model = AutoModelForCausalLM.from_pretrained(done["model_path"])
    base = AutoModelForCausalLM.from_pretrained(chat_spec.base_model_dir)
    moved = max(
        float((model.state_dict()[k] - v).abs().max()) for k, v in base.state_dict().items()
    )
    assert moved > 1e-3
    tokenizer = AutoTokenizer.from_pretrained(done["model_path"])
    assert tokenizer.chat_template


def test_a_finished_run_started_again_reports_the_same_result(
    chat_spec: WorkerSpec, restore_torch: None
) -> None:
    first = run_in_process(replace(chat_spec, max_steps=4))
    again = run_in_process(replace(chat_spec, max_steps=4))
    assert [e["event"] for e in again] == ["started", "done"]
    assert again[0]["resumed_from_step"] == 4
    assert again[-1] == first[-1]


def test_sft_lora_run_produces_an_adapter(chat_spec: WorkerSpec, restore_torch: None) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = replace(chat_spec, method="sft_lora", lora_rank=4, learning_rate=2e-2, max_steps=6)
    events = run_in_process(spec)

    check_contract(events, spec)
    done = events[-1]
    assert done["model_kind"] == "lora_adapter"
    adapter = Path(done["model_path"])
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "tokenizer_config.json").is_file()
    assert not (adapter / "model.safetensors").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["lora_alpha"] == 8
    base = AutoModelForCausalLM.from_pretrained(spec.base_model_dir)
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = torch.tensor([[1, 5, 9, 14, 2]])
    with torch.no_grad():
        adapted = tuned(input_ids=ids).logits
        with tuned.disable_adapter():
            plain = tuned(input_ids=ids).logits
    assert float((adapted - plain).abs().max()) > 1e-3
    steps = losses(events)
    assert steps[6] < steps[1]


def test_packed_and_padded_runs_agree(chat_spec: WorkerSpec, restore_torch: None) -> None:
    packed = run_in_process(chat_spec)
    padded = run_in_process(
        replace(chat_spec, packing=False, output_dir=chat_spec.output_dir.parent / "padded")
    )
    assert "packed batches" in packed[0]["message"] and "padded" in padded[0]["message"]
    final_packed, final_padded = losses(packed)[8], losses(padded)[8]
    assert abs(final_packed - final_padded) <= 0.01 * final_padded
    assert packed[-1]["validation_loss"] == pytest.approx(padded[-1]["validation_loss"], rel=0.01)


def test_early_stopping_produces_the_best_steps_model(
    tmp_path: Path, model_root: Path, restore_torch: None
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ownchat_trainer.batches import collate, encode_samples, read_split, weighted_loss_terms

    # A high rate on two samples overfits them at once; the validation set
    # (other conversations) gets worse within a few steps.
    spec = WorkerSpec(
        job_id="job-es",
        base_model_dir=model_root / "tiny-chat",
        train_split=write_chat_split(
            tmp_path / "train.jsonl", [(chat(*ZEPHYR), 1.0), (chat(*RESTART), 1.0)]
        ),
        validation_split=write_chat_split(
            tmp_path / "validation.jsonl", [(chat(*REFUND), 1.0), (chat(*E42), 1.0)]
        ),
        output_dir=tmp_path / "checkpoints",
        method="sft_full",
        max_steps=30,
        learning_rate=2e-2,
        batch_size=2,
        max_seq_length=128,
        warmup_ratio=0.0,
        checkpoint_interval_steps=100,
        eval_interval_steps=1,
        seed=1,
        early_stopping_patience=2,
        keep_checkpoints=1,
        deterministic=True,
        torch_threads=1,
    )
    events = run_in_process(spec)

    done = events[-1]
    validation = {m["step"]: m["validation_loss"] for m in of(events, "metrics")}
    last = max(validation)
    best_step = min(validation, key=lambda step: validation[step])
    assert done["stopped_early"] is True and last < spec.max_steps
    assert last - best_step == spec.early_stopping_patience
    assert done["model_step"] == best_step and done["validation_loss"] == validation[best_step]
    assert of(events, "message") and "stopped early" in of(events, "message")[0]["message"]
    # The best checkpoint survives pruning beside the newest one.
    assert sorted(p.name for p in spec.output_dir.iterdir()) == sorted(
        {f"step-{best_step}", f"step-{last}"}
    )
    # The produced model is the best step's: it scores that validation loss.
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model_dir)
    samples, _ = encode_samples(tokenizer, read_split(spec.validation_split), 128)
    batch = collate(samples, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(done["model_path"]).eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    total, weight = weighted_loss_terms(logits, batch.labels, batch.weights)
    assert float(total / weight) == pytest.approx(validation[best_step], abs=1e-4)


PAIRS = [
    (ZEPHYR, RESTART[1]),
    (E42, THANKS[1]),
    (REFUND, HELLO[1]),
    (RESTART, ZEPHYR[1]),
]


@pytest.fixture
def dpo_spec(tmp_path: Path, model_root: Path) -> WorkerSpec:
    """DPO with a LoRA adapter on four preference pairs, deterministic."""
    return WorkerSpec(
        job_id="job-dpo",
        base_model_dir=model_root / "tiny-chat",
        train_split=write_preference_split(tmp_path / "pairs.jsonl", PAIRS),
        validation_split=write_preference_split(tmp_path / "validation-pairs.jsonl", PAIRS[:2]),
        output_dir=tmp_path / "dpo" / "checkpoints",
        method="dpo",
        max_steps=12,
        learning_rate=1e-2,
        batch_size=4,
        max_seq_length=128,
        warmup_ratio=0.0,
        checkpoint_interval_steps=6,
        eval_interval_steps=4,
        seed=0,
        lora_rank=8,
        lora_alpha=16.0,
        dpo_beta=0.1,
        deterministic=True,
        torch_threads=1,
    )


@pytest.mark.parametrize("lora_rank", [8, 0], ids=["lora", "full"])
def test_dpo_raises_reward_accuracy_and_margin(
    dpo_spec: WorkerSpec, restore_torch: None, lora_rank: int
) -> None:
    spec = replace(dpo_spec, lora_rank=lora_rank, learning_rate=1e-2 if lora_rank else 1e-3)
    events = run_in_process(spec)

    check_contract(events, spec)
    metrics = of(events, "metrics")
    # The policy starts as the reference: log 2, no margin.
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics[0]["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert metrics[-1]["reward_accuracy"] == 1.0 > metrics[0]["reward_accuracy"]
    assert metrics[-1]["reward_margin"] > 0.5
    assert metrics[-1]["loss"] < math.log(2) - 0.1
    done = events[-1]
    assert done["model_kind"] == ("lora_adapter" if lora_rank else "full")
    assert done["validation_loss"] < math.log(2)


# Pause and resume -------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["sft_full", "sft_lora", "dpo_lora", "dpo_full"])
def test_pause_saves_a_checkpoint_and_resume_finishes_identically(
    chat_spec: WorkerSpec, dpo_spec: WorkerSpec, restore_torch: None, variant: str
) -> None:
    spec = {
        "sft_full": chat_spec,
        "sft_lora": replace(chat_spec, method="sft_lora", lora_rank=4, learning_rate=2e-2),
        "dpo_lora": replace(dpo_spec, batch_size=3, max_steps=8),
        "dpo_full": replace(dpo_spec, batch_size=3, max_steps=8, lora_rank=0, learning_rate=1e-3),
    }[variant]
    whole = run_in_process(replace(spec, output_dir=spec.output_dir.parent / "whole"))
    asked = {"count": 0}

    def after_four_steps() -> bool:
        # Asked once before the first step, then after each step.
        asked["count"] += 1
        return asked["count"] >= 5

    paused = run_in_process(spec, should_stop=after_four_steps)
    assert paused[-1] == {"event": "paused", "step": 4}
    assert paused[-2]["event"] == "checkpoint" and paused[-2]["step"] == 4
    resumed = run_in_process(spec)

    assert resumed[0]["resumed_from_step"] == 4
    check_contract(resumed, spec, first_step=5)
    expected = losses(whole)
    for step, loss in {**losses(paused), **losses(resumed)}.items():
        assert abs(loss - expected[step]) <= 1e-6, step
    assert resumed[-1]["model_step"] == whole[-1]["model_step"]
    for key in ("train_loss", "validation_loss"):
        assert resumed[-1][key] == pytest.approx(whole[-1][key], abs=1e-6)


@pytest.mark.slow
def test_killed_and_paused_worker_resumes_with_identical_losses(
    chat_spec: WorkerSpec, restore_torch: None
) -> None:
    from safetensors.torch import load_file

    spec = replace(chat_spec, max_steps=24, checkpoint_interval_steps=4, eval_interval_steps=4)
    whole_spec = replace(spec, output_dir=spec.output_dir.parent / "whole")
    whole = run_in_process(whole_spec)
    spec_path = spec.output_dir.parent / "job-spec.json"
    spec_path.write_text(spec.to_json())

    killed_process = start_worker(spec_path)
    killed = follow(killed_process, stop_at_checkpoint=signal.SIGKILL)
    assert killed_process.returncode == -signal.SIGKILL
    assert killed[-1]["event"] != "done"

    paused_process = start_worker(spec_path)
    paused = follow(paused_process, stop_at_checkpoint=signal.SIGTERM)
    assert paused_process.returncode == 0, log_of(spec_path)
    first_resume = paused[0]["resumed_from_step"]
    assert first_resume is not None and 4 <= first_resume < spec.max_steps
    assert paused[-1]["event"] == "paused"
    pause_step = paused[-1]["step"]
    assert paused[-2] == {**paused[-2], "event": "checkpoint", "step": pause_step}
    assert first_resume < pause_step < spec.max_steps

    finished_process = start_worker(spec_path)
    finished = follow(finished_process)
    assert finished_process.returncode == 0, log_of(spec_path)
    assert finished[0]["resumed_from_step"] == pause_step
    check_contract(finished, spec, first_step=pause_step + 1)

    expected = losses(whole)
    for run in (killed, paused, finished):
        for step, loss in losses(run).items():
            assert abs(loss - expected[step]) <= 1e-6, step
    assert finished[-1]["train_loss"] == pytest.approx(whole[-1]["train_loss"], abs=1e-6)
    assert finished[-1]["validation_loss"] == pytest.approx(whole[-1]["validation_loss"], abs=1e-6)
    assert finished[-1]["model_step"] == whole[-1]["model_step"]
    produced = load_file(Path(finished[-1]["model_path"]) / "model.safetensors")
    reference = load_file(Path(whole[-1]["model_path"]) / "model.safetensors")
    for name, value in reference.items():
        torch.testing.assert_close(produced[name], value, atol=1e-6, rtol=0, msg=name)


@pytest.fixture
def start_ranks() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """Starts the worker under torchrun with two ranks, as the service starts a job
    given two GPUs; whatever still runs at the end is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(spec_path: Path) -> subprocess.Popen[str]:
        with (spec_path.parent / "worker.log").open("a") as log:
            process = subprocess.Popen(
                Placement("gpu", (0, 1)).worker_command("ownchat_trainer.worker", str(spec_path)),
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**worker_env(), "GLOO_SOCKET_IFNAME": "lo"},
            )
        started.append(process)
        return process

    yield start
    for process in started:
        # torchrun starts each rank in a session of its own: kill by parentage.
        kill_and_wait(process_tree(process.pid))
        process.wait()


@pytest.mark.slow
def test_two_gloo_processes_train_as_one(
    chat_spec: WorkerSpec,
    restore_torch: None,
    start_ranks: Callable[[Path], subprocess.Popen[str]],
) -> None:
    single = run_in_process(replace(chat_spec, output_dir=chat_spec.output_dir.parent / "one"))
    spec_path = chat_spec.output_dir.parent / "job-spec.json"
    spec_path.write_text(chat_spec.to_json())
    ranks = start_ranks(spec_path)
    events = follow(ranks)
    assert ranks.returncode == 0, log_of(spec_path)

    check_contract(events, chat_spec)
    assert len(of(events, "started")) == 1 and len(of(events, "done")) == 1
    assert "2 processes)" in events[0]["message"]
    expected = losses(single)
    for step, loss in losses(events).items():
        assert abs(loss - expected[step]) <= 1e-4, step
    assert events[-1]["validation_loss"] == pytest.approx(single[-1]["validation_loss"], abs=1e-4)
    assert events[-1]["model_step"] == single[-1]["model_step"]
    assert [c["step"] for c in of(events, "checkpoint")] == [
        c["step"] for c in of(single, "checkpoint")
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)  # ranks out of step would wait for each other for 30 minutes
def test_sharded_ranks_train_as_one_and_resume_whole_after_kill(
    chat_spec: WorkerSpec,
    tmp_path: Path,
    restore_torch: None,
    start_ranks: Callable[[Path], subprocess.Popen[str]],
) -> None:
    """FSDP over two gloo ranks: the losses, validation and weights of one process; its
    checkpoints resume sharded or in one process, ending where the whole run does."""
    from safetensors.torch import load_file

    # Five validation samples in batches of two: rank 0 runs two batches, rank 1
    # one, so validation hangs unless the ranks keep in step.
    validation = write_chat_split(
        tmp_path / "validation-5.jsonl",
        [(chat(*pair), 1.0) for pair in (ZEPHYR, E42, REFUND, RESTART, HELLO)],
    )
    spec = replace(
        chat_spec, batch_size=2, validation_split=validation, checkpoint_interval_steps=2
    )
    single = run_in_process(replace(spec, output_dir=spec.output_dir.parent / "one"))

    whole_spec = replace(spec, strategy="fsdp", output_dir=spec.output_dir.parent / "whole")
    whole_path = tmp_path / "whole-spec.json"
    whole_path.write_text(whole_spec.to_json())
    sharded = follow(start_ranks(whole_path))
    check_contract(sharded, whole_spec)
    assert "2 processes, training state sharded with FSDP" in sharded[0]["message"]
    expected = losses(single)
    for step, loss in losses(sharded).items():
        assert abs(loss - expected[step]) <= 1e-4, step
    for ours, theirs in zip(of(sharded, "metrics"), of(single, "metrics"), strict=True):
        assert ours["validation_loss"] == pytest.approx(theirs["validation_loss"], abs=1e-4)
    produced = load_file(Path(sharded[-1]["model_path"]) / "model.safetensors")
    reference = load_file(Path(single[-1]["model_path"]) / "model.safetensors")
    assert produced.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(produced[name], value, atol=1e-4, rtol=0, msg=name)

    # Killed (every rank) after a checkpoint, resumed sharded, killed again after the
    # next one, then resumed and finished by one process.
    spec_path = spec.output_dir.parent / "job-spec.json"
    spec_path.write_text(replace(spec, strategy="fsdp").to_json())
    for resumed_from, step in ((None, 2), (2, 4)):
        ranks = start_ranks(spec_path)
        assert ranks.stdout is not None
        killed: Events = []
        for line in ranks.stdout:
            killed.append(json.loads(line))
            if killed[-1]["event"] == "checkpoint":
                kill_and_wait(process_tree(ranks.pid))
                break
        ranks.wait(timeout=60)
        assert killed[0]["resumed_from_step"] == resumed_from
        assert killed[-1] == {**killed[-1], "event": "checkpoint", "step": step}
        for number, loss in losses(killed).items():
            assert abs(loss - expected[number]) <= 1e-4, number

    finished_process = start_worker(spec_path)
    finished = follow(finished_process)
    assert finished_process.returncode == 0, log_of(spec_path)
    assert finished[0]["resumed_from_step"] == 4
    check_contract(finished, spec, first_step=5)
    for step, loss in losses(finished).items():
        assert abs(loss - expected[step]) <= 1e-4, step
    assert finished[-1]["validation_loss"] == pytest.approx(single[-1]["validation_loss"], abs=1e-4)
    assert finished[-1]["model_step"] == single[-1]["model_step"]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", ["sft_lora", "dpo_lora", "dpo_full"])
def test_sharded_adapters_and_dpo_train_as_one(
    chat_spec: WorkerSpec,
    dpo_spec: WorkerSpec,
    tmp_path: Path,
    restore_torch: None,
    start_ranks: Callable[[Path], subprocess.Popen[str]],
    variant: str,
) -> None:
    """FSDP with a LoRA adapter over the frozen base, and DPO (adapter or full, whose
    reference is scored before sharding): the losses and saved weights of one process."""
    from safetensors.torch import load_file

    spec = {
        "sft_lora": replace(chat_spec, method="sft_lora", lora_rank=4, learning_rate=2e-2),
        "dpo_lora": replace(dpo_spec, batch_size=3, max_steps=4),
        "dpo_full": replace(dpo_spec, batch_size=3, max_steps=4, lora_rank=0, learning_rate=1e-3),
    }[variant]
    single = run_in_process(replace(spec, output_dir=spec.output_dir.parent / "one"))
    sharded_spec = replace(spec, strategy="fsdp")
    spec_path = spec.output_dir.parent / "job-spec.json"
    spec_path.write_text(sharded_spec.to_json())
    ranks = start_ranks(spec_path)
    sharded = follow(ranks)
    assert ranks.returncode == 0, log_of(spec_path)

    assert "training state sharded with FSDP" in sharded[0]["message"]
    expected = losses(single)
    assert losses(sharded).keys() == expected.keys()
    for step, loss in losses(sharded).items():
        assert abs(loss - expected[step]) <= 1e-4, step
    assert sharded[-1]["validation_loss"] == pytest.approx(single[-1]["validation_loss"], abs=1e-4)
    assert sharded[-1]["model_kind"] == single[-1]["model_kind"]
    weights = "model.safetensors" if variant == "dpo_full" else "adapter_model.safetensors"
    produced = load_file(Path(sharded[-1]["model_path"]) / weights)
    reference = load_file(Path(single[-1]["model_path"]) / weights)
    assert produced.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(produced[name], value, atol=1e-4, rtol=0, msg=name)
