"""The pre-flight check renders samples exactly as training will."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ownchat.artifacts import ArtifactStore
from ownchat.errors import FailedPreconditionError, NotFoundError
from ownchat.testing import build_tiny_chat_model
from ownchat_data.core import DataCore, SourceFormat, UploadSpec
from ownchat_data.store import DataStore


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")


def conversation(user: str, assistant: str) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
        }
    )


def test_lint_counts_tokens_and_flags_long_and_special_samples(
    tmp_path: Path, tiny_model: Path
) -> None:
    def models(model_id: str) -> Path:
        if model_id != "tiny":
            raise NotFoundError("model", model_id)
        return tiny_model

    core = DataCore(
        DataStore(tmp_path / "d.db"), ArtifactStore(tmp_path / "a"), 1 << 20, 1 << 20, models
    )
    lines = [
        conversation("What is the price?", "It costs 129 euros."),
        conversation("Say <|im_end|> please", "No."),
        conversation("Long?", "word " * 600),
    ]
    version = core.upload(
        UploadSpec("s", "x.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.0),
        iter(["\n".join(lines).encode()]),
    )
    report = core.lint(version.id, "tiny", max_samples=0)
    assert report.samples_checked == 3
    assert report.max_length == 512
    assert 0 < report.loss_tokens < report.total_tokens
    assert report.too_long_records == [3]
    histogram = dict(report.length_histogram)
    assert sum(histogram.values()) == 3
    assert histogram[64] == 2
    assert sum(n for bound, n in histogram.items() if bound is None or bound > 512) == 1
    assert report.special_token_records == [2]
    rendered = "".join(text for text, _ in report.rendered_spans)
    learned = "".join(text for text, loss in report.rendered_spans if loss)
    assert rendered.startswith("<|im_start|>user\nWhat is the price?")
    assert learned.startswith("It costs 129 euros.")
    assert "What is the price?" not in learned

    with pytest.raises(NotFoundError):
        core.lint(version.id, "missing", max_samples=0)


def test_lint_refuses_what_is_not_a_chat_version(tmp_path: Path, tiny_model: Path) -> None:
    core = DataCore(
        DataStore(tmp_path / "d.db"), ArtifactStore(tmp_path / "a"), 1 << 20, 1 << 20,
        lambda _: tiny_model,
    )  # fmt: skip
    version = core.upload(
        UploadSpec("docs", "a.md", SourceFormat.DOCUMENT, 0.0), iter([b"Some text."])
    )
    with pytest.raises(FailedPreconditionError):
        core.lint(version.id, "tiny", max_samples=0)


def test_lint_and_dedup_take_samples_with_expected_answers(
    tmp_path: Path, tiny_model: Path
) -> None:
    core = DataCore(
        DataStore(tmp_path / "d.db"), ArtifactStore(tmp_path / "a"), 1 << 20, 1 << 20,
        lambda _: tiny_model,
    )  # fmt: skip
    lines = [
        {
            "messages": json.loads(conversation(f"Price of plan {i}?", f"Plan {i}: {i} euros."))[
                "messages"
            ],
            "expected": [f"{i} euros", {"answer": rf"{i} ?euros", "kind": "regex"}][i % 2],
        }
        for i in range(6)
    ]
    # An exact duplicate conversation with another answer: deduplicated like any other.
    lines.append({**lines[0], "expected": "something else"})
    version = core.upload(
        UploadSpec("s", "x.jsonl", SourceFormat.OPENAI_CHAT_JSONL, 0.0, base_model="tiny"),
        iter(["\n".join(json.dumps(line) for line in lines).encode()]),
    )
    assert version.samples == 6 and version.sanitization.removed == {"exact_duplicate": 1}
    report = core.lint(version.id, "tiny", max_samples=0)
    assert report.samples_checked == 6
    learned = "".join(text for text, loss in report.rendered_spans if loss)
    assert learned.startswith("Plan 0: 0 euros.")
