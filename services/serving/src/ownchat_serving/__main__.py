"""Runs the serving service: ``python -m ownchat_serving`` (port 50054 by default).

Model ids are resolved through the trainer's model registry (``OWNCHAT_TRAINER_ADDRESS``).
The deployment that was live when the service stopped is reloaded before health
turns SERVING; SIGTERM drains calls in flight, then shuts the engine's processes down.
"""

from __future__ import annotations

import asyncio

from ownchat.artifacts import ArtifactStore
from ownchat.auth import load_or_create_token
from ownchat.config import ClientSettings
from ownchat.server import ServiceSpec, run_async_server
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc
from ownchat_serving.config import ServingSettings
from ownchat_serving.core import ServingCore
from ownchat_serving.servicer import ServingServicer
from ownchat_serving.store import DeploymentStore
from ownchat_serving.trainer_resolver import TrainerResolver


async def serve(settings: ServingSettings) -> None:
    """Runs the service until it is told to stop."""
    client_settings = ClientSettings()
    token = load_or_create_token(settings.home, settings.token)
    store = DeploymentStore(settings.state_dir("serving") / "serving.db")
    resolver = TrainerResolver(client_settings, token, settings.resolve_timeout_seconds)
    core = ServingCore(
        store,
        ArtifactStore(settings.artifacts_dir),
        resolver,
        settings.engine_options(),
        drain_seconds=settings.drain_seconds,
        export_root=settings.state_dir("serving") / "onnx",
    )
    spec = ServiceSpec(
        short_name="serving",
        full_names=[serving_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name],
        add_servicers=lambda server: serving_pb2_grpc.add_ServingServiceServicer_to_server(
            ServingServicer(core), server
        ),
    )

    async def start() -> None:
        # A SIGTERM during the reload is honoured once it is done: the server
        # drains and core.close() stops the engine just loaded.
        await core.restore()

    async def stop() -> None:
        await core.close()

    try:
        await run_async_server(spec, settings, on_start=start, on_shutdown=stop)
    finally:
        await core.close()
        await resolver.close()
        store.close()


def main() -> None:
    asyncio.run(serve(ServingSettings()))


if __name__ == "__main__":
    main()
