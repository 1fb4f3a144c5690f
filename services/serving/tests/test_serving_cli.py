"""The CLI's serving commands against a real service on loopback (Transformers engines):
``ownchat deploy [--canary]``, ``deployments``, ``rollback`` and ``chat`` (interactive and once),
and deploy consulting the evaluator's promotion gate (a real evaluator on loopback).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from contextlib import contextmanager
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


def cli(
    stack: Stack,
    tmp_path: Path,
    *args: str,
    input: str | None = None,
    evaluator: str | None = None,
) -> Result:
    """Runs a command in a thread while the service answers on this one's event loop.

    ``evaluator`` is the evaluator's address; by default none listens there.
    """
    env = {
        "OWNCHAT_HOME": str(tmp_path / "home"),
        "OWNCHAT_TOKEN": "test-token",
        "OWNCHAT_SERVING_ADDRESS": stack.address,
        "OWNCHAT_EVALUATOR_ADDRESS": evaluator or f"127.0.0.1:{_closed_port()}",
        "COLUMNS": "200",
    }
    runner = CliRunner()
    result: Result = stack.run(
        asyncio.to_thread(runner.invoke, app, list(args), input=input, env=env)
    )
    return result


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_deploy_canary_deployments_rollback(stack: Stack, tmp_path: Path) -> None:
    first = cli(stack, tmp_path, "deploy", "tiny:1", "--engine", "transformers", "--skip-gate")
    assert first.exit_code == 0, first.output
    assert "deploying without the promotion gate" in first.output
    assert "tiny:1 LIVE, main, 100% of traffic" in first.output

    canary = cli(
        stack,
        tmp_path,
        "deploy",
        "tiny:2",
        "--engine",
        "transformers",
        "--canary",
        "25%",
        "--skip-gate",
    )
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

    refused = cli(stack, tmp_path, "deploy", "tiny:2", "--canary", "150%", "--skip-gate")
    assert refused.exit_code != 0 and "1% to 99%" in refused.output
    nothing = cli(stack, tmp_path, "rollback")
    assert nothing.exit_code == 1 and "FAILED_PRECONDITION" in nothing.output


def test_chat_keeps_the_conversation_and_streams(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed = cli(stack, tmp_path, "deploy", "tiny:1", "--engine", "transformers", "--skip-gate")
    assert deployed.exit_code == 0, deployed.output
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


# Deploy and the promotion gate.


@contextmanager
def evaluator_with_runs(
    root: Path, perplexities: dict[str, float], **thresholds: float
) -> Iterator[str]:
    """An evaluator on loopback whose store holds one finished perplexity run per model,
    with these gate thresholds; yields its address."""
    pytest.importorskip("ownchat_evaluator")
    import grpc

    from ownchat.errors import NotFoundError
    from ownchat.evaluator.v1 import evaluator_pb2_grpc
    from ownchat.interceptors import ServerInterceptor
    from ownchat_evaluator.core import EvaluatorCore
    from ownchat_evaluator.gate import GateThresholds
    from ownchat_evaluator.run_config import RunConfig
    from ownchat_evaluator.servicer import EvaluatorServicer
    from ownchat_evaluator.store import EvalRun, EvalStore, MetricResult, RunState

    store = EvalStore(root / "evaluator.db")
    for model_id, perplexity in perplexities.items():
        store.add(
            EvalRun(
                id=f"eval_{model_id.replace(':', '_')}",
                model_id=model_id,
                dataset_version_id="dsv_1",
                config=RunConfig(metrics=["perplexity"], context_length=64, stride=32),
                state=RunState.SUCCEEDED,
                completed=1,
                total=1,
                results=[MetricResult("perplexity", perplexity, "measured for the test")],
                create_time=time.time(),
            )
        )

    def nowhere(name: str) -> Path:
        raise NotFoundError("model", name)

    core = EvaluatorCore(store, nowhere, nowhere, gate=GateThresholds(**thresholds))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=[ServerInterceptor("test-token")]
    )
    evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server(
        EvaluatorServicer(core),  # type: ignore[abstract]
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()
        core.close()
        store.close()


def _live(stack: Stack, tmp_path: Path) -> list[str]:
    result = cli(stack, tmp_path, "deployments")
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if "LIVE" in line]


def test_deploy_consults_the_gate_against_the_live_version(stack: Stack, tmp_path: Path) -> None:
    perplexities = {"tiny:1": 10.0, "tiny:2": 30.0}
    with evaluator_with_runs(
        tmp_path, perplexities, max_perplexity=20.0, max_perplexity_regression=0.1
    ) as address:
        first = cli(
            stack, tmp_path, "deploy", "tiny:1", "--engine", "transformers", evaluator=address
        )
        assert first.exit_code == 0, first.output
        # Nothing is live yet: no baseline to regress from.
        assert "pass max_perplexity (perplexity <= 20)" in first.output
        assert "pass max_perplexity_regression" in first.output
        assert "no baseline version" in first.output
        assert "tiny:1 LIVE, main, 100% of traffic" in first.output

        refused = cli(
            stack, tmp_path, "deploy", "tiny:2", "--engine", "transformers", evaluator=address
        )
        assert refused.exit_code == 1, refused.output
        assert "live version: tiny:1" in refused.output
        assert "FAIL max_perplexity (perplexity <= 20): perplexity 30 is above" in refused.output
        # The regression is measured against the live version's run.
        assert "FAIL max_perplexity_regression" in refused.output
        assert "200% above the baseline's 10 (run eval_tiny_1)" in refused.output
        assert "not deployed" in refused.output
        assert "max_perplexity (perplexity <= 20); max_perplexity_regression" in refused.output
        live = _live(stack, tmp_path)
        assert len(live) == 1 and "tiny:1" in live[0]

        forced = cli(
            stack,
            tmp_path,
            "deploy",
            "tiny:2",
            "--engine",
            "transformers",
            "--skip-gate",
            evaluator=address,
        )
        assert forced.exit_code == 0, forced.output
        assert "deploying without the promotion gate" in forced.output
        assert "FAIL" not in forced.output
        assert "tiny:2 LIVE, main, 100% of traffic" in forced.output


def test_deploy_without_thresholds_passes_the_gate(stack: Stack, tmp_path: Path) -> None:
    with evaluator_with_runs(tmp_path, {}) as address:
        result = cli(
            stack, tmp_path, "deploy", "tiny:1", "--engine", "transformers", evaluator=address
        )
    assert result.exit_code == 0, result.output
    assert "promotion gate: passed: no promotion thresholds are configured" in result.output
    assert "tiny:1 LIVE" in result.output


def test_deploy_refuses_when_the_gate_cannot_be_consulted(stack: Stack, tmp_path: Path) -> None:
    refused = cli(stack, tmp_path, "deploy", "tiny:1", "--engine", "transformers")
    assert refused.exit_code == 1, refused.output
    assert "the promotion gate could not be consulted" in refused.output
    assert "unreachable (UNAVAILABLE)" in refused.output and "--skip-gate" in refused.output
    assert _live(stack, tmp_path) == []

    forced = cli(stack, tmp_path, "deploy", "tiny:1", "--engine", "transformers", "--skip-gate")
    assert forced.exit_code == 0, forced.output
    assert "tiny:1 LIVE, main, 100% of traffic" in forced.output
