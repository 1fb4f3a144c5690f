"""Runs the trainer service: ``python -m ownchat_trainer`` (port 50052 by default).

Base models: the embedded SmolLM2-135M-Instruct, plus every model directory in
``OWNCHAT_TRAINER_MODEL_DIRS`` (a JSON list). Dataset versions are looked up in
the data service at ``OWNCHAT_DATA_ADDRESS``. Jobs run on the GPUs NVML reports
(``OWNCHAT_TRAINER_GPUS_PER_JOB`` each), else on the CPU. On SIGTERM the running
job's worker saves a checkpoint and the job resumes from it at the next start.
"""

from __future__ import annotations

from ownchat.artifacts import ArtifactStore
from ownchat.auth import load_or_create_token
from ownchat.config import ClientSettings
from ownchat.server import ServiceSpec, exit_if_insecure, run_threaded_server
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from ownchat_trainer.config import TrainerSettings
from ownchat_trainer.core import TrainerCore
from ownchat_trainer.data_client import DataServiceDatasets
from ownchat_trainer.registry import ModelRegistry
from ownchat_trainer.runner import RunnerOptions
from ownchat_trainer.servicer import TrainerServicer
from ownchat_trainer.store import TrainerStore


def build_core(settings: TrainerSettings) -> TrainerCore:
    """The core wired to its store, the artifact store and the data service."""
    state = settings.state_dir("trainer")
    store = TrainerStore(settings.store_location("trainer", "trainer"))
    artifacts = ArtifactStore(settings.artifacts_dir)
    registry = ModelRegistry(
        store,
        artifacts,
        settings.model_dirs,
        state / "imports",
        include_embedded=settings.embedded_base_model,
    )
    token = load_or_create_token(settings.home, settings.token)
    datasets = DataServiceDatasets(ClientSettings(home=settings.home), token)
    return TrainerCore(
        store,
        registry,
        artifacts,
        datasets,
        jobs_dir=state / "jobs",
        options=RunnerOptions(
            torch_threads=settings.torch_threads,
            gpus_per_job=settings.gpus_per_job,
            cpu_processes=settings.cpu_processes,
            stop_grace_seconds=settings.stop_grace_seconds,
        ),
    )


def main() -> None:
    settings = TrainerSettings()
    exit_if_insecure(settings)
    core = build_core(settings)
    core.start()
    spec = ServiceSpec(
        short_name="trainer",
        full_names=[trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name],
        add_servicers=lambda server: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(
            TrainerServicer(core),  # type: ignore[abstract]
            server,
        ),
    )
    run_threaded_server(spec, settings, on_shutdown=core.close)


if __name__ == "__main__":
    main()
