"""Uploads for a base model: tokens counted with its template, too long samples removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ownchat.artifacts import ArtifactStore
from ownchat.errors import InvalidArgumentError, NotFoundError, UnavailableError
from ownchat.testing import build_tiny_chat_model
from ownchat_data.core import DataCore, SourceFormat, UploadSpec
from ownchat_data.erasure import ErasureRequest
from ownchat_data.sanitize import SanitizeOptions
from ownchat_data.store import DataStore
from ownchat_data.tokens import ModelTokenizer


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def core(tmp_path: Path, tiny_model: Path) -> DataCore:
    def models(model_id: str) -> Path:
        if model_id != "tiny":
            raise NotFoundError("model", model_id)
        return tiny_model

    return DataCore(
        DataStore(tmp_path / "d.db"), ArtifactStore(tmp_path / "a"), 1 << 22, 1 << 20, models
    )


def conversation(user: str, assistant: str) -> str:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return json.dumps({"messages": messages})


LINES = [
    conversation("What does the Zephyr X2 cost?", "The Zephyr X2 costs 129 euros."),
    conversation("How do I reset my password?", "Open Settings, then Account, then Reset."),
    conversation("Tell me everything about warranties.", "Warranty terms apply. " * 300),
]


def upload(core: DataCore, base_model: str = "tiny", max_tokens: int = 0) -> object:
    spec = UploadSpec(
        "support",
        "chats.jsonl",
        SourceFormat.OPENAI_CHAT_JSONL,
        0.0,
        sanitize=SanitizeOptions(max_tokens=max_tokens),
        base_model=base_model,
    )
    return core.upload(spec, iter(["\n".join(LINES).encode()]))


def test_tokens_are_counted_with_the_models_template_and_too_long_samples_removed(
    core: DataCore, tiny_model: Path
) -> None:
    version = upload(core)
    assert version.samples == 2  # the warranty essay exceeds the tiny model's 512 tokens
    assert version.sanitization.removed["too_long"] == 1
    assert version.tokenizer == "tiny"
    counter = ModelTokenizer.load("tiny", tiny_model)
    assert counter.context_length == 512
    expected = [counter.count(s) for s in core.preview(version.id, False, 10)]
    assert version.tokens == sum(expected) > 0
    histogram = dict(version.length_histogram)
    assert sum(histogram.values()) == 2
    # The count is the rendered template's, not the bare text's.
    bare = len(counter.tokenizer("The Zephyr X2 costs 129 euros.")["input_ids"])
    assert min(expected) > bare
    assert core.get_version(version.id).length_histogram == version.length_histogram


def test_max_tokens_is_the_limit_when_given(core: DataCore, tiny_model: Path) -> None:
    counter = ModelTokenizer.load("tiny", tiny_model)
    short, longer = sorted(counter.count(s) for s in core.preview(upload(core).id, False, 10))
    assert short < longer
    at_the_limit = upload(core, max_tokens=longer)
    assert at_the_limit.samples == 2
    below = upload(core, max_tokens=longer - 1)
    assert below.samples == 1
    assert below.sanitization.removed["too_long"] == 2
    assert below.tokens == short


def test_every_sample_too_long_is_a_clear_error(core: DataCore) -> None:
    with pytest.raises(InvalidArgumentError, match="too_long: 3"):
        upload(core, max_tokens=3)


def test_without_a_base_model_nothing_is_counted(core: DataCore) -> None:
    version = core.upload(
        UploadSpec("support", "chats.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.0),
        iter(["\n".join(LINES).encode()]),
    )
    assert version.samples == 3
    assert (version.tokens, version.tokenizer, version.length_histogram) == (0, "", ())


def test_bad_token_settings_are_refused_before_reading(core: DataCore) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        upload(core, base_model="", max_tokens=100)
    assert refused.value.violations[0].field == "header.sanitize.max_tokens"
    with pytest.raises(InvalidArgumentError):
        upload(core, max_tokens=-1)
    with pytest.raises(NotFoundError):
        upload(core, base_model="no-such-model")
    assert core.list_datasets(10, 0) == []


def test_without_a_registry_counting_is_unavailable(tmp_path: Path) -> None:
    core = DataCore(DataStore(tmp_path / "d.db"), ArtifactStore(tmp_path / "a"), 1 << 22, 1 << 20)
    with pytest.raises(UnavailableError):
        upload(core)


def test_erasure_counts_the_erased_samples_out(core: DataCore) -> None:
    version = upload(core)
    kept = core.preview(version.id, False, 10)
    erased = next(s for s in kept if "password" in s.messages[0].content)
    result = core.erase(
        "support",
        ErasureRequest(
            source_records=frozenset({(version.source.digest, erased.record)}), values=()
        ),
    )
    after = result.version
    assert after.samples == 1
    assert after.messages == version.messages - 2
    assert after.tokenizer == "tiny"
    counter_total = version.tokens - after.tokens
    assert counter_total > 0
    assert sum(n for _, n in after.length_histogram) == 1
