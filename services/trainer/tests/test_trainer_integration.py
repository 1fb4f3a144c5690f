"""The trainer as a real server process beside a real data service: a dataset is
uploaded, trained on, refused when its samples are too long for the job, and the
service stops cleanly in the middle of a job, which resumes from its checkpoint
when the service starts again."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ownchat.client import OwnchatClient
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2
from ownchat.errors import describe_rpc_error
from ownchat.testing import build_tiny_chat_model, free_port
from ownchat.trainer.v1 import trainer_pb2
from ownchat_trainer.runner import INTERRUPTED_BY_STOP

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("ownchat_data") is None, reason="the data service is not installed"
    ),
]


def _workers_of(job_id: str) -> list[int]:
    """Process ids of live worker processes of a job."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"ownchat_trainer.worker" in command and job_id.encode() in command:
            found.append(int(entry.name))
    return found


def _wait_healthy(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no healthy server on port {port}")


class Services:
    """A data service and a trainer over one home."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.data_port, self.trainer_port = free_port(), free_port()
        build_tiny_chat_model(home / "models" / "tiny-chat")
        self.env = {
            **os.environ,
            "OWNCHAT_HOME": str(home),
            "OWNCHAT_DATA_PORT": str(self.data_port),
            "OWNCHAT_DATA_METRICS_PORT": str(free_port()),
            "OWNCHAT_DATA_ADDRESS": f"127.0.0.1:{self.data_port}",
            # The data service counts tokens with base models the trainer resolves.
            "OWNCHAT_TRAINER_ADDRESS": f"127.0.0.1:{self.trainer_port}",
            "OWNCHAT_TRAINER_PORT": str(self.trainer_port),
            "OWNCHAT_TRAINER_METRICS_PORT": str(free_port()),
            "OWNCHAT_TRAINER_MODEL_DIRS": json.dumps([str(home / "models")]),
            "OWNCHAT_TRAINER_EMBEDDED_BASE_MODEL": "false",
            "OWNCHAT_TRAINER_TORCH_THREADS": "1",
        }
        self.data = self._start("ownchat_data", self.data_port)
        self.trainer = self._start("ownchat_trainer", self.trainer_port)
        self.client = OwnchatClient.from_settings(
            ClientSettings(
                home=home,
                data_address=f"127.0.0.1:{self.data_port}",
                trainer_address=f"127.0.0.1:{self.trainer_port}",
            )
        )

    def _start(self, module: str, port: int) -> subprocess.Popen[bytes]:
        log = (self.home / f"{module}.log").open("ab")
        process = subprocess.Popen([sys.executable, "-m", module], env=self.env, stderr=log)
        _wait_healthy(port, process)
        return process

    def restart_trainer(self) -> int:
        """Stops the trainer with SIGTERM, starts it again; the old one's exit status."""
        self.trainer.terminate()
        status = self.trainer.wait(timeout=60)
        self.trainer = self._start("ownchat_trainer", self.trainer_port)
        return status

    def close(self) -> None:
        self.client.close()
        for process in (self.trainer, self.data):
            process.terminate()
        for process in (self.trainer, self.data):
            process.wait(timeout=60)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    running = Services(tmp_path / "home")
    yield running
    running.close()


def _upload(client: OwnchatClient, answer: str = "The Zephyr X2 router costs 129 euros.") -> str:
    """Uploads ten conversations, counted with tiny-chat's tokenizer; the version's id."""
    lines = "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}: how much is the Zephyr X2?"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
        + "\n"
        for i in range(10)
    )
    header = data_pb2.UploadHeader(
        dataset_name="support",
        file_name="support.jsonl",
        format=data_pb2.SOURCE_FORMAT_OPENAI_CHAT_JSONL,
        base_model="tiny-chat",
    )
    requests = [
        data_pb2.UploadDatasetVersionRequest(header=header),
        data_pb2.UploadDatasetVersionRequest(chunk=lines.encode()),
    ]
    return str(client.data.UploadDatasetVersion(iter(requests)).dataset_version.id)


def test_train_on_an_uploaded_dataset_then_stop_mid_job(services: Services) -> None:
    trainer = services.client.trainer
    version_id = _upload(services.client)
    with pytest.raises(grpc.RpcError) as caught:
        trainer.CreateTrainingJob(
            trainer_pb2.CreateTrainingJobRequest(
                base_model="tiny-chat", dataset_version_id="dsv_missing"
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]

    job = trainer.CreateTrainingJob(
        trainer_pb2.CreateTrainingJobRequest(
            base_model="tiny-chat",
            dataset_version_id=version_id,
            hyperparameters=trainer_pb2.Hyperparameters(
                max_steps=5, batch_size=2, max_seq_length=256
            ),
        )
    ).job
    events = [
        r.event
        for r in trainer.StreamTrainingJobEvents(
            trainer_pb2.StreamTrainingJobEventsRequest(job_id=job.id), timeout=180
        )
    ]
    assert events[-1].state == trainer_pb2.JOB_STATE_SUCCEEDED
    done = trainer.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=job.id)).job
    model = trainer.GetModel(trainer_pb2.GetModelRequest(model_id=done.model_version)).model
    assert model.id == "ft:tiny-chat::1"
    assert model.dataset_version_id == version_id
    assert (services.home / "artifacts" / "sha256" / model.artifact.digest[7:]).is_dir()

    # Counted with the job's own tokenizer, samples too long are refused at once.
    wordy = _upload(services.client, " ".join(["The router costs 129 euros."] * 12))
    with pytest.raises(grpc.RpcError) as caught:
        trainer.CreateTrainingJob(
            trainer_pb2.CreateTrainingJobRequest(
                base_model="tiny-chat",
                dataset_version_id=wordy,
                hyperparameters=trainer_pb2.Hyperparameters(max_seq_length=32),
            )
        )
    refused = describe_rpc_error(caught.value)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "10 of its 10 samples have 32 tokens or more" in refused.violations[0].description

    long_job = trainer.CreateTrainingJob(
        trainer_pb2.CreateTrainingJobRequest(
            base_model="tiny-chat",
            dataset_version_id=version_id,
            method=trainer_pb2.TRAINING_METHOD_SFT_LORA,
            hyperparameters=trainer_pb2.Hyperparameters(
                max_steps=1_000_000, checkpoint_interval_steps=20
            ),
        )
    ).job
    stream = trainer.StreamTrainingJobEvents(
        trainer_pb2.StreamTrainingJobEventsRequest(job_id=long_job.id), timeout=180
    )
    for response in stream:
        if response.event.kind == trainer_pb2.EVENT_KIND_CHECKPOINT:
            break
    stream.cancel()
    assert _workers_of(long_job.id)
    assert services.restart_trainer() == 0
    # The stop checkpointed the job and queued it; the new service resumed it.
    events = []
    deadline = time.monotonic() + 120
    while not any(e.message.startswith("resumed from the checkpoint") for e in events):
        assert time.monotonic() < deadline, [e.message for e in events]
        time.sleep(0.5)
        events = _events_so_far(services.client, long_job.id)
    stopped = next(e for e in events if e.message.startswith(INTERRUPTED_BY_STOP))
    assert stopped.state == trainer_pb2.JOB_STATE_QUEUED
    step = int(stopped.message.split("checkpoint at step ")[1])
    assert f"resumed from the checkpoint at step {step}" in [e.message for e in events]
    assert _workers_of(long_job.id)
    cancelled = services.client.trainer.CancelTrainingJob(
        trainer_pb2.CancelTrainingJobRequest(job_id=long_job.id)
    ).job
    assert cancelled.state == trainer_pb2.JOB_STATE_CANCELLED
    assert not _workers_of(long_job.id)


def _events_so_far(client: OwnchatClient, job_id: str) -> list[trainer_pb2.JobEvent]:
    """A running job's events up to now (its stream would not end)."""
    events: list[trainer_pb2.JobEvent] = []
    stream = client.trainer.StreamTrainingJobEvents(
        trainer_pb2.StreamTrainingJobEventsRequest(job_id=job_id), timeout=3
    )
    try:
        for response in stream:
            events.append(response.event)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
            raise
    return events
