"""The trainer's settings (env prefix ``OWNCHAT_TRAINER_``, TOML table ``[trainer]``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ownchat.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, ServerSettings


class TrainerSettings(ServerSettings):
    """Settings of the trainer service."""

    model_config = SettingsConfigDict(
        env_prefix="OWNCHAT_TRAINER_", extra="ignore", populate_by_name=True
    )
    toml_table: ClassVar[str | None] = "trainer"

    port: int = Field(default=DEFAULT_PORTS["trainer"], ge=0, le=65535)
    metrics_port: int | None = Field(default=DEFAULT_METRICS_PORTS["trainer"], ge=0, le=65535)
    model_dirs: list[Path] = Field(
        default_factory=list,
        description=(
            "Directories whose subdirectories holding a config.json are base models, "
            "named by the subdirectory (env: a JSON list)."
        ),
    )
    embedded_base_model: bool = Field(
        default=True,
        description="Offer the embedded SmolLM2-135M-Instruct as smollm2-135m-instruct.",
    )
    torch_threads: int | None = Field(
        default=None,
        gt=0,
        description="CPU threads of a training worker; every core of the machine when unset.",
    )
    gpus_per_job: int = Field(
        default=1,
        ge=1,
        description=(
            "GPUs a job trains on when the machine has them: one worker process a GPU, "
            "data-parallel under torchrun when more than one, the training state sharded "
            "over them (FSDP) when no one GPU could hold it."
        ),
    )
    cpu_processes: int = Field(
        default=1,
        ge=1,
        description=(
            "Worker processes of a job on a machine without a GPU; more than one trains "
            "data-parallel under torchrun with gloo."
        ),
    )
    stop_grace_seconds: float = Field(
        default=120.0,
        ge=0,
        description=(
            "How long a worker asked to pause, or stopped with the service, may take to "
            "finish its step and save a checkpoint before it is killed."
        ),
    )
