"""Runs the serving service: ``python -m ownchat_serving`` (port 50054 by default).

Model ids are resolved through the trainer's model registry (``OWNCHAT_TRAINER_ADDRESS``).
The deployments that were live when the service stopped are reloaded before
health turns SERVING; health turns NOT_SERVING while the main deployment's
engine is being started again after its process died; SIGTERM drains calls in
flight, then shuts the engines' processes down.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from grpc_health.v1 import health, health_pb2

from ownchat.artifacts import ArtifactStore
from ownchat.auth import load_or_create_token
from ownchat.config import ClientSettings
from ownchat.logs import configure_logging
from ownchat.server import ServiceSpec, announce, exit_if_insecure, start_async_server
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc
from ownchat_serving.config import ServingSettings
from ownchat_serving.core import ServingCore
from ownchat_serving.gpu import register_gpu_metrics
from ownchat_serving.servicer import ServingServicer
from ownchat_serving.store import DeploymentStore
from ownchat_serving.trainer_resolver import TrainerResolver

logger = logging.getLogger("ownchat.server")


class HealthReporter:
    """Sets the server's health from the core's ``serving``, until the server drains."""

    def __init__(self, servicer: health.aio.HealthServicer, spec: ServiceSpec) -> None:
        self._servicer = servicer
        self._names = ("", *spec.full_names)
        self._updates: set[asyncio.Task[None]] = set()
        self.draining = False

    async def set(self, serving: bool) -> None:
        """SERVING or NOT_SERVING for the server and each of its services."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._names:
            if self.draining:
                return
            await self._servicer.set(name, status)

    def changed(self, serving: bool) -> None:
        """The core's callback: applies the change in the background, in order."""
        task = asyncio.create_task(self.set(serving))
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)


async def serve(settings: ServingSettings) -> None:
    """Runs the service until it is told to stop."""
    configure_logging("serving", settings.log_level)
    client_settings = ClientSettings()
    token = load_or_create_token(settings.home, settings.token)
    store = DeploymentStore(settings.store_location("serving", "serving"))
    resolver = TrainerResolver(client_settings, token, settings.resolve_timeout_seconds)
    core = ServingCore(
        store,
        ArtifactStore(settings.artifacts_dir),
        resolver,
        settings.engine_options(),
        export_root=settings.state_dir("serving") / "onnx",
        limits=settings.limits(),
    )
    spec = ServiceSpec(
        short_name="serving",
        full_names=[serving_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name],
        add_servicers=lambda server: serving_pb2_grpc.add_ServingServiceServicer_to_server(
            ServingServicer(core), server
        ),
    )
    try:
        # Health stays NOT_SERVING until the live deployments are back.
        running = await start_async_server(spec, settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        register_gpu_metrics()
        announce(settings, running.port)
        # A SIGTERM during the reload is honoured once it is done: the server
        # drains and core.close() stops the engines just loaded.
        await core.restore()
        reporter = HealthReporter(running.health, spec)
        core.on_serving_change = reporter.changed
        await reporter.set(core.serving)
        logger.info("ready")
        await stop.wait()
        logger.info("draining", extra={"grace_seconds": settings.grace_seconds})
        reporter.draining = True
        await running.health.enter_graceful_shutdown()
        await running.server.stop(settings.grace_seconds)
        await core.close()
        logger.info("stopped")
    finally:
        await core.close()
        await resolver.close()
        store.close()


def main() -> None:
    settings = ServingSettings()
    exit_if_insecure(settings)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
