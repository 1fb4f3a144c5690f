"""Runs the data service: ``python -m ownchat_data`` (port 50051 by default)."""

from __future__ import annotations

from ownchat.artifacts import ArtifactStore
from ownchat.auth import load_or_create_secret, load_or_create_token
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.registry import ModelBlocker, ModelDirectories
from ownchat.server import ServiceSpec, exit_if_insecure, run_threaded_server
from ownchat_data.config import DataSettings
from ownchat_data.core import DataCore
from ownchat_data.servicer import DataServicer
from ownchat_data.store import DataStore


def main() -> None:
    settings = DataSettings()
    exit_if_insecure(settings)
    store = DataStore(settings.store_location("data", "data"))
    artifacts = ArtifactStore(settings.artifacts_dir)
    token = load_or_create_token(settings.home, settings.token)
    client_settings = ClientSettings(home=settings.home)
    core = DataCore(
        store,
        artifacts,
        max_upload_bytes=settings.max_upload_bytes,
        max_record_bytes=settings.max_record_bytes,
        models=ModelDirectories(client_settings, token, artifacts),
        block_models=ModelBlocker(client_settings, token),
        pii_salt=load_or_create_secret(
            settings.state_dir("data") / "pii-salt", settings.pii_salt
        ).encode(),
    )
    # Files an interrupted erasure listed but had not deleted yet.
    core.finish_erasures()
    spec = ServiceSpec(
        short_name="data",
        full_names=[data_pb2.DESCRIPTOR.services_by_name["DataService"].full_name],
        add_servicers=lambda server: data_pb2_grpc.add_DataServiceServicer_to_server(
            DataServicer(core),
            server,
        ),
    )
    run_threaded_server(spec, settings, on_shutdown=store.close)


if __name__ == "__main__":
    main()
