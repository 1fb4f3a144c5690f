"""LoRA adapters of one base served on one vLLM engine (CPU), as main and canary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from ownchat.errors import NotFoundError
from ownchat_serving.core import DeploySpec
from ownchat_serving.engine import EngineOptions
from ownchat_serving.generation import ChatTurn, GenerateInput, Sampling
from ownchat_serving.resolver import ModelKind

pytestmark = pytest.mark.slow

# The conftest's Stack: a core, its store and registry, a stub, one event loop.
Stack = Any
HELLO = (ChatTurn("user", "Hello"),)


def build_adapter(base: Path, target: Path, seed: int) -> Path:
    """A LoRA adapter of every linear layer, as the trainer writes one, with random weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(target, safe_serialization=True)
    return target


def engine_cores() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and child.name().startswith(
                "VLLM::EngineCor"
            ):
                found.append(child)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, servable_models: dict[int, Path], stack_factory: Any
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("lora")
    options = EngineOptions(kv_cache_bytes=32 * 1024**2, max_lora_rank=16)
    with stack_factory(root, {"tiny:1": servable_models[0]}, None, options) as stack:
        for name, seed in (("a", 1), ("b", 2)):
            adapter = build_adapter(servable_models[0], root / f"adapter-{name}", seed)
            stack.registry.add(
                f"ft:tiny:{name}:1", adapter, kind=ModelKind.LORA_ADAPTER, base="tiny:1"
            )
        yield stack


def reply(stack: Stack, model_id: str = "") -> str:
    async def collect() -> str:
        request = GenerateInput(HELLO, Sampling(temperature=0, max_tokens=12), model_id=model_id)
        chunks = [chunk async for chunk in stack.core.generate(request)]
        assert chunks[-1].completion_tokens == 12
        return "".join(chunk.text for chunk in chunks)

    text: str = stack.run(collect())
    return text


def deploy(stack: Stack, model_id: str, canary: int = 0) -> float:
    started = time.perf_counter()
    stack.run(stack.core.deploy(DeploySpec(model_id, canary_percent=canary)))
    stack.run(stack.core.wait_retired())
    return time.perf_counter() - started


def test_adapters_of_one_base_share_one_engine(stack: Stack) -> None:
    deploy(stack, "tiny:1")
    base_reply = reply(stack)
    plain_engine = stack.core.live_engine
    assert plain_engine is not None and not plain_engine.serves_adapters

    # The first adapter needs an engine that serves adapters: one is started.
    deploy(stack, "ft:tiny:a:1")
    engine = stack.core.live_engine
    assert engine is not None and engine is not plain_engine and engine.serves_adapters
    a_reply = reply(stack)
    assert a_reply != base_reply
    assert len(engine_cores()) == 1

    # The second adapter of the same base joins it as a canary: no engine starts.
    seconds = deploy(stack, "ft:tiny:b:1", canary=50)
    print(f"an adapter deployed beside another on its base's engine in {seconds:.1f} s")
    assert stack.core.canary_engine is engine and len(engine_cores()) == 1
    b_reply = reply(stack, "ft:tiny:b:1")
    assert b_reply not in (a_reply, base_reply)
    assert reply(stack, "ft:tiny:a:1") == a_reply  # each request gets its own adapter
    with pytest.raises(NotFoundError):
        reply(stack, "tiny:1")

    # Promotion and rollback move traffic between adapters on the same engine.
    deploy(stack, "ft:tiny:b:1")
    assert stack.core.live_engine is engine and stack.core.canary is None
    assert reply(stack) == b_reply
    back = stack.run(stack.core.rollback("carol"))
    stack.run(stack.core.wait_retired())
    assert back.model_id == "ft:tiny:a:1"
    assert stack.core.live_engine is engine and reply(stack) == a_reply
    assert len(engine_cores()) == 1

    # Back to the base alone: a plain engine again, the adapters' one stops.
    deploy(stack, "tiny:1")
    assert reply(stack) == base_reply

    async def wait_one() -> int:
        deadline = time.monotonic() + 15
        while len(engine_cores()) > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return len(engine_cores())

    assert stack.run(wait_one()) == 1
