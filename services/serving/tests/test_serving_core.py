"""The core's refusals that need no engine: requests, registry answers, files."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ownchat.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from ownchat_serving.core import DeploySpec, ServingCore
from ownchat_serving.engine import EngineOptions
from ownchat_serving.generation import ChatTurn, GenerateInput, Sampling
from ownchat_serving.resolver import ModelKind
from ownchat_serving.store import DeploymentState, DeploymentStore, EngineKind


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture
def store(store_location: Path | str) -> DeploymentStore:
    return DeploymentStore(store_location)


@pytest.fixture
def export_root(tmp_path: Path) -> Path:
    return tmp_path / "onnx"


@pytest.fixture
def core(store: DeploymentStore, registry: Any, export_root: Path) -> ServingCore:
    return ServingCore(
        store, registry.artifacts, registry, EngineOptions(), export_root=export_root
    )


def violations(error: pytest.ExceptionInfo[Any]) -> set[str]:
    return {v.field for v in error.value.violations}


def test_deploy_requests_are_checked_with_every_problem_at_once(
    runner: asyncio.Runner, core: ServingCore
) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        runner.run(core.deploy(DeploySpec("", canary_percent=-1, deployed_by="x" * 300)))
    assert violations(error) == {"model_id", "canary_percent", "deployed_by"}
    with pytest.raises(InvalidArgumentError) as error:
        runner.run(core.deploy(DeploySpec("m", canary_percent=101)))
    assert "1..99" in error.value.violations[0].description
    # Refused requests leave no history.
    assert core.list_deployments(50, 0) == []


def test_a_canary_needs_a_live_deployment(runner: asyncio.Runner, core: ServingCore) -> None:
    with pytest.raises(FailedPreconditionError) as error:
        runner.run(core.deploy(DeploySpec("m", canary_percent=10)))
    assert "canary needs a live deployment" in error.value.message
    assert core.list_deployments(50, 0) == []


@pytest.mark.slow
def test_the_engine_is_chosen_per_deployment(
    runner: asyncio.Runner,
    core: ServingCore,
    store: DeploymentStore,
    registry: Any,
    servable_models: dict[int, Path],
    export_root: Path,
) -> None:
    """Transformers and ONNX Runtime deployments give the same greedy reply, and
    a restart reloads the live deployment with its own engine."""
    registry.add("m", servable_models[0])
    question = GenerateInput(
        (ChatTurn("user", "Hello there"),), Sampling(temperature=0.0, max_tokens=12)
    )

    async def reply() -> str:
        return "".join([chunk.text async for chunk in core.generate(question)])

    async def scenario() -> tuple[str, str, str]:
        try:
            await core.deploy(DeploySpec("m", engine=EngineKind.TRANSFORMERS))
            reference = await reply()
            await core.deploy(DeploySpec("m", engine=EngineKind.ONNXRUNTIME))
            exported = await reply()
            assert store.live() is not None and store.live().engine is EngineKind.ONNXRUNTIME
            restarted = ServingCore(
                store, registry.artifacts, registry, EngineOptions(), export_root=export_root
            )
            try:
                await restarted.restore()
                assert restarted.live is not None
                reloaded = "".join([c.text async for c in restarted.generate(question)])
            finally:
                await restarted.close()
            return reference, exported, reloaded
        finally:
            await core.close()

    reference, exported, reloaded = runner.run(scenario())
    assert reference and exported == reference == reloaded
    assert [d.engine for d in core.list_deployments(10, 0)] == [
        EngineKind.ONNXRUNTIME,
        EngineKind.TRANSFORMERS,
    ]


def test_an_unknown_model_fails_the_deployment(
    runner: asyncio.Runner, core: ServingCore, store: DeploymentStore
) -> None:
    with pytest.raises(NotFoundError):
        runner.run(core.deploy(DeploySpec("nope", deployed_by="alice")))
    (deployment,) = store.list(50, 0)
    assert deployment.state is DeploymentState.FAILED
    assert "nope" in deployment.error
    assert deployment.deployed_by == "alice"


def test_a_blocked_model_is_refused(
    runner: asyncio.Runner,
    core: ServingCore,
    registry: Any,
    store: DeploymentStore,
    servable_models: dict[int, Path],
) -> None:
    registry.add("m", servable_models[0], blocked_reason="training data erased")
    with pytest.raises(FailedPreconditionError) as error:
        runner.run(core.deploy(DeploySpec("m")))
    assert "training data erased" in error.value.message
    assert store.list(1, 0)[0].state is DeploymentState.FAILED
    assert core.live is None


def test_an_adapter_needs_vllm_and_its_base(
    runner: asyncio.Runner, core: ServingCore, registry: Any, servable_models: dict[int, Path]
) -> None:
    registry.add("ft:m:a:1", servable_models[0], kind=ModelKind.LORA_ADAPTER)
    # Only vLLM serves adapters; the others need the merged version.
    with pytest.raises(FailedPreconditionError) as error:
        runner.run(core.deploy(DeploySpec("ft:m:a:1", EngineKind.ONNXRUNTIME)))
    assert "MergeAdapter" in error.value.message
    # An adapter needs its base's files.
    with pytest.raises(FailedPreconditionError) as error:
        runner.run(core.deploy(DeploySpec("ft:m:a:1")))
    assert "base model has no files" in error.value.message


def test_tampered_files_are_refused(
    runner: asyncio.Runner,
    core: ServingCore,
    registry: Any,
    store: DeploymentStore,
    servable_models: dict[int, Path],
) -> None:
    resolved = registry.add("m", servable_models[0])
    stored = registry.artifacts.path(resolved.artifact_digest)
    config = stored / "config.json"
    config.write_text(config.read_text().replace("llama", "llama "))
    with pytest.raises(FailedPreconditionError) as error:
        runner.run(core.deploy(DeploySpec("m")))
    assert "config.json" in error.value.message
    assert [v.subject for v in error.value.violations] == ["config.json"]
    failed = store.list(1, 0)[0]
    assert failed.state is DeploymentState.FAILED and "manifest" in failed.error
    assert failed.artifact_digest == resolved.artifact_digest


def test_weights_other_than_safetensors_are_refused(
    runner: asyncio.Runner,
    core: ServingCore,
    registry: Any,
    tmp_path: Path,
    servable_models: dict[int, Path],
) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for path in servable_models[0].iterdir():
        if path.suffix != ".safetensors":
            (pickled / path.name).write_bytes(path.read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    registry.add("m", pickled)
    with pytest.raises(FailedPreconditionError) as error:
        runner.run(core.deploy(DeploySpec("m")))
    assert "safetensors" in error.value.message


def test_missing_files_are_refused(
    runner: asyncio.Runner, core: ServingCore, registry: Any, servable_models: dict[int, Path]
) -> None:
    import shutil

    resolved = registry.add("m", servable_models[0])
    shutil.rmtree(registry.artifacts.path(resolved.artifact_digest))
    with pytest.raises(FailedPreconditionError) as error:
        runner.run(core.deploy(DeploySpec("m")))
    assert "missing" in error.value.message


def test_generate_with_nothing_deployed(runner: asyncio.Runner, core: ServingCore) -> None:
    async def first() -> object:
        return await anext(core.generate(GenerateInput([ChatTurn("user", "hi")])))

    with pytest.raises(FailedPreconditionError) as error:
        runner.run(first())
    assert "nothing is deployed" in error.value.message


def test_generate_validates_before_anything_else(runner: asyncio.Runner, core: ServingCore) -> None:
    async def first() -> object:
        return await anext(core.generate(GenerateInput([])))

    with pytest.raises(InvalidArgumentError):
        runner.run(first())


def test_rollback_with_no_history(runner: asyncio.Runner, core: ServingCore) -> None:
    with pytest.raises(FailedPreconditionError) as error:
        runner.run(core.rollback("alice"))
    assert "roll back" in error.value.message


def test_restore_with_nothing_live_is_a_no_op(runner: asyncio.Runner, core: ServingCore) -> None:
    assert runner.run(core.restore()) is None
    assert core.live is None


def test_restore_does_not_reload_a_model_blocked_since(
    runner: asyncio.Runner,
    core: ServingCore,
    store: DeploymentStore,
    registry: Any,
    servable_models: list[Path],
) -> None:
    registry.add("m", servable_models[0], blocked_reason="trained on data erased by erasure_1")
    deployment = store.create("m", EngineKind.VLLM, "alice")
    store.set_artifact(deployment.id, registry.models["m"].artifact_digest)
    store.mark_live(deployment.id)
    assert runner.run(core.restore()) is None
    failed = store.get(deployment.id)
    assert failed.state is DeploymentState.FAILED
    assert "erasure_1" in failed.error
    assert core.live is None


def test_restore_fails_a_live_deployment_whose_files_are_gone(
    runner: asyncio.Runner, core: ServingCore, store: DeploymentStore
) -> None:
    deployment = store.create("m", EngineKind.VLLM, "alice")
    store.set_artifact(deployment.id, "sha256:" + "1" * 64)
    store.mark_live(deployment.id)
    assert runner.run(core.restore()) is None
    failed = store.get(deployment.id)
    assert failed.state is DeploymentState.FAILED
    assert "reloaded" in failed.error
