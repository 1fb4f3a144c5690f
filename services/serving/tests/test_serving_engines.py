"""The in-process engines on the tiny model: Transformers (the reference) and ONNX Runtime.

One engine of each kind is loaded for the module (the ONNX one exports the
model first, which takes most of the module's time); tests that stop an
engine load their own.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ownchat_serving.engine import (
    EngineLoadError,
    EngineOptions,
    EngineRequestError,
    EngineStep,
    EngineUnavailableError,
    load_tokenizer,
)
from ownchat_serving.engines import Engine
from ownchat_serving.engines.decoding import pick_token
from ownchat_serving.engines.onnx_engine import OnnxEngine
from ownchat_serving.engines.onnx_export import (
    INFO_FILE,
    MODEL_FILE,
    export_dir,
    greedy_probe,
    model_digest,
)
from ownchat_serving.engines.transformers_engine import TransformersEngine, load_causal_lm
from ownchat_serving.generation import ChatTurn, ResolvedSampling

pytestmark = pytest.mark.slow

PROMPTS = (
    (ChatTurn("user", "Hello"),),
    (ChatTurn("system", "You are a helpful support assistant."), ChatTurn("user", "Refund?")),
    (ChatTurn("user", "What is the price of the Zephyr X2?"),),
)
OPTIONS = EngineOptions()


def greedy(max_tokens: int, stop: tuple[str, ...] = ()) -> ResolvedSampling:
    return ResolvedSampling(0.0, 1.0, max_tokens, stop, None)


@dataclass
class Engines:
    """The module's engines, the event loop they live on, and the model they serve."""

    runner: asyncio.Runner
    transformers: TransformersEngine
    onnx: OnnxEngine
    model_dir: Path
    export_root: Path
    export_seconds: float

    def run(self, coroutine: Any) -> Any:
        return self.runner.run(coroutine)

    def steps(
        self, engine: Engine, turns: tuple[ChatTurn, ...], sampling: ResolvedSampling
    ) -> list[EngineStep]:
        async def collect() -> list[EngineStep]:
            prompt = engine.render(turns)
            return [step async for step in engine.stream(prompt, sampling, f"r-{time.time()}")]

        result: list[EngineStep] = self.run(collect())
        return result

    def complete(
        self, engine: Engine, turns: tuple[ChatTurn, ...], sampling: ResolvedSampling
    ) -> EngineStep:
        step: EngineStep = self.run(
            engine.complete(engine.render(turns), sampling, f"c-{time.time()}")
        )
        return step

    def both(self) -> tuple[TransformersEngine, OnnxEngine]:
        return self.transformers, self.onnx


@pytest.fixture(scope="module")
def engines(
    tmp_path_factory: pytest.TempPathFactory, servable_models: dict[int, Path]
) -> Iterator[Engines]:
    export_root = tmp_path_factory.mktemp("exports")
    model_dir = servable_models[0]
    with asyncio.Runner() as runner:
        transformers = runner.run(TransformersEngine.load(model_dir, OPTIONS))
        started = time.perf_counter()
        onnx = runner.run(OnnxEngine.load(model_dir, OPTIONS, export_root=export_root))
        seconds = time.perf_counter() - started
        try:
            yield Engines(runner, transformers, onnx, model_dir, export_root, seconds)
        finally:
            runner.run(transformers.shutdown())
            runner.run(onnx.shutdown())


def test_onnx_greedy_equals_transformers_token_for_token(engines: Engines) -> None:
    model = load_causal_lm(engines.model_dir, "auto")
    from ownchat_serving.engines.onnx_engine import OrtDecoder
    from ownchat_serving.engines.transformers_engine import TorchSequence

    kept = export_dir(engines.export_root, model_digest(engines.model_dir))
    decoder = OrtDecoder(kept / MODEL_FILE)
    for turns in PROMPTS:
        prompt = engines.transformers.render(turns)
        assert engines.onnx.render(turns) == prompt
        reference, _ = greedy_probe(TorchSequence(model).feed, prompt, 20)
        exported, _ = greedy_probe(decoder.new_sequence().feed, prompt, 20)
        assert exported == reference
        # And through the engines: the same reply, of the same length.
        replies = [engines.complete(e, turns, greedy(20)) for e in engines.both()]
        assert replies[0] == replies[1]
        assert replies[0].new_tokens == 20 and replies[0].finish_reason == "length"
    decoder.close()


def test_the_reference_decodes_as_transformers_generate(engines: Engines) -> None:
    import torch

    from ownchat_serving.engines.transformers_engine import TorchSequence

    model = load_causal_lm(engines.model_dir, "auto")
    prompt = engines.transformers.render(PROMPTS[1])
    ours, _ = greedy_probe(TorchSequence(model).feed, prompt, 16)
    with torch.no_grad():
        generated = model.generate(
            torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16, do_sample=False
        )
    assert ours == generated[0, len(prompt) :].tolist()
    text = engines.complete(engines.transformers, PROMPTS[1], greedy(16)).text
    tokenizer = load_tokenizer(engines.model_dir)
    assert text == tokenizer.decode(ours, skip_special_tokens=True)


@pytest.mark.parametrize("kind", ["transformers", "onnx"])
def test_streamed_deltas_add_up_to_the_reply(engines: Engines, kind: str) -> None:
    engine = getattr(engines, kind)
    steps = engines.steps(engine, PROMPTS[2], greedy(200))
    # The first step comes as soon as there is a token, not with the whole reply.
    assert len(steps) > 1 and steps[0].new_tokens < 200
    assert all(step.finish_reason is None for step in steps[:-1])
    assert steps[-1].finish_reason == "length"
    assert sum(step.new_tokens for step in steps) == 200
    assert {step.prompt_tokens for step in steps} == {len(engine.render(PROMPTS[2]))}
    streamed = "".join(step.text for step in steps)
    assert streamed == engines.complete(engine, PROMPTS[2], greedy(200)).text
    assert engine.unfinished_requests() == 0


@pytest.mark.parametrize("kind", ["transformers", "onnx"])
def test_a_stop_string_ends_the_reply_before_it(engines: Engines, kind: str) -> None:
    engine = getattr(engines, kind)
    reference = engines.complete(engine, PROMPTS[0], greedy(32)).text
    stop = reference[10:13]
    assert len(stop) == 3
    steps = engines.steps(engine, PROMPTS[0], greedy(32, stop=("never-said", stop)))
    assert steps[-1].finish_reason == "stop"
    assert "".join(step.text for step in steps) == reference[: reference.index(stop)]
    assert sum(step.new_tokens for step in steps) < 32


@pytest.mark.parametrize("kind", ["transformers", "onnx"])
def test_max_tokens_ends_with_length(engines: Engines, kind: str) -> None:
    engine = getattr(engines, kind)
    reply = engines.complete(engine, PROMPTS[1], greedy(5))
    assert (reply.finish_reason, reply.new_tokens) == ("length", 5)
    # A budget past the context is cut to what the context has left.
    prompt_tokens = len(engine.render(PROMPTS[1]))
    capped = engines.complete(engine, PROMPTS[1], greedy(5000))
    assert capped.finish_reason == "length"
    assert capped.new_tokens == engine.max_model_len - prompt_tokens == 512 - prompt_tokens


def test_an_end_of_sequence_token_ends_with_stop(engines: Engines, tmp_path: Path) -> None:
    # The tiny model never picks its own EOS; a copy that also ends on a token
    # its greedy reply makes shows the EOS path.
    model = load_causal_lm(engines.model_dir, "auto")
    from ownchat_serving.engines.transformers_engine import TorchSequence

    prompt = engines.transformers.render(PROMPTS[0])
    tokens, _ = greedy_probe(TorchSequence(model).feed, prompt, 12)
    position = next(i for i in range(3, 12) if tokens[i] not in tokens[:i])
    copy = tmp_path / "model"
    shutil.copytree(engines.model_dir, copy)
    generation = json.loads((copy / "generation_config.json").read_text())
    generation["eos_token_id"] = [generation["eos_token_id"], tokens[position]]
    (copy / "generation_config.json").write_text(json.dumps(generation))

    async def reply() -> EngineStep:
        engine = await TransformersEngine.load(copy, OPTIONS)
        try:
            return await engine.complete(prompt, greedy(40), "eos")
        finally:
            await engine.shutdown()

    step: EngineStep = engines.run(reply())
    assert step.finish_reason == "stop"
    assert step.new_tokens == position + 1
    tokenizer = load_tokenizer(engines.model_dir)
    assert step.text == tokenizer.decode(tokens[:position], skip_special_tokens=True)


RAW_PROMPT = "Once upon a time, the router"


def test_a_raw_prompt_is_tokenized_as_it_is_on_both_engines(engines: Engines) -> None:
    tokenizer = load_tokenizer(engines.model_dir)
    ids = engines.transformers.tokenize(RAW_PROMPT)
    assert engines.onnx.tokenize(RAW_PROMPT) == ids
    # The tokenizer's own special tokens (none for this one), no chat template.
    assert ids == tokenizer(RAW_PROMPT, add_special_tokens=True)["input_ids"]
    assert tokenizer.decode(ids) == RAW_PROMPT
    as_chat = engines.transformers.render((ChatTurn("user", RAW_PROMPT),))
    assert len(as_chat) > len(ids)
    # Its continuation is the same on both engines.
    replies = [
        engines.run(e.complete(ids, greedy(12), f"raw-{time.time()}")) for e in engines.both()
    ]
    assert replies[0] == replies[1]
    assert replies[0].prompt_tokens == len(ids) and replies[0].new_tokens == 12


def test_a_tokenizer_that_adds_a_bos_puts_it_before_a_raw_prompt_only(
    engines: Engines, tmp_path: Path
) -> None:
    from tokenizers.processors import TemplateProcessing

    copy = tmp_path / "model"
    shutil.copytree(engines.model_dir, copy)
    tokenizer = load_tokenizer(copy)
    bos = tokenizer.bos_token_id
    assert isinstance(bos, int)
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, bos)]
    )
    tokenizer.save_pretrained(copy)

    async def scenario() -> tuple[list[int], list[int], EngineStep]:
        engine = await TransformersEngine.load(copy, OPTIONS)
        try:
            ids = engine.tokenize(RAW_PROMPT)
            return ids, engine.render(PROMPTS[0]), await engine.complete(ids, greedy(4), "bos")
        finally:
            await engine.shutdown()

    ids, chat, reply = engines.run(scenario())
    assert ids == [bos, *engines.transformers.tokenize(RAW_PROMPT)]
    # A conversation's template writes its own special tokens: no BOS added twice.
    assert chat == engines.transformers.render(PROMPTS[0])
    assert reply.prompt_tokens == len(ids) and reply.new_tokens == 4


@pytest.mark.parametrize("kind", ["transformers", "onnx"])
def test_cancelling_a_reply_frees_its_request(engines: Engines, kind: str) -> None:
    engine = getattr(engines, kind)

    async def scenario() -> tuple[int, int, float]:
        received = asyncio.Event()
        steps = 0

        async def consume() -> None:
            nonlocal steps
            async for _ in engine.stream(engine.render(PROMPTS[0]), greedy(480), "cancel"):
                steps += 1
                received.set()

        task = asyncio.create_task(consume())
        await received.wait()
        held = engine.unfinished_requests()
        started = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return held, engine.unfinished_requests(), time.perf_counter() - started

    held, after, seconds = engines.run(scenario())
    assert (held, after) == (1, 0)
    # Stopped at the next token, not after the rest of the reply.
    started = time.perf_counter()
    assert engines.complete(engine, PROMPTS[0], greedy(480)).new_tokens == 480
    assert seconds < (time.perf_counter() - started) / 4
    # The engine goes on serving, and the request id is free again.
    assert engines.complete(engine, PROMPTS[0], greedy(2)).new_tokens == 2


def test_requests_beyond_the_concurrency_wait_their_turn(engines: Engines) -> None:
    engine = engines.onnx
    assert engine.concurrency == 2

    async def scenario() -> tuple[int, list[EngineStep]]:
        prompt = engine.render(PROMPTS[0])
        streams = [engine.stream(prompt, greedy(300), f"many-{i}") for i in range(3)]
        first = [await anext(stream) for stream in streams[:2]]
        waiting = asyncio.ensure_future(anext(streams[2]))
        await asyncio.sleep(0.05)
        held = engine.unfinished_requests()
        assert not waiting.done(), "a third request decodes only when a worker is free"
        await streams[0].aclose()
        first.append(await waiting)
        for stream in streams[1:]:
            await stream.aclose()
        return held, first

    held, first = engines.run(scenario())
    assert held == 3
    assert all(step.new_tokens >= 1 for step in first)
    assert engine.unfinished_requests() == 0


@pytest.mark.parametrize("kind", ["transformers", "onnx"])
def test_seeded_sampling_is_reproducible(engines: Engines, kind: str) -> None:
    engine = getattr(engines, kind)
    seeded = ResolvedSampling(1.0, 0.9, 16, (), 7)
    first = engines.complete(engine, PROMPTS[1], seeded)
    assert engines.complete(engine, PROMPTS[1], seeded) == first
    other = engines.complete(engine, PROMPTS[1], ResolvedSampling(1.0, 0.9, 16, (), 8))
    assert other.text != first.text


def test_both_engines_sample_alike_from_one_seed(engines: Engines) -> None:
    # One sampler over (all but) the same logits: the same seed, the same reply.
    seeded = ResolvedSampling(0.8, 0.95, 16, (), 11)
    replies = [engines.complete(e, PROMPTS[2], seeded) for e in engines.both()]
    assert replies[0] == replies[1]


def test_nucleus_and_temperature_pick_from_the_right_tokens() -> None:
    logits = np.array([0.0, 5.0, 4.9, -3.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert pick_token(logits, 0.0, 1.0, rng) == 1
    # A nucleus this small holds only the most likely token.
    assert {pick_token(logits, 1.0, 1e-6, rng) for _ in range(50)} == {1}
    # The two likely tokens hold ~99.9% of the mass; 0.9 keeps both and nothing else.
    assert {pick_token(logits, 1.0, 0.9, rng) for _ in range(200)} == {1, 2}


def test_the_export_is_kept_and_not_redone(engines: Engines) -> None:
    digest = model_digest(engines.model_dir)
    kept = export_dir(engines.export_root, digest)
    info = json.loads((kept / INFO_FILE).read_text())
    assert info["digest"] == digest and len(info["probe_tokens"]) == 8
    assert info["max_logit_difference"] < 1e-3
    # Only the kept export: no staging folder left behind.
    assert [p.name for p in engines.export_root.iterdir()] == [kept.name]
    written = (kept / MODEL_FILE).stat().st_mtime_ns

    async def again() -> tuple[float, EngineStep]:
        started = time.perf_counter()
        engine = await OnnxEngine.load(engines.model_dir, OPTIONS, export_root=engines.export_root)
        seconds = time.perf_counter() - started
        try:
            return seconds, await engine.complete(engine.render(PROMPTS[0]), greedy(6), "second")
        finally:
            await engine.shutdown()

    seconds, reply = engines.run(again())
    assert (kept / MODEL_FILE).stat().st_mtime_ns == written
    assert seconds < engines.export_seconds / 3
    assert reply == engines.complete(engines.transformers, PROMPTS[0], greedy(6))


def test_the_export_is_keyed_by_the_artifact_digest(engines: Engines, tmp_path: Path) -> None:
    from ownchat.artifacts import ArtifactStore

    stored = ArtifactStore(tmp_path / "artifacts").put_tree(engines.model_dir)
    directory = ArtifactStore(tmp_path / "artifacts").path(stored.digest)
    assert model_digest(directory) == stored.digest
    assert export_dir(tmp_path / "onnx", stored.digest).name == stored.digest.split(":")[1]


def test_shutdown_aborts_replies_in_flight(engines: Engines) -> None:
    async def scenario() -> tuple[EngineStep, int]:
        engine = await TransformersEngine.load(engines.model_dir, OPTIONS)
        stream = engine.stream(engine.render(PROMPTS[0]), greedy(480), "inflight")
        await anext(stream)
        await engine.shutdown()
        steps = [step async for step in stream]
        with pytest.raises(EngineUnavailableError):
            await engine.complete(engine.render(PROMPTS[0]), greedy(2), "late")
        return steps[-1], engine.unfinished_requests()

    last, unfinished = engines.run(asyncio.wait_for(scenario(), timeout=30))
    assert last.finish_reason == "abort"
    assert unfinished == 0


@pytest.mark.parametrize("kind", ["transformers", "onnx"])
def test_requests_the_engine_cannot_run_are_refused(engines: Engines, kind: str) -> None:
    engine = getattr(engines, kind)
    for prompt in ([], [1] * engine.max_model_len, [1, 10**6]):
        with pytest.raises(EngineRequestError):
            engines.run(engine.complete(prompt, greedy(2), "bad"))
    assert engine.unfinished_requests() == 0


@pytest.mark.parametrize("engine_class", [TransformersEngine, OnnxEngine])
def test_pickled_weights_are_refused(engines: Engines, tmp_path: Path, engine_class: Any) -> None:
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(engines.model_dir, pickled)
    for weights in pickled.glob("*.safetensors"):
        torch.save(load_file(weights), pickled / "pytorch_model.bin")
        weights.unlink()
    with pytest.raises(EngineLoadError, match="safetensors"):
        engines.run(engine_class.load(pickled, OPTIONS))
    assert not (pickled.parent / "onnx").exists()
