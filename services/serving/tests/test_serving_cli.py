"""The CLI's serving commands against a real service on loopback (Transformers engines):
``ownchat deploy [--canary]``, ``deployments``, ``rollback`` and ``chat`` (interactive and once).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from ownchat.cli.main import app
from ownchat_serving.generation import GenerateChunk, GenerateInput

# The conftest's Stack: a core, its store and registry, a stub, one event loop.
Stack = Any


@pytest.fixture
def stack(tmp_path: Path, servable_models: dict[int, Path], stack_factory: Any) -> Iterator[Stack]:
    models = {"tiny:1": servable_models[0], "tiny:2": servable_models[1]}
    with stack_factory(tmp_path, models) as stack:
        yield stack


def cli(stack: Stack, tmp_path: Path, *args: str, input: str | None = None) -> Result:
    """Runs a command in a thread while the service answers on this one's event loop."""
    env = {
        "OWNCHAT_HOME": str(tmp_path / "home"),
        "OWNCHAT_TOKEN": "test-token",
        "OWNCHAT_SERVING_ADDRESS": stack.address,
        "COLUMNS": "200",
    }
    runner = CliRunner()
    result: Result = stack.run(
        asyncio.to_thread(runner.invoke, app, list(args), input=input, env=env)
    )
    return result


def test_deploy_canary_deployments_rollback(stack: Stack, tmp_path: Path) -> None:
    first = cli(stack, tmp_path, "deploy", "tiny:1", "--engine", "transformers")
    assert first.exit_code == 0, first.output
    assert "tiny:1 LIVE, main, 100% of traffic" in first.output

    canary = cli(stack, tmp_path, "deploy", "tiny:2", "--engine", "transformers", "--canary", "25%")
    assert canary.exit_code == 0, canary.output
    assert "tiny:2 LIVE, canary (25%), 25% of traffic" in canary.output

    listing = cli(stack, tmp_path, "deployments")
    assert listing.exit_code == 0, listing.output
    rows = [line for line in listing.output.splitlines() if "tiny:" in line]
    assert "tiny:2" in rows[0] and "25%" in rows[0] and "canary 25%" in rows[0]
    assert "tiny:1" in rows[1] and "75%" in rows[1]

    back = cli(stack, tmp_path, "rollback")
    assert back.exit_code == 0, back.output
    assert "live: tiny:1, 100% of traffic" in back.output

    refused = cli(stack, tmp_path, "deploy", "tiny:2", "--canary", "150%")
    assert refused.exit_code != 0 and "1% to 99%" in refused.output
    nothing = cli(stack, tmp_path, "rollback")
    assert nothing.exit_code == 1 and "FAILED_PRECONDITION" in nothing.output


def test_chat_keeps_the_conversation_and_streams(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli(stack, tmp_path, "deploy", "tiny:1", "--engine", "transformers").exit_code == 0
    seen: list[GenerateInput] = []
    generate = stack.core.generate

    def recording(request: GenerateInput) -> AsyncIterator[GenerateChunk]:
        seen.append(request)
        return generate(request)  # type: ignore[no-any-return]

    monkeypatch.setattr(stack.core, "generate", recording)

    session = cli(
        stack,
        tmp_path,
        "chat",
        "--max-tokens",
        "6",
        "--system",
        "Be brief.",
        input="Hello\nAnd then?\n/reset\nHi again\n/exit\n",
    )
    assert session.exit_code == 0, session.output
    assert session.output.count("bot>") == 3
    # The reply so far goes back with the next question.
    assert [[t.role for t in r.messages] for r in seen] == [
        ["system", "user"],
        ["system", "user", "assistant", "user"],
        ["system", "user"],
    ]
    assert [r.messages[-1].content for r in seen] == ["Hello", "And then?", "Hi again"]
    # The first two turns are one conversation; /reset starts another.
    ids = [r.conversation_id for r in seen]
    assert ids[0] == ids[1] != ids[2] and all(ids)

    once = cli(stack, tmp_path, "chat", "Hello", "--max-tokens", "4")
    assert once.exit_code == 0 and once.output.strip()
    assert len(seen) == 4 and [t.content for t in seen[-1].messages] == ["Hello"]
