"""Raw text prompts through Generate (text completions) on a real engine (Transformers,
the tiny model), over gRPC: tokenized as they are, the context check naming
``prompt`` with its ErrorInfo reason, and canary routing by the prompt.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ownchat.auth import AUTHORIZATION_KEY, bearer
from ownchat.common.v1 import common_pb2
from ownchat.errors import describe_rpc_error
from ownchat.serving.v1 import serving_pb2
from ownchat_serving.core import DeploySpec
from ownchat_serving.engine import EngineOptions, load_tokenizer
from ownchat_serving.generation import GenerateInput, ResolvedSampling, Sampling
from ownchat_serving.store import EngineKind

# The conftest's Stack: a core, its store and registry, a stub, one event loop.
Stack = Any
METADATA = ((AUTHORIZATION_KEY, bearer("test-token")),)
MAX_MODEL_LEN = 128
PROMPT = "Once upon a time, the router"


@pytest.fixture
def stack(tmp_path: Path, servable_models: dict[int, Path], stack_factory: Any) -> Iterator[Stack]:
    models = {"tiny:1": servable_models[0], "tiny:2": servable_models[1]}
    options = EngineOptions(max_model_len=MAX_MODEL_LEN)
    with stack_factory(tmp_path, models, options=options) as stack:
        stack.run(stack.core.deploy(DeploySpec("tiny:1", EngineKind.TRANSFORMERS)))
        yield stack


def generate(stack: Stack, request: serving_pb2.GenerateRequest) -> list[Any]:
    async def collect() -> list[Any]:
        return [r async for r in stack.stub.Generate(request, metadata=METADATA)]

    responses: list[Any] = stack.run(collect())
    return responses


def refusal(stack: Stack, request: serving_pb2.GenerateRequest) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        generate(stack, request)
    return describe_rpc_error(caught.value)


def test_a_prompt_is_continued_as_it_is(stack: Stack, servable_models: dict[int, Path]) -> None:
    request = serving_pb2.GenerateRequest(
        prompt=PROMPT, sampling=serving_pb2.SamplingParams(temperature=0, max_tokens=10)
    )
    responses = generate(stack, request)
    last = responses[-1]
    assert last.finish_reason == serving_pb2.FINISH_REASON_LENGTH
    assert (last.model_id, last.usage.completion_tokens) == ("tiny:1", 10)
    ids = load_tokenizer(servable_models[0])(PROMPT)["input_ids"]
    assert last.usage.prompt_tokens == len(ids)

    # The same reply as the engine's own for those ids; not the chat reply to the same text.
    engine = stack.core.live_engine
    greedy = ResolvedSampling(0.0, 1.0, 10, (), None)
    reference = stack.run(engine.complete(ids, greedy, f"ref-{time.time()}"))
    assert "".join(r.text for r in responses) == reference.text
    chat = serving_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)],
        sampling=request.sampling,
    )
    assert generate(stack, chat)[-1].usage.prompt_tokens > len(ids)


def test_a_prompt_over_the_context_is_refused_with_its_reason(stack: Stack) -> None:
    long = " ".join(["refund window router firmware"] * 80)  # about 320 tokens
    request = serving_pb2.GenerateRequest(prompt=long)
    description = refusal(stack, request)
    assert description.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in description.violations] == ["prompt"]
    assert f"context is {MAX_MODEL_LEN} tokens" in description.message
    info = description.error_info
    assert info is not None
    assert (info.reason, info.domain) == ("CONTEXT_LENGTH_EXCEEDED", "ownchat.serving.v1")
    assert int(info.metadata["prompt_tokens"]) >= MAX_MODEL_LEN
    assert info.metadata["max_model_len"] == str(MAX_MODEL_LEN)
    # A conversation over the context carries the same reason, on its own field.
    chat = serving_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=long)]
    )
    description = refusal(stack, chat)
    assert [v.field for v in description.violations] == ["messages"]
    assert description.error_info is not None
    assert description.error_info.reason == "CONTEXT_LENGTH_EXCEEDED"


def test_messages_and_a_prompt_together_are_refused(stack: Stack) -> None:
    both = serving_pb2.GenerateRequest(
        prompt=PROMPT,
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="Hi")],
    )
    description = refusal(stack, both)
    assert description.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in description.violations] == ["prompt"]
    assert description.error_info is None
    neither = refusal(stack, serving_pb2.GenerateRequest())
    assert [v.field for v in neither.violations] == ["messages"]


def test_a_canary_splits_prompts_by_their_text_or_their_conversation_id(stack: Stack) -> None:
    stack.run(stack.core.deploy(DeploySpec("tiny:2", EngineKind.TRANSFORMERS, 50)))

    def ask(prompt: str, conversation_id: str = "") -> str:
        async def model() -> str:
            request = GenerateInput(
                prompt=prompt,
                sampling=Sampling(temperature=0, max_tokens=1),
                conversation_id=conversation_id,
            )
            chunks = [chunk async for chunk in stack.core.generate(request)]
            answered: str = chunks[-1].model_id
            return answered

        result: str = stack.run(model())
        return result

    prompts = [f"Order {i} shipped on" for i in range(40)]
    first = {prompt: ask(prompt) for prompt in prompts}
    assert set(first.values()) == {"tiny:1", "tiny:2"}
    assert 8 <= Counter(first.values())["tiny:2"] <= 32
    # Sticky: each prompt is answered by the same version again.
    assert {prompt: ask(prompt) for prompt in prompts} == first
    # A conversation id decides instead of the text: every prompt of one id on one side.
    for conversation in ("c-1", "c-2", "c-3"):
        assert len({ask(prompt, conversation) for prompt in prompts[:8]}) == 1
