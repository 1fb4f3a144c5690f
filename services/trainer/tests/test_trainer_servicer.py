"""TrainerService over a real in-process gRPC server, with the shared interceptor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from ownchat.artifacts import ArtifactStore
from ownchat.client import open_channel
from ownchat.config import ClientSettings
from ownchat.errors import describe_rpc_error
from ownchat.interceptors import ServerInterceptor
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from ownchat_trainer.core import JobRequest, TrainerCore
from ownchat_trainer.records import ModelKind
from ownchat_trainer.servicer import TrainerServicer

TOKEN = "test-token"
CoreFactory = Callable[..., TrainerCore]


@pytest.fixture
def core(make_core: CoreFactory) -> TrainerCore:
    return make_core()


@pytest.fixture
def stub(core: TrainerCore, tmp_path: Path) -> Iterator[trainer_pb2_grpc.TrainerServiceStub]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), interceptors=[ServerInterceptor(TOKEN)]
    )
    trainer_pb2_grpc.add_TrainerServiceServicer_to_server(TrainerServicer(core), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = open_channel(f"127.0.0.1:{port}", ClientSettings(home=tmp_path), TOKEN)
    yield trainer_pb2_grpc.TrainerServiceStub(channel)
    channel.close()
    server.stop(None)


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()  # type: ignore[attr-defined, no-any-return]


def test_a_job_over_grpc_from_request_to_registered_model(
    stub: trainer_pb2_grpc.TrainerServiceStub, artifacts: ArtifactStore
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateTrainingJob(
            trainer_pb2.CreateTrainingJobRequest(
                base_model="tiny-chat",
                dataset_version_id="dsv_small",
                method=99,  # type: ignore[arg-type]  # a method from a newer client
                hyperparameters=trainer_pb2.Hyperparameters(batch_size=0),
            )
        )
    described = describe_rpc_error(caught.value)
    assert described.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in described.violations} == {"method", "hyperparameters.batch_size"}
    assert described.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        _code(
            lambda: stub.CreateTrainingJob(
                trainer_pb2.CreateTrainingJobRequest(
                    base_model="missing", dataset_version_id="dsv_small"
                )
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )

    request = trainer_pb2.CreateTrainingJobRequest(
        base_model="tiny-chat",
        dataset_version_id="dsv_small",
        hyperparameters=trainer_pb2.Hyperparameters(max_steps=3, batch_size=2),
        suffix="grpc",
        idempotency_key="k1",
    )
    job = stub.CreateTrainingJob(request).job
    assert job.id.startswith("job_")
    assert job.state == trainer_pb2.JOB_STATE_QUEUED
    assert job.hyperparameters.HasField("learning_rate")
    assert job.hyperparameters.learning_rate == pytest.approx(5e-5)
    assert job.method == trainer_pb2.TRAINING_METHOD_SFT_FULL
    assert stub.CreateTrainingJob(request).job.id == job.id

    stream = stub.StreamTrainingJobEvents(
        trainer_pb2.StreamTrainingJobEventsRequest(job_id=job.id), timeout=120
    )
    events = [response.event for response in stream]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].kind == trainer_pb2.EVENT_KIND_STATE
    assert events[-1].state == trainer_pb2.JOB_STATE_SUCCEEDED
    metrics = [e for e in events if e.kind == trainer_pb2.EVENT_KIND_METRICS]
    assert [m.step for m in metrics] == [1, 2, 3]
    assert all(m.HasField("loss") and m.HasField("tokens_per_second") for m in metrics)
    assert metrics[-1].HasField("validation_loss")
    assert not metrics[0].HasField("validation_loss")

    tail = stub.StreamTrainingJobEvents(
        trainer_pb2.StreamTrainingJobEventsRequest(
            job_id=job.id, after_sequence=events[-2].sequence
        ),
        timeout=10,
    )
    assert [r.event.sequence for r in tail] == [events[-1].sequence]

    finished = stub.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=job.id)).job
    assert finished.state == trainer_pb2.JOB_STATE_SUCCEEDED
    assert finished.model_version == "ft:tiny-chat:grpc:1"
    assert (finished.progress.completed, finished.progress.total) == (3, 3)
    assert finished.device == "cpu"

    model = stub.GetModel(trainer_pb2.GetModelRequest(model_id=finished.model_version)).model
    assert model.kind == trainer_pb2.MODEL_KIND_FULL
    assert model.base_model == "tiny-chat" and model.job_id == job.id
    assert set(model.metrics) == {"train_loss", "validation_loss"}
    assert (artifacts.path(model.artifact.digest) / "model.safetensors").is_file()

    listed = stub.ListModels(trainer_pb2.ListModelsRequest()).models
    assert [m.id for m in listed] == [finished.model_version, "tiny-chat"]
    assert listed[1].kind == trainer_pb2.MODEL_KIND_BASE
    page = stub.ListModels(trainer_pb2.ListModelsRequest(page_size=1))
    assert len(page.models) == 1 and page.next_page_token
    jobs = stub.ListTrainingJobs(trainer_pb2.ListTrainingJobsRequest()).jobs
    assert [j.id for j in jobs] == [job.id]
    [checkpoint] = stub.ListCheckpoints(
        trainer_pb2.ListCheckpointsRequest(job_id=job.id)
    ).checkpoints
    assert checkpoint.step == 3 and checkpoint.artifact.digest == model.artifact.digest

    assert (
        _code(lambda: stub.CancelTrainingJob(trainer_pb2.CancelTrainingJobRequest(job_id=job.id)))
        == grpc.StatusCode.FAILED_PRECONDITION
    )


def test_errors(stub: trainer_pb2_grpc.TrainerServiceStub) -> None:
    missing = trainer_pb2.GetTrainingJobRequest(job_id="job_missing")
    assert _code(lambda: stub.GetTrainingJob(missing)) == grpc.StatusCode.NOT_FOUND
    assert (
        _code(lambda: stub.GetModel(trainer_pb2.GetModelRequest(model_id="ft:nope::1")))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        _code(
            lambda: list(
                stub.StreamTrainingJobEvents(
                    trainer_pb2.StreamTrainingJobEventsRequest(job_id="job_missing")
                )
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    for call in (
        lambda: stub.PauseTrainingJob(trainer_pb2.PauseTrainingJobRequest(job_id="job_x")),
        lambda: stub.ResumeTrainingJob(trainer_pb2.ResumeTrainingJobRequest(job_id="job_x")),
        lambda: stub.MergeAdapter(trainer_pb2.MergeAdapterRequest(model_id="ft:x::1")),
    ):
        assert _code(call) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        stub.MergeAdapter(trainer_pb2.MergeAdapterRequest(model_id="tiny-chat"))
    described = describe_rpc_error(caught.value)
    assert described.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in described.violations] == ["model_id"]
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateTrainingJob(
            trainer_pb2.CreateTrainingJobRequest(
                base_model="tiny-chat",
                dataset_version_id="dsv_small",
                method=trainer_pb2.TRAINING_METHOD_DPO,
                hyperparameters=trainer_pb2.Hyperparameters(dpo_beta=0.0),
            )
        )
    described = describe_rpc_error(caught.value)
    assert described.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in described.violations} == {
        "dataset_version_id",
        "hyperparameters.dpo_beta",
    }


def test_pause_resume_and_cancel_over_grpc(stub: trainer_pb2_grpc.TrainerServiceStub) -> None:
    job = stub.CreateTrainingJob(
        trainer_pb2.CreateTrainingJobRequest(
            base_model="tiny-chat",
            dataset_version_id="dsv_small",
            method=trainer_pb2.TRAINING_METHOD_SFT_LORA,
            hyperparameters=trainer_pb2.Hyperparameters(max_steps=1_000_000, lora_rank=8),
        )
    ).job
    assert job.method == trainer_pb2.TRAINING_METHOD_SFT_LORA
    assert (job.hyperparameters.lora_rank, job.hyperparameters.lora_alpha) == (8, 16.0)
    assert not job.hyperparameters.HasField("dpo_beta")
    stream = stub.StreamTrainingJobEvents(
        trainer_pb2.StreamTrainingJobEventsRequest(job_id=job.id), timeout=120
    )
    for response in stream:
        if response.event.kind == trainer_pb2.EVENT_KIND_METRICS:
            break
    stream.cancel()
    paused = stub.PauseTrainingJob(trainer_pb2.PauseTrainingJobRequest(job_id=job.id)).job
    assert paused.state == trainer_pb2.JOB_STATE_PAUSED
    [checkpoint] = stub.ListCheckpoints(
        trainer_pb2.ListCheckpointsRequest(job_id=job.id)
    ).checkpoints
    assert checkpoint.step == paused.progress.completed and checkpoint.HasField("loss")
    resumed = stub.ResumeTrainingJob(trainer_pb2.ResumeTrainingJobRequest(job_id=job.id)).job
    assert resumed.state in (trainer_pb2.JOB_STATE_QUEUED, trainer_pb2.JOB_STATE_RUNNING)
    cancelled = stub.CancelTrainingJob(trainer_pb2.CancelTrainingJobRequest(job_id=job.id)).job
    assert cancelled.state == trainer_pb2.JOB_STATE_CANCELLED
    assert (
        _code(lambda: stub.ResumeTrainingJob(trainer_pb2.ResumeTrainingJobRequest(job_id=job.id)))
        == grpc.StatusCode.FAILED_PRECONDITION
    )


def test_an_adapter_is_reported_as_one(
    stub: trainer_pb2_grpc.TrainerServiceStub, core: TrainerCore
) -> None:
    job = core.create_job(JobRequest("tiny-chat", "dsv_small"))
    core.cancel_job(job.id)
    adapter, _ = core._store.register_version(
        job,
        "tiny-chat",
        core.get_model("tiny-chat").artifact,
        {"train_loss": 1.5},
        "{model}",
        kind=ModelKind.LORA_ADAPTER,
        base_model="tiny-chat",
    )
    model = stub.GetModel(trainer_pb2.GetModelRequest(model_id=adapter.id)).model
    assert model.kind == trainer_pb2.MODEL_KIND_LORA_ADAPTER
    assert (model.base_model, model.job_id) == ("tiny-chat", job.id)
    # Its files are not an adapter's: the merge fails with the reason, nothing is registered.
    with pytest.raises(grpc.RpcError) as caught:
        stub.MergeAdapter(trainer_pb2.MergeAdapterRequest(model_id=adapter.id), timeout=120)
    described = describe_rpc_error(caught.value)
    assert described.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "merging the adapter failed" in described.message
    assert (
        _code(lambda: stub.GetModel(trainer_pb2.GetModelRequest(model_id=adapter.id + ":merged")))
        == grpc.StatusCode.NOT_FOUND
    )


class _GoneAfter:
    """A servicer context whose client leaves after a number of checks."""

    def __init__(self, checks: int) -> None:
        self.checks = checks

    def is_active(self) -> bool:
        self.checks -= 1
        return self.checks >= 0


def test_the_event_stream_stops_when_its_client_leaves(make_core: CoreFactory) -> None:
    core = make_core(start=False)  # nothing runs: the job stays queued
    job = core.create_job(JobRequest("tiny-chat", "dsv_small"))
    servicer = TrainerServicer(core)  # type: ignore[abstract]
    stream = servicer.StreamTrainingJobEvents(
        trainer_pb2.StreamTrainingJobEventsRequest(job_id=job.id),
        _GoneAfter(2),  # type: ignore[arg-type]
    )
    sent = [response.event.sequence for response in stream]
    # Validated, the note on lengths, queued; then the client is gone.
    assert sent == [1, 2, 3]
