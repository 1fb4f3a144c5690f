"""The serving service's core: deployments and generation, with no gRPC.

Deploy resolves a model id to its files, checks them against their manifest,
loads and warms a new engine beside the live one, and only then moves traffic
to it; the old engine finishes its replies in flight (up to ``drain_seconds``)
and is shut down. A failed load leaves the previous deployment serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

from ownchat.artifacts import ArtifactStore
from ownchat.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    OwnchatError,
    PreconditionViolation,
    UnavailableError,
)
from ownchat_serving.engine import (
    EngineLoadError,
    EngineOptions,
    EngineRequestError,
    EngineUnavailableError,
)
from ownchat_serving.engines import Engine, load_engine
from ownchat_serving.generation import (
    ChatTurn,
    FinishReason,
    GenerateChunk,
    GenerateInput,
    ResolvedSampling,
    check_prompt_fits,
    validate_generate,
)
from ownchat_serving.metrics import (
    COMPLETION_TOKENS,
    DEPLOY_SECONDS,
    PROMPT_TOKENS,
    REPLIES_IN_FLIGHT,
    TIME_TO_FIRST_TEXT,
)
from ownchat_serving.resolver import ModelKind, ModelResolver, ResolvedModel
from ownchat_serving.store import Deployment, DeploymentStore, EngineKind

logger = logging.getLogger("ownchat.serving")

MAX_MODEL_ID_CHARS = 256
MAX_DEPLOYED_BY_CHARS = 256
WARMUP = (ChatTurn("user", "Hello"),)
_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


@dataclass(frozen=True)
class DeploySpec:
    """A Deploy request; ``engine`` None means vLLM."""

    model_id: str
    engine: EngineKind | None = None
    canary_percent: int = 0
    deployed_by: str = ""


class ModelNotDeployedError(NotFoundError):
    """A Generate request named a model other than the live one."""

    def __init__(self, model_id: str, live_model_id: str) -> None:
        super().__init__("deployed model", model_id)
        self.message = (
            f"model {model_id!r} is not deployed; the live deployment serves {live_model_id!r}"
        )
        self.args = (self.message,)


def validate_deploy(spec: DeploySpec) -> EngineKind:
    """Checks a Deploy request with every problem at once; returns its engine."""
    violations = []
    if not spec.model_id:
        violations.append(FieldViolation("model_id", "required"))
    elif len(spec.model_id) > MAX_MODEL_ID_CHARS:
        violations.append(
            FieldViolation("model_id", f"must be at most {MAX_MODEL_ID_CHARS} characters")
        )
    engine = spec.engine or EngineKind.VLLM
    if spec.canary_percent != 0:
        description = (
            "canary deployments come later; use 0 to move all traffic"
            if 0 < spec.canary_percent < 100
            else "must be 0 (all traffic) or, later, a canary share within 1..99"
        )
        violations.append(FieldViolation("canary_percent", description))
    if len(spec.deployed_by) > MAX_DEPLOYED_BY_CHARS:
        violations.append(
            FieldViolation("deployed_by", f"must be at most {MAX_DEPLOYED_BY_CHARS} characters")
        )
    if violations:
        raise InvalidArgumentError("invalid deploy request", violations)
    return engine


class _Live:
    """The engine behind a live deployment and the replies it is producing."""

    def __init__(self, deployment: Deployment, engine: Engine) -> None:
        self.deployment = deployment
        self.engine = engine
        self.active = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.active += 1
        self.idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.idle.set()


@dataclass
class _Loading:
    """The deployment being brought up, at most one at a time."""

    id: str
    task: asyncio.Task[Deployment]


class ServingCore:
    """Deployments by version and generation on the live one."""

    def __init__(
        self,
        store: DeploymentStore,
        artifacts: ArtifactStore,
        resolver: ModelResolver,
        options: EngineOptions,
        drain_seconds: float = 30.0,
        export_root: Path | None = None,
    ) -> None:
        """``export_root``: where ONNX exports of model versions are kept (the
        service's own folder; beside the database when not given)."""
        self._store = store
        self._export_root = export_root or store.path.parent / "onnx"
        self._artifacts = artifacts
        self._resolver = resolver
        self._options = options
        self._drain_seconds = drain_seconds
        self._live: _Live | None = None
        self._loading: _Loading | None = None
        self._restoring = False
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def live(self) -> Deployment | None:
        """The deployment taking traffic, if any."""
        return self._live.deployment if self._live else None

    @property
    def live_engine(self) -> Engine | None:
        """The live deployment's engine (for checks and reference runs)."""
        return self._live.engine if self._live else None

    # -- deployments -------------------------------------------------------

    async def deploy(self, spec: DeploySpec) -> Deployment:
        """Loads, warms and moves all traffic to a model version."""
        engine = validate_deploy(spec)
        return await self._deploy(spec.model_id, engine, spec.deployed_by)

    async def rollback(self, deployed_by: str = "") -> Deployment:
        """Moves traffic back to the version live before the current one, reloading it."""
        if len(deployed_by) > MAX_DEPLOYED_BY_CHARS:
            raise InvalidArgumentError(
                "invalid rollback request",
                [FieldViolation("deployed_by", f"at most {MAX_DEPLOYED_BY_CHARS} characters")],
            )
        target = self._store.rollback_target()
        if target is None:
            raise FailedPreconditionError(
                "there is no earlier deployment to roll back to",
                [
                    PreconditionViolation(
                        "DEPLOYMENT_HISTORY",
                        "deployments",
                        "no earlier deployment of another model version was ever live",
                    )
                ],
            )
        return await self._deploy(target.model_id, target.engine, deployed_by)

    def list_deployments(self, limit: int, offset: int) -> list[Deployment]:
        """The history, newest first."""
        return self._store.list(limit, offset)

    async def restore(self) -> Deployment | None:
        """Reloads the deployment that was live when the service last stopped.

        Uses the files recorded at deploy time, so it needs no model registry;
        but when the registry answers that the model has since been blocked
        (its training data was erased), it is not reloaded. A deployment that
        is blocked or no longer loads is marked FAILED; the service then starts
        with nothing deployed.
        """
        for stale in self._store.fail_interrupted():
            logger.warning("interrupted deployment failed", extra={"deployment_id": stale.id})
        deployment = self._store.live()
        if deployment is None:
            return None
        blocked = await self._blocked_reason(deployment.model_id)
        if blocked:
            self._store.mark_failed(deployment.id, f"not reloaded at start: {blocked}")
            logger.error(
                "live deployment not reloaded: model blocked",
                extra={"deployment_id": deployment.id, "model_id": deployment.model_id},
            )
            return None
        self._restoring = True
        try:
            engine = await self._load_checked(
                deployment.model_id, deployment.artifact_digest, deployment.engine
            )
        except (OwnchatError, asyncio.CancelledError) as error:
            reason = getattr(error, "message", "the service stopped while reloading")
            self._store.mark_failed(deployment.id, f"could not be reloaded at start: {reason}")
            logger.error(
                "live deployment not reloaded",
                extra={"deployment_id": deployment.id, "reason": reason},
            )
            if isinstance(error, asyncio.CancelledError):
                raise
            return None
        finally:
            self._restoring = False
        self._live = _Live(deployment, engine)
        logger.info(
            "deployment reloaded",
            extra={"deployment_id": deployment.id, "model_id": deployment.model_id},
        )
        return deployment

    async def _deploy(self, model_id: str, engine_kind: EngineKind, deployed_by: str) -> Deployment:
        if self._loading is not None:
            raise FailedPreconditionError(
                f"deployment {self._loading.id} is still loading; try again when it is done",
                [PreconditionViolation("DEPLOYMENT_LOADING", self._loading.id, "one at a time")],
            )
        deployment = self._store.create(model_id, engine_kind, deployed_by)
        task = asyncio.create_task(self._bring_up(deployment))
        self._loading = _Loading(deployment.id, task)
        # A caller that gives up (deadline, cancel) does not stop the deployment.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(task)

    async def _bring_up(self, deployment: Deployment) -> Deployment:
        logger.info(
            "deploying",
            extra={
                "deployment_id": deployment.id,
                "model_id": deployment.model_id,
                "by": deployment.deployed_by,
            },
        )
        started = time.perf_counter()
        try:
            resolved = await self._resolve(deployment.model_id)
            self._store.set_artifact(deployment.id, resolved.artifact_digest)
            engine = await self._load_checked(
                deployment.model_id, resolved.artifact_digest, deployment.engine
            )
        except BaseException as error:
            reason = error.message if isinstance(error, OwnchatError) else repr(error)
            self._store.mark_failed(deployment.id, reason)
            logger.warning(
                "deployment failed", extra={"deployment_id": deployment.id, "reason": reason}
            )
            raise
        finally:
            self._loading = None
        seconds = time.perf_counter() - started
        DEPLOY_SECONDS.observe(seconds)
        deployment = self._store.mark_live(deployment.id)
        previous, self._live = self._live, _Live(deployment, engine)
        logger.info(
            "deployment live",
            extra={
                "deployment_id": deployment.id,
                "model_id": deployment.model_id,
                "load_seconds": round(seconds, 1),
            },
        )
        if previous is not None:
            task = asyncio.create_task(self._retire(previous))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return deployment

    async def _blocked_reason(self, model_id: str) -> str:
        """Why the registry blocks a model, or "" (also when it cannot be asked)."""
        try:
            return (await self._resolver(model_id)).blocked_reason
        except OwnchatError:
            return ""

    async def _resolve(self, model_id: str) -> ResolvedModel:
        resolved = await self._resolver(model_id)
        if resolved.blocked_reason:
            raise FailedPreconditionError(
                f"model {model_id!r} must not be deployed: {resolved.blocked_reason}",
                [PreconditionViolation("MODEL_BLOCKED", model_id, resolved.blocked_reason)],
            )
        if resolved.kind is ModelKind.LORA_ADAPTER:
            raise FailedPreconditionError(
                f"model {model_id!r} is a LoRA adapter; merge it into its base "
                "(MergeAdapter) and deploy the merged version",
                [PreconditionViolation("MODEL_KIND", model_id, "adapters are not served yet")],
            )
        if not resolved.artifact_digest:
            raise FailedPreconditionError(
                f"model {model_id!r} has no files in the registry",
                [PreconditionViolation("MODEL_FILES", model_id, "no artifact")],
            )
        return resolved

    async def _load_checked(self, model_id: str, digest: str, kind: EngineKind) -> Engine:
        """Verifies the files against their manifest, then loads and warms them."""
        try:
            directory = self._artifacts.path(digest)
            tampered = await asyncio.to_thread(self._artifacts.verify_tree, digest)
        except (NotFoundError, OSError, ValueError, KeyError):
            raise FailedPreconditionError(
                f"the files of model {model_id!r} ({digest}) are missing from the artifact "
                "store or have no manifest",
                [PreconditionViolation("MODEL_FILES", digest, "not a stored model directory")],
            ) from None
        if tampered:
            shown = ", ".join(tampered[:5]) + (" ..." if len(tampered) > 5 else "")
            raise FailedPreconditionError(
                f"the files of model {model_id!r} do not match their manifest: {shown}",
                [
                    PreconditionViolation("MODEL_FILES_TAMPERED", name, "hash differs")
                    for name in tampered
                ],
            )
        if not any(directory.glob("*.safetensors")):
            raise FailedPreconditionError(
                f"model {model_id!r} has no safetensors weights; only safetensors are loaded",
                [PreconditionViolation("MODEL_FORMAT", model_id, "no *.safetensors file")],
            )
        try:
            engine = await load_engine(
                kind, directory, self._options, export_root=self._export_root
            )
        except EngineLoadError as error:
            raise FailedPreconditionError(
                f"model {model_id!r} could not be loaded: {error}",
                [PreconditionViolation("MODEL_LOAD", model_id, str(error))],
            ) from error
        try:
            warmup = ResolvedSampling(temperature=0.0, top_p=1.0, max_tokens=2, stop=(), seed=None)
            await engine.complete(engine.render(WARMUP), warmup, f"warmup-{uuid.uuid4().hex}")
        except BaseException as error:
            await engine.shutdown()
            if isinstance(error, Exception):
                raise FailedPreconditionError(
                    f"model {model_id!r} loaded but failed its first generation: {error}",
                    [PreconditionViolation("MODEL_WARMUP", model_id, str(error))],
                ) from error
            raise
        return engine

    async def _retire(self, previous: _Live) -> None:
        """Lets the replies in flight finish, then stops the old engine."""
        try:
            await asyncio.wait_for(previous.idle.wait(), timeout=self._drain_seconds)
        except TimeoutError:
            logger.warning(
                "replies still running on a replaced deployment are cut off",
                extra={"deployment_id": previous.deployment.id, "active": previous.active},
            )
        await previous.engine.shutdown()
        logger.info("engine stopped", extra={"deployment_id": previous.deployment.id})

    async def wait_retired(self) -> None:
        """Waits until every replaced engine has been shut down."""
        while self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def close(self) -> None:
        """Shuts every engine down (on service stop); a deployment loading finishes first."""
        if self._loading is not None:
            await asyncio.gather(self._loading.task, return_exceptions=True)
        live, self._live = self._live, None
        await self.wait_retired()
        if live is not None:
            await live.engine.shutdown()

    # -- generation --------------------------------------------------------

    async def generate(self, request: GenerateInput) -> AsyncIterator[GenerateChunk]:
        """Streams a reply from the live deployment: text deltas, then a final chunk."""
        arrived = time.perf_counter()
        sampling = validate_generate(request)
        live = self._live
        if live is None:
            if self._restoring:
                raise UnavailableError("the live deployment is being reloaded; try again shortly")
            raise FailedPreconditionError(
                "nothing is deployed; call Deploy first",
                [PreconditionViolation("DEPLOYMENT", "serving", "no live deployment")],
            )
        model_id = live.deployment.model_id
        if request.model_id and request.model_id != model_id:
            raise ModelNotDeployedError(request.model_id, model_id)
        prompt = live.engine.render(request.messages)
        check_prompt_fits(len(prompt), live.engine.max_model_len)
        # A reply may use what the context has left, no more.
        room = live.engine.max_model_len - len(prompt)
        sampling = replace(sampling, max_tokens=min(sampling.max_tokens, room))
        request_id = f"{request.request_id or 'gen'}-{uuid.uuid4().hex[:12]}"
        completion_tokens = 0
        finish: str | None = None
        first_text = True
        PROMPT_TOKENS.inc(len(prompt))
        live.enter()
        REPLIES_IN_FLIGHT.inc()
        try:
            async for step in live.engine.stream(prompt, sampling, request_id):
                completion_tokens += step.new_tokens
                COMPLETION_TOKENS.inc(step.new_tokens)
                if step.text:
                    if first_text:
                        TIME_TO_FIRST_TEXT.observe(time.perf_counter() - arrived)
                        first_text = False
                    yield GenerateChunk(text=step.text, model_id=model_id)
                if step.finish_reason is not None:
                    finish = step.finish_reason
        except EngineRequestError as error:
            raise InvalidArgumentError(
                f"the engine refused the request: {error}",
                [FieldViolation("messages", str(error))],
            ) from error
        except EngineUnavailableError as error:
            raise UnavailableError(
                f"the engine of deployment {live.deployment.id} stopped during the reply: {error}"
            ) from error
        finally:
            REPLIES_IN_FLIGHT.dec()
            live.leave()
        if finish not in _FINISH_REASONS:
            raise UnavailableError(f"the reply was cut off by the engine ({finish or 'no end'})")
        yield GenerateChunk(
            text="",
            model_id=model_id,
            finish_reason=_FINISH_REASONS[finish],
            prompt_tokens=len(prompt),
            completion_tokens=completion_tokens,
        )
