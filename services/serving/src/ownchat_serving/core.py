"""The serving service's core: deployments and generation, with no gRPC.

Deploy resolves a model id to its files, checks them against their manifest,
loads and warms a new engine beside the live one, and only then moves traffic
to it; the old engine finishes its replies in flight (up to ``drain_seconds``)
and is shut down. A failed load leaves the previous deployment serving.

A canary deployment (``canary_percent`` 1..99) is loaded beside the main one
and takes that share of conversations (``routing``). Deploying the canary's
version again promotes it (all traffic, no reload), or changes its share;
Rollback ends it; a full deployment of another version replaces both.

A LoRA adapter version is served by vLLM on an engine of its base model
started with adapters on, and every adapter of that base deployed beside it
(main and canary, or one replacing the other) shares that engine.

Each engine admits a bounded number of replies (``admission``). An engine
whose process dies fails its replies with UNAVAILABLE at once and is started
again in the background for the same deployments; health is not serving while
the main deployment has no engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
from ownchat_serving.admission import Admission
from ownchat_serving.engine import Adapter, EngineOptions
from ownchat_serving.engines import Engine
from ownchat_serving.generation import (
    GenerateChunk,
    GenerateInput,
    validate_generate,
)
from ownchat_serving.live import EngineFiles, EngineHost, LiveEngine
from ownchat_serving.loading import Loader
from ownchat_serving.metrics import (
    DEPLOY_SECONDS,
    ENGINE_RESTARTS,
    REPLIES,
)
from ownchat_serving.replies import DeadlineExceededError, stream_reply
from ownchat_serving.resolver import ModelKind, ModelResolver, ResolvedModel
from ownchat_serving.routing import conversation_key, takes_canary
from ownchat_serving.store import Deployment, DeploymentStore, EngineKind

logger = logging.getLogger("ownchat.serving")

MAX_MODEL_ID_CHARS = 256
MAX_DEPLOYED_BY_CHARS = 256


@dataclass(frozen=True)
class DeploySpec:
    """A Deploy request; ``engine`` None means vLLM; ``canary_percent`` 0 or 100 is all traffic."""

    model_id: str
    engine: EngineKind | None = None
    canary_percent: int = 0
    deployed_by: str = ""


@dataclass(frozen=True)
class ServingLimits:
    """How much each engine takes on, and how a dead engine is started again."""

    # Replies decoding at once on one engine; later ones wait.
    max_running: int = 64
    # Replies waiting for a slot on one engine; later ones are refused.
    max_waiting: int = 128
    drain_seconds: float = 30.0
    # How often each engine is checked for a dead process.
    watch_seconds: float = 0.5
    # Waits between failed attempts to start a dead engine again, doubling up to the second.
    restart_backoff: tuple[float, float] = (1.0, 30.0)


class ModelNotDeployedError(NotFoundError):
    """A Generate request named a model version that is not live."""

    def __init__(self, model_id: str, live_model_ids: list[str]) -> None:
        super().__init__("deployed model", model_id)
        serves = " and ".join(repr(m) for m in live_model_ids)
        self.message = f"model {model_id!r} is not deployed; the live deployments serve {serves}"
        self.args = (self.message,)


def validate_deploy(spec: DeploySpec) -> tuple[EngineKind, int]:
    """Checks a Deploy request with every problem at once; returns its engine and canary share.

    The share is 0 for a deployment that takes all traffic.
    """
    violations = []
    if not spec.model_id:
        violations.append(FieldViolation("model_id", "required"))
    elif len(spec.model_id) > MAX_MODEL_ID_CHARS:
        violations.append(
            FieldViolation("model_id", f"must be at most {MAX_MODEL_ID_CHARS} characters")
        )
    engine = spec.engine or EngineKind.VLLM
    if not 0 <= spec.canary_percent <= 100:
        violations.append(
            FieldViolation(
                "canary_percent", "must be 1..99 for a canary, or 0 or 100 to move all traffic"
            )
        )
    if len(spec.deployed_by) > MAX_DEPLOYED_BY_CHARS:
        violations.append(
            FieldViolation("deployed_by", f"must be at most {MAX_DEPLOYED_BY_CHARS} characters")
        )
    if violations:
        raise InvalidArgumentError("invalid deploy request", violations)
    return engine, spec.canary_percent % 100


def _check_deployed_by(deployed_by: str) -> None:
    if len(deployed_by) > MAX_DEPLOYED_BY_CHARS:
        raise InvalidArgumentError(
            "invalid rollback request",
            [FieldViolation("deployed_by", f"at most {MAX_DEPLOYED_BY_CHARS} characters")],
        )


class ServingCore:
    """Deployments by version and generation on the live ones."""

    def __init__(
        self,
        store: DeploymentStore,
        artifacts: ArtifactStore,
        resolver: ModelResolver,
        options: EngineOptions,
        drain_seconds: float | None = None,
        export_root: Path | None = None,
        limits: ServingLimits | None = None,
    ) -> None:
        """``export_root``: where ONNX exports of model versions are kept (the
        service's own folder; beside the database file when not given, and
        needed when the store is in PostgreSQL).
        ``drain_seconds``, when given, overrides the limits' own."""
        if export_root is None:
            if store.path is None:
                raise ValueError("export_root is needed when the store is not a SQLite file")
            export_root = store.path.parent / "onnx"
        self._store = store
        self._loader = Loader(artifacts, options, export_root)
        self._resolver = resolver
        limits = limits or ServingLimits()
        if drain_seconds is not None:
            limits = replace(limits, drain_seconds=drain_seconds)
        self._limits = limits
        self._main: LiveEngine | None = None
        self._canary: LiveEngine | None = None
        # The deployment change under way (a load, a promotion...), at most one at a time.
        self._changing: tuple[str, asyncio.Task[Deployment]] | None = None
        self._restoring = False
        self._closing = False
        self._retiring: set[asyncio.Task[None]] = set()
        # vLLM tells adapters apart by a number: one per adapter's files.
        self._adapter_ids: dict[str, int] = {}
        self._serving = True
        # Told whenever ``serving`` changes (the server's health check).
        self.on_serving_change: Callable[[bool], None] | None = None

    @property
    def live(self) -> Deployment | None:
        """The main deployment, taking the traffic a canary leaves, if any."""
        return self._main.deployment if self._main else None

    @property
    def canary(self) -> Deployment | None:
        """The canary beside the main deployment, if any."""
        return self._canary.deployment if self._canary else None

    @property
    def live_engine(self) -> Engine | None:
        """The main deployment's engine (for checks and reference runs)."""
        return self._main.engine if self._main else None

    @property
    def canary_engine(self) -> Engine | None:
        """The canary's engine."""
        return self._canary.engine if self._canary else None

    @property
    def serving(self) -> bool:
        """False while the main deployment's engine is being started again after dying."""
        return not (self._main is not None and self._main.restarting)

    def _health_changed(self) -> None:
        serving = self.serving
        if serving != self._serving:
            self._serving = serving
            logger.info("serving" if serving else "not serving: the main engine is restarting")
            if self.on_serving_change is not None and not self._closing:
                self.on_serving_change(serving)

    # -- deployments -------------------------------------------------------

    async def deploy(self, spec: DeploySpec) -> Deployment:
        """Loads, warms and moves traffic to a model version: all of it, or a canary's share.

        Deploying the version the canary serves, on the same engine, promotes
        it (share 0) or changes its share, without loading it again.
        """
        engine_kind, share = validate_deploy(spec)
        main, canary = self._main, self._canary
        if share:
            if main is None:
                raise FailedPreconditionError(
                    "a canary needs a live deployment to share traffic with; deploy without "
                    "a canary share first",
                    [PreconditionViolation("DEPLOYMENT", "serving", "no live deployment")],
                )
            if main.model_id == spec.model_id and main.deployment.engine is engine_kind:
                raise FailedPreconditionError(
                    f"model {spec.model_id!r} is the main deployment already",
                    [PreconditionViolation("CANARY", spec.model_id, "already the main version")],
                )
        if (
            canary is not None
            and canary.model_id == spec.model_id
            and canary.deployment.engine is engine_kind
        ):
            return await self._change(
                spec.model_id, lambda: self._reuse(canary, share, spec.deployed_by, check=True)
            )
        return await self._change(
            spec.model_id,
            lambda: self._bring_up(spec.model_id, engine_kind, spec.deployed_by, share),
        )

    async def rollback(self, deployed_by: str = "") -> Deployment:
        """Ends a canary; without one, moves all traffic back to the version live before."""
        _check_deployed_by(deployed_by)
        main, canary = self._main, self._canary
        if canary is not None and main is not None:
            return await self._change(
                main.model_id, lambda: self._reuse(main, 0, deployed_by, check=False)
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
        return await self._change(
            target.model_id,
            lambda: self._bring_up(target.model_id, target.engine, deployed_by, 0),
        )

    def list_deployments(self, limit: int, offset: int) -> list[Deployment]:
        """The history, newest first."""
        return self._store.list(limit, offset)

    async def _change(
        self, model_id: str, start: Callable[[], Coroutine[Any, Any, Deployment]]
    ) -> Deployment:
        """Runs one deployment change; a caller giving up (deadline, cancel) does not stop it."""
        if self._changing is not None:
            raise FailedPreconditionError(
                f"a deployment of {self._changing[0]!r} is still loading; try again when it "
                "is done",
                [PreconditionViolation("DEPLOYMENT_LOADING", self._changing[0], "one at a time")],
            )
        task = asyncio.create_task(start())
        self._changing = (model_id, task)

        def done(finished: asyncio.Task[Deployment]) -> None:
            self._changing = None
            if not finished.cancelled():
                finished.exception()  # retrieved: the caller may be gone

        task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _bring_up(
        self, model_id: str, engine_kind: EngineKind, deployed_by: str, share: int
    ) -> Deployment:
        deployment = self._store.create(model_id, engine_kind, deployed_by, share)
        logger.info(
            "deploying",
            extra={
                "deployment_id": deployment.id,
                "model_id": model_id,
                "by": deployed_by,
                "canary_percent": share,
            },
        )
        started = time.perf_counter()
        try:
            resolved = await self._resolve(model_id, engine_kind)
            self._store.set_artifact(
                deployment.id, resolved.artifact_digest, resolved.base_artifact_digest
            )
            live = await self._start(self._store.get(deployment.id))
        except BaseException as error:
            reason = error.message if isinstance(error, OwnchatError) else repr(error)
            self._store.mark_failed(deployment.id, reason)
            logger.warning(
                "deployment failed", extra={"deployment_id": deployment.id, "reason": reason}
            )
            raise
        seconds = time.perf_counter() - started
        DEPLOY_SECONDS.observe(seconds)
        live.deployment = deployment = self._store.mark_live(deployment.id)
        self._install(live)
        logger.info(
            "deployment live",
            extra={
                "deployment_id": deployment.id,
                "model_id": model_id,
                "traffic_percent": deployment.traffic_percent,
                "load_seconds": round(seconds, 1),
            },
        )
        return deployment

    async def _reuse(
        self, live: LiveEngine, share: int, deployed_by: str, check: bool
    ) -> Deployment:
        """A new deployment of a version already running (promotion, new share, end of canary)."""
        if check:
            resolved = await self._resolve(live.model_id, live.deployment.engine)
            if resolved.artifact_digest != live.deployment.artifact_digest:
                raise FailedPreconditionError(
                    f"the registry's files of {live.model_id!r} changed since it was deployed",
                    [PreconditionViolation("MODEL_FILES", live.model_id, "digest differs")],
                )
        previous = live.deployment
        deployment = self._store.create(previous.model_id, previous.engine, deployed_by, share)
        self._store.set_artifact(deployment.id, previous.artifact_digest, previous.base_digest)
        deployment = self._store.mark_live(deployment.id)
        live.deployment = deployment
        self._install(live)
        logger.info(
            "deployment live on a running engine",
            extra={
                "deployment_id": deployment.id,
                "replaces": previous.id,
                "model_id": deployment.model_id,
                "traffic_percent": deployment.traffic_percent,
                "by": deployed_by,
            },
        )
        return deployment

    async def _start(self, deployment: Deployment) -> LiveEngine:
        """The engine for a deployment: loaded and warmed, or, for a LoRA adapter, the
        running engine of its base when a live deployment already has one."""
        if not deployment.base_digest:
            engine = await self._loader.load(
                deployment.model_id, deployment.artifact_digest, deployment.engine
            )
            files = EngineFiles(
                deployment.model_id, deployment.artifact_digest, deployment.engine, False
            )
            return LiveEngine(deployment, self._host(engine, files), None)
        directory = await self._loader.verified(deployment.model_id, deployment.artifact_digest)
        digest = deployment.artifact_digest
        adapter = Adapter(
            digest, self._adapter_ids.setdefault(digest, len(self._adapter_ids) + 1), directory
        )
        host = next(
            (
                live.host
                for live in (self._main, self._canary)
                if live is not None and live.host.shares(deployment.base_digest, deployment.engine)
            ),
            None,
        )
        started = host is None
        if host is None:
            engine = await self._loader.load(
                f"{deployment.model_id} (its base)",
                deployment.base_digest,
                deployment.engine,
                adapters=True,
            )
            files = EngineFiles(
                deployment.model_id, deployment.base_digest, deployment.engine, True
            )
            host = self._host(engine, files)
        try:
            await self._loader.warm(host.engine, deployment.model_id, adapter)
        except BaseException:
            if started:
                await host.engine.shutdown()
            raise
        logger.info(
            "adapter on its base's engine",
            extra={"model_id": deployment.model_id, "engine_shared": not started},
        )
        return LiveEngine(deployment, host, adapter)

    def _host(self, engine: Engine, files: EngineFiles) -> EngineHost:
        return EngineHost(
            engine, Admission(self._limits.max_running, self._limits.max_waiting), files
        )

    def _install(self, live: LiveEngine) -> None:
        """Moves traffic to a live engine; what it replaces drains and stops in the background."""
        replaced: list[LiveEngine] = []
        if live.deployment.is_canary:
            if self._canary is not None and self._canary is not live:
                replaced.append(self._canary)
            self._canary = live
        else:
            replaced += [old for old in (self._main, self._canary) if old and old is not live]
            self._main, self._canary = live, None
        host = live.host
        host.users.add(live)
        if host.watch is None:
            host.watch = asyncio.create_task(self._watch(host))
        for old in replaced:
            self._retire_later(old, self._limits.drain_seconds)
        self._health_changed()

    def _retire_later(self, live: LiveEngine, drain_seconds: float) -> None:
        live.ended.set()
        task = asyncio.create_task(self._retire(live, drain_seconds))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def restore(self) -> Deployment | None:
        """Reloads the deployments that were live when the service last stopped.

        Uses the files recorded at deploy time, so it needs no model registry;
        but when the registry answers that a model has since been blocked (its
        training data was erased), it is not reloaded. A deployment that is
        blocked or no longer loads is marked FAILED, and so is a canary whose
        main deployment failed; the service then starts with nothing deployed.
        Returns the main deployment.
        """
        for stale in self._store.fail_interrupted():
            logger.warning("interrupted deployment failed", extra={"deployment_id": stale.id})
        main, canary = self._store.live(), self._store.canary()
        if main is None:
            return None
        self._restoring = True
        try:
            main_live = await self._reload(main)
            if main_live is None:
                if canary is not None:
                    self._store.mark_failed(
                        canary.id, "not reloaded at start: its main deployment failed to reload"
                    )
                return None
            self._install(main_live)
            canary_live = await self._reload(canary) if canary is not None else None
            if canary_live is not None:
                self._install(canary_live)
        finally:
            self._restoring = False
        return self.live

    async def _reload(self, deployment: Deployment) -> LiveEngine | None:
        blocked = await self._blocked_reason(deployment.model_id)
        if blocked:
            self._store.mark_failed(deployment.id, f"not reloaded at start: {blocked}")
            logger.error(
                "live deployment not reloaded: model blocked",
                extra={"deployment_id": deployment.id, "model_id": deployment.model_id},
            )
            return None
        try:
            live = await self._start(deployment)
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
        logger.info(
            "deployment reloaded",
            extra={"deployment_id": deployment.id, "model_id": deployment.model_id},
        )
        return live

    async def _blocked_reason(self, model_id: str) -> str:
        """Why the registry blocks a model, or "" (also when it cannot be asked)."""
        try:
            return (await self._resolver(model_id)).blocked_reason
        except OwnchatError:
            return ""

    async def _resolve(self, model_id: str, engine_kind: EngineKind) -> ResolvedModel:
        resolved = await self._resolver(model_id)
        if resolved.blocked_reason:
            raise FailedPreconditionError(
                f"model {model_id!r} must not be deployed: {resolved.blocked_reason}",
                [PreconditionViolation("MODEL_BLOCKED", model_id, resolved.blocked_reason)],
            )
        if resolved.kind is ModelKind.LORA_ADAPTER and engine_kind is not EngineKind.VLLM:
            raise FailedPreconditionError(
                f"model {model_id!r} is a LoRA adapter, which only vLLM serves (on an engine "
                f"of its base); merge it into its base (MergeAdapter) to serve it on "
                f"{engine_kind.value}",
                [PreconditionViolation("MODEL_KIND", model_id, "adapters need vLLM")],
            )
        if resolved.kind is ModelKind.LORA_ADAPTER and not resolved.base_artifact_digest:
            raise FailedPreconditionError(
                f"model {model_id!r} is a LoRA adapter whose base model has no files in the "
                "registry",
                [PreconditionViolation("MODEL_FILES", model_id, "no base model artifact")],
            )
        if not resolved.artifact_digest:
            raise FailedPreconditionError(
                f"model {model_id!r} has no files in the registry",
                [PreconditionViolation("MODEL_FILES", model_id, "no artifact")],
            )
        return resolved

    async def _retire(self, previous: LiveEngine, drain_seconds: float) -> None:
        """Lets the replies routed to a replaced deployment finish, then lets go of its
        engine, which stops when no live deployment uses it."""
        previous.ended.set()
        try:
            if not previous.idle.is_set():
                await asyncio.wait_for(previous.idle.wait(), timeout=drain_seconds)
        except TimeoutError:
            logger.warning(
                "replies still running on a replaced deployment are cut off",
                extra={"deployment_id": previous.deployment.id, "active": previous.active},
            )
        host = previous.host
        host.users.discard(previous)
        if host.users or host.stopped.is_set():
            return
        host.stopped.set()
        if host.restart is not None:
            # It stops at its next step, and stops any engine it started.
            await asyncio.gather(host.restart, return_exceptions=True)
        if host.watch is not None:
            host.watch.cancel()
        await host.engine.shutdown()
        logger.info("engine stopped", extra={"deployment_id": previous.deployment.id})

    async def wait_retired(self) -> None:
        """Waits until every replaced engine has been shut down."""
        while self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def close(self) -> None:
        """Shuts every engine down (on service stop); a change under way finishes first."""
        self._closing = True
        if self._changing is not None:
            await asyncio.gather(self._changing[1], return_exceptions=True)
        lives = [live for live in (self._main, self._canary) if live is not None]
        self._main = self._canary = None
        for live in lives:
            # The server drained its calls already: what is left is cut off now.
            self._retire_later(live, 0.0)
        await self.wait_retired()

    # -- engines that die --------------------------------------------------

    async def _watch(self, host: EngineHost) -> None:
        """Notices an engine whose process died even when no reply is running on it."""
        while not host.stopped.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(host.stopped.wait(), self._limits.watch_seconds)
            if not host.stopped.is_set() and host.restart is None and host.engine.dead:
                self._begin_restart(host)

    def _engine_died(self, live: LiveEngine) -> None:
        self._begin_restart(live.host)

    def _begin_restart(self, host: EngineHost) -> None:
        if host.restart is not None or host.stopped.is_set():
            return
        logger.error(
            "engine died; starting it again",
            extra={"model_id": host.files.model_id, "digest": host.files.digest},
        )
        host.admission.fail_waiting(
            UnavailableError(
                f"the engine serving {host.files.model_id!r} died and is being started again; "
                "retry shortly"
            )
        )
        host.restart = asyncio.create_task(self._restart(host))
        self._health_changed()

    async def _restart(self, host: EngineHost) -> None:
        """Starts a dead engine again, retrying with back-off until no deployment uses it."""
        files = host.files
        try:
            with suppress(Exception):  # frees what is left of the dead one
                await host.engine.shutdown()
            delay, longest = self._limits.restart_backoff
            while not host.stopped.is_set():
                try:
                    engine = await self._loader.load(
                        files.model_id, files.digest, files.kind, files.adapters
                    )
                except OwnchatError as error:
                    logger.error(
                        "engine could not be started again",
                        extra={"model_id": files.model_id, "reason": error.message},
                    )
                    with suppress(TimeoutError):
                        await asyncio.wait_for(host.stopped.wait(), delay)
                    delay = min(delay * 2, longest)
                    continue
                if host.stopped.is_set():
                    await engine.shutdown()
                    return
                host.engine = engine
                for live in host.users:
                    live.deployment = self._store.record_restart(live.deployment.id)
                ENGINE_RESTARTS.labels(files.model_id).inc()
                logger.info("engine started again", extra={"model_id": files.model_id})
                return
        finally:
            host.restart = None
            self._health_changed()

    # -- generation --------------------------------------------------------

    def _route(self, request: GenerateInput) -> LiveEngine:
        """The engine that takes a request: the one its model id names, else by canary split."""
        main, canary = self._main, self._canary
        if main is None:
            if self._restoring:
                raise UnavailableError("the live deployment is being reloaded; try again shortly")
            raise FailedPreconditionError(
                "nothing is deployed; call Deploy first",
                [PreconditionViolation("DEPLOYMENT", "serving", "no live deployment")],
            )
        lives = [main] if canary is None else [main, canary]
        if request.model_id:
            lives = [live for live in lives if live.model_id == request.model_id]
            if not lives:
                raise ModelNotDeployedError(
                    request.model_id,
                    [main.model_id] + ([f"{canary.model_id} (canary)"] if canary else []),
                )
        chosen = lives[0]
        if len(lives) == 2 and canary is not None:
            key = conversation_key(request.conversation_id, request.messages, request.prompt)
            if takes_canary(key, canary.model_id, canary.deployment.canary_percent):
                # A canary being started again hands its share to the main one meanwhile.
                chosen = canary if not canary.restarting else main
        if chosen.restarting:
            raise UnavailableError(
                f"the engine of deployment {chosen.deployment.id} is being started again after "
                "it died; retry shortly"
            )
        return chosen

    async def generate(self, request: GenerateInput) -> AsyncIterator[GenerateChunk]:
        """Streams a reply from a live deployment: text deltas, then a final chunk.

        Raises ResourceExhaustedError when the engine's queue is full,
        DeadlineExceededError when ``request.deadline`` passes first (the
        engine request is aborted), UnavailableError when the engine dies.
        """
        arrived = time.perf_counter()
        model_id, outcome = "", "internal"
        try:
            sampling = validate_generate(request)
            live = self._route(request)
            model_id = live.model_id
            ticket = live.host.admission.reserve()
            live.enter()
            try:
                reply = stream_reply(live, ticket, request, sampling, arrived, self._engine_died)
                async with aclosing(reply):
                    async for chunk in reply:
                        yield chunk
            finally:
                ticket.release()
                live.leave()
            outcome = "ok"
        except OwnchatError as error:
            outcome = error.code.name.lower()
            raise
        except DeadlineExceededError:
            outcome = "deadline_exceeded"
            raise
        except (asyncio.CancelledError, GeneratorExit):
            late = request.deadline is not None and time.monotonic() >= request.deadline
            outcome = "deadline_exceeded" if late else "cancelled"
            raise
        finally:
            REPLIES.labels(model_id, outcome).inc()
