"""Validation of Generate requests, before anything reaches the engine."""

from __future__ import annotations

import math

import pytest

from ownchat.errors import InvalidArgumentError
from ownchat_serving.generation import (
    CONTEXT_LENGTH_EXCEEDED,
    ERROR_DOMAIN,
    ChatTurn,
    GenerateInput,
    Sampling,
    check_prompt_fits,
    validate_generate,
)

HELLO = [ChatTurn("user", "Hello")]


def fields(error: pytest.ExceptionInfo[InvalidArgumentError]) -> set[str]:
    return {v.field for v in error.value.violations}


def test_defaults_are_temperature_1_top_p_1_and_256_tokens() -> None:
    sampling = validate_generate(GenerateInput(messages=HELLO))
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens) == (1.0, 1.0, 256)
    assert sampling.stop == () and sampling.seed is None


def test_given_values_are_kept() -> None:
    sampling = validate_generate(
        GenerateInput(
            messages=HELLO,
            sampling=Sampling(temperature=0, top_p=0.5, max_tokens=3, stop=("\n",), seed=7),
        )
    )
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens) == (0, 0.5, 3)
    assert sampling.stop == ("\n",) and sampling.seed == 7


def test_every_bad_field_is_reported_at_once() -> None:
    request = GenerateInput(
        messages=[ChatTurn("user", "hi"), ChatTurn("unspecified", "x")],
        sampling=Sampling(temperature=-0.1, top_p=0, max_tokens=0, stop=("", "ok"), seed=-1),
        model_id="m" * 300,
    )
    with pytest.raises(InvalidArgumentError) as error:
        validate_generate(request)
    assert fields(error) == {
        "messages[1].role",
        "sampling.temperature",
        "sampling.top_p",
        "sampling.max_tokens",
        "sampling.stop[0]",
        "sampling.seed",
        "model_id",
    }


@pytest.mark.parametrize("temperature", [2.5, math.nan, math.inf])
def test_temperature_out_of_range(temperature: float) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        validate_generate(GenerateInput(HELLO, Sampling(temperature=temperature)))
    assert fields(error) == {"sampling.temperature"}


@pytest.mark.parametrize("top_p", [1.01, -1.0, math.nan])
def test_top_p_out_of_range(top_p: float) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        validate_generate(GenerateInput(HELLO, Sampling(top_p=top_p)))
    assert fields(error) == {"sampling.top_p"}


def test_edges_are_accepted() -> None:
    validate_generate(GenerateInput(HELLO, Sampling(temperature=2.0, top_p=1.0, max_tokens=1)))
    validate_generate(GenerateInput(HELLO, Sampling(temperature=0.0, seed=0)))


def test_no_messages_is_refused() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        validate_generate(GenerateInput(messages=[]))
    assert fields(error) == {"messages"}


def test_a_prompt_takes_the_place_of_messages_but_not_both() -> None:
    alone = GenerateInput(prompt="Once upon a time", sampling=Sampling(max_tokens=3))
    assert validate_generate(alone).max_tokens == 3
    assert alone.prompt_field == "prompt" and GenerateInput(HELLO).prompt_field == "messages"
    with pytest.raises(InvalidArgumentError) as error:
        validate_generate(GenerateInput(HELLO, prompt="Once upon a time"))
    assert fields(error) == {"prompt"}
    assert "not both" in error.value.violations[0].description
    # An empty prompt is no prompt.
    with pytest.raises(InvalidArgumentError) as error:
        validate_generate(GenerateInput(prompt=""))
    assert fields(error) == {"messages"}


def test_too_many_stop_strings() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        validate_generate(GenerateInput(HELLO, Sampling(stop=tuple("abcdefghijklmnopq"))))
    assert fields(error) == {"sampling.stop"}


def test_a_prompt_that_fills_the_context_names_the_limit() -> None:
    check_prompt_fits(511, 512)
    with pytest.raises(InvalidArgumentError) as error:
        check_prompt_fits(512, 512)
    assert "512 tokens" in error.value.message
    assert fields(error) == {"messages"}
    info = error.value.error_info
    assert info is not None
    assert (info.reason, info.domain) == (CONTEXT_LENGTH_EXCEEDED, ERROR_DOMAIN)
    assert info.metadata == {"prompt_tokens": "512", "max_model_len": "512"}


def test_a_raw_prompt_over_the_context_names_the_prompt_field() -> None:
    with pytest.raises(InvalidArgumentError) as error:
        check_prompt_fits(600, 512, "prompt")
    assert fields(error) == {"prompt"}
    assert error.value.message.startswith("the prompt is 600 tokens once tokenized")
    assert error.value.error_info is not None
    assert error.value.error_info.reason == "CONTEXT_LENGTH_EXCEEDED"
