"""Live deployments and the engines under them.

An ``EngineHost`` is one running engine with its admission queue; it is
started again in place when its process dies. A ``LiveEngine`` is one live
deployment (the main one or a canary) on a host, through a LoRA adapter when
the deployment is one. Adapters of one base share their host: it runs as long
as a live deployment uses it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ownchat_serving.admission import Admission
from ownchat_serving.engine import Adapter
from ownchat_serving.engines import Engine
from ownchat_serving.store import Deployment, EngineKind


@dataclass(frozen=True)
class EngineFiles:
    """What an engine runs, to start it again: the model's files, its engine, adapters or not."""

    # The deployed model version it was first started for, for logs and metrics.
    model_id: str
    digest: str
    kind: EngineKind
    adapters: bool


class EngineHost:
    """A running engine, its admission queue, and the live deployments on it.

    ``engine`` changes when a dead engine is started again (``restart`` is the
    task doing it); ``stopped`` is set once no live deployment uses it.
    """

    def __init__(self, engine: Engine, admission: Admission, files: EngineFiles) -> None:
        self.engine = engine
        self.admission = admission
        self.files = files
        self.users: set[LiveEngine] = set()
        self.restart: asyncio.Task[None] | None = None
        self.watch: asyncio.Task[None] | None = None
        self.stopped = asyncio.Event()

    @property
    def restarting(self) -> bool:
        """Whether its engine died and a new one is being started."""
        return self.restart is not None

    def shares(self, digest: str, kind: EngineKind) -> bool:
        """Whether an adapter of the model with these files may run on this engine."""
        return (
            self.files.adapters
            and self.files.digest == digest
            and self.files.kind is kind
            and not self.stopped.is_set()
        )


class LiveEngine:
    """A live deployment on its engine.

    ``active`` counts the replies routed here that have not ended, waiting
    ones included, so a replaced deployment lets go of its engine only once
    they are done. ``ended`` is set once the deployment is replaced or the
    service stops, after which nothing new is routed here.
    """

    def __init__(self, deployment: Deployment, host: EngineHost, adapter: Adapter | None) -> None:
        self.deployment = deployment
        self.host = host
        self.adapter = adapter
        self.active = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.ended = asyncio.Event()

    @property
    def model_id(self) -> str:
        """The model version it serves."""
        return self.deployment.model_id

    @property
    def engine(self) -> Engine:
        """The engine its replies run on now."""
        return self.host.engine

    @property
    def admission(self) -> Admission:
        """Its engine's admission queue, shared with the other deployments on it."""
        return self.host.admission

    @property
    def restarting(self) -> bool:
        """Whether its engine is being started again after dying."""
        return self.host.restarting

    def enter(self) -> None:
        """A reply was routed here."""
        self.active += 1
        self.idle.clear()

    def leave(self) -> None:
        """A reply routed here ended."""
        self.active -= 1
        if self.active == 0:
            self.idle.set()
