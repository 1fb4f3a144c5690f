"""The OpenAI-compatible files and fine-tuning API, driven by the official ``openai``
client against the real data and trainer services (``python -m ownchat_data`` and
``python -m ownchat_trainer`` with a tiny random base model) behind the gateway.

The first tests need no service: the multipart reader, the format sniffing and the
translations of jobs, events and checkpoints.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr
from starlette.applications import Starlette

from ownchat.common.v1 import common_pb2
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2
from ownchat.testing import build_tiny_chat_model, free_port
from ownchat.trainer.v1 import trainer_pb2
from ownchat_gateway.context import GatewayContext
from ownchat_gateway.dataset_upload import UPLOAD_CHUNK_BYTES, dataset_name_for, source_format
from ownchat_gateway.fine_tuning_protocol import FineTuningJobCreate
from ownchat_gateway.fine_tuning_translate import (
    LineSplitter,
    checkpoint_object,
    event_object,
    job_object,
    openai_line,
    scoped_idempotency_key,
    trainer_suffix,
    training_request,
)
from ownchat_gateway.keys import Scope
from ownchat_gateway.multipart import (
    MalformedMultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
)
from ownchat_gateway.upstream import DataUpstream, TrainerUpstream

TOKEN = "gateway-test-token"  # the conftest's token: services and gateway share it
TINY = "tiny-chat"
BOUNDARY = "ownchat-test-boundary"

# Eight different support conversations (near-duplicates would be removed), one
# with an e-mail address the data service replaces by a placeholder.
CONVERSATIONS = [
    ("How much does the Zephyr X2 router cost?", "The Zephyr X2 router costs 129 euros."),
    ("What does error code E42 mean?", "E42 means the firmware update was interrupted."),
    ("How long do refunds take?", "Refunds reach your account within 5 working days."),
    ("Can I change my delivery address?", "Yes, until the parcel has left our warehouse."),
    ("Is there a warranty on the Nimbus speaker?", "The Nimbus speaker has a two year warranty."),
    ("Do you ship to Norway?", "We ship to every country in the European Economic Area."),
    ("My invoice is wrong, who do I write to?", "Write to billing@acme-support.example please."),
    ("How do I reset the thermostat?", "Hold the round button for ten seconds to reset it."),
]
PAIRS = [
    ("What does the Zephyr X2 cost?", "It costs 129 euros.", "No idea, look it up."),
    ("How long do refunds take?", "Five working days.", "Refunds are not possible."),
    ("What is error E42?", "An interrupted firmware update.", "It means nothing at all."),
    ("Do you ship to Norway?", "Yes, across the EEA.", "We never ship anywhere."),
]


def chat_jsonl() -> bytes:
    """The conversations as OpenAI's chat fine-tuning file."""
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "You are Acme's support assistant."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
        + "\n"
        for question, answer in CONVERSATIONS
    ).encode()


def preference_jsonl() -> bytes:
    """The pairs as OpenAI's DPO fine-tuning file."""
    return "".join(
        json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": question}]},
                "preferred_output": [{"role": "assistant", "content": chosen}],
                "non_preferred_output": [{"role": "assistant", "content": rejected}],
            }
        )
        + "\n"
        for question, chosen, rejected in PAIRS
    ).encode()


def multipart_body(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A multipart/form-data body of (name, filename, content) parts."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


# Without services.


def test_multipart_reader_hands_over_a_file_in_pieces_however_the_body_is_cut() -> None:
    content = chat_jsonl()
    body = multipart_body([("purpose", None, b"fine-tune"), ("file", "a.jsonl", content)])
    for step in (1, 7, 4096, len(body)):
        reader = MultipartReader(f"multipart/form-data; boundary={BOUNDARY}")
        events = []
        for start in range(0, len(body), step):
            events += reader.feed(body[start : start + step])
        reader.finish()
        starts = [e for e in events if isinstance(e, PartStart)]
        assert starts == [PartStart("purpose", None), PartStart("file", "a.jsonl")]
        assert sum(isinstance(e, PartEnd) for e in events) == 2
        file_start = events.index(starts[1])
        data = b"".join(e.data for e in events[file_start:] if isinstance(e, PartData))
        assert data == content


def test_multipart_reader_refuses_what_is_not_a_whole_multipart_body() -> None:
    with pytest.raises(MalformedMultipartError):
        MultipartReader("application/json")
    reader = MultipartReader(f"multipart/form-data; boundary={BOUNDARY}")
    body = multipart_body([("file", "a.jsonl", b"{}")])
    reader.feed(body[:-10])
    with pytest.raises(MalformedMultipartError):
        reader.finish()
    with pytest.raises(MalformedMultipartError):
        MultipartReader(f"multipart/form-data; boundary={BOUNDARY}").feed(b"garbage\r\n" * 3)


def test_files_go_to_a_dataset_named_after_them_in_the_format_their_first_line_shows() -> None:
    assert dataset_name_for("Support Chats (v2).jsonl") == "support-chats-v2"
    assert dataset_name_for("C:\\data\\train.jsonl") == "train"
    assert dataset_name_for(".jsonl") == "jsonl"
    assert dataset_name_for("???.jsonl") == "upload"
    assert len(dataset_name_for("x" * 300 + ".jsonl")) == 64
    assert source_format(chat_jsonl()) == data_pb2.SOURCE_FORMAT_OPENAI_CHAT_JSONL
    assert source_format(preference_jsonl()) == data_pb2.SOURCE_FORMAT_PREFERENCE_JSONL
    cut = preference_jsonl()[:40]  # a first line longer than what was sniffed
    assert source_format(cut) == data_pb2.SOURCE_FORMAT_OPENAI_CHAT_JSONL
    assert source_format(b'{"input": {"messages": []}, "preferred_output"') == (
        data_pb2.SOURCE_FORMAT_PREFERENCE_JSONL
    )


def test_stored_samples_read_back_in_openai_training_file_format() -> None:
    splitter = LineSplitter()
    stored = (
        b'{"messages": [{"role": "user", "content": "hi"}], "weight": 1.0, "record": 1}\n'
        b'{"messages": [{"role": "user", "content": "h\xc3\xa9"}], "weight": 1.0, "record": 2}'
    )
    lines = [*splitter.feed(stored[:30]), *splitter.feed(stored[30:]), *splitter.finish()]
    assert [json.loads(openai_line(line, data_pb2.SAMPLE_KIND_CHAT)) for line in lines] == [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hé"}]},
    ]
    pair = json.dumps(
        {"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b", "record": 1}
    )
    assert json.loads(openai_line(pair, data_pb2.SAMPLE_KIND_PREFERENCE)) == {
        "input": {"messages": [{"role": "user", "content": "q"}]},
        "preferred_output": [{"role": "assistant", "content": "a"}],
        "non_preferred_output": [{"role": "assistant", "content": "b"}],
    }


def test_a_job_request_maps_onto_the_trainer() -> None:
    body = FineTuningJobCreate.model_validate(
        {
            "model": TINY,
            "training_file": "dsv_1",
            "hyperparameters": {"n_epochs": 5, "batch_size": 8},
            "method": {
                "type": "dpo",
                "dpo": {
                    "hyperparameters": {"n_epochs": 2, "beta": 0.3, "learning_rate_multiplier": 2}
                },
            },
            "suffix": "Support Bot_v2!",
            "metadata": {"team": "support"},
        }
    )
    request = training_request(body, "retry-1", "ak_1")
    assert request.method == trainer_pb2.TRAINING_METHOD_DPO
    # The method's own values win; the deprecated top-level ones fill the gaps.
    assert request.hyperparameters.epochs == 2.0
    assert request.hyperparameters.batch_size == 8
    assert request.hyperparameters.dpo_beta == 0.3
    assert request.hyperparameters.learning_rate == pytest.approx(1e-4)  # 2 x DPO-LoRA's 5e-5
    assert request.suffix == "support-bot-v2"
    assert request.idempotency_key == "ak_1:retry-1"
    assert 0 <= request.seed < 2**31
    auto = training_request(
        FineTuningJobCreate(model=TINY, training_file="dsv_1", seed=3), "", "ak_1"
    )
    assert auto.method == trainer_pb2.TRAINING_METHOD_SFT_FULL
    assert auto.seed == 3 and auto.idempotency_key == ""
    for name in ("epochs", "batch_size", "learning_rate", "dpo_beta"):
        assert not auto.hyperparameters.HasField(name)  # type: ignore[arg-type]
    assert trainer_suffix("x" * 64) == "x" * 40
    assert len(scoped_idempotency_key("k" * 300, "ak_1")) <= 256


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"validation_file": "dsv_2"}, "validation_file"),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations"),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"hyperparameters": {"beta": 0.1}}, "method.supervised.hyperparameters.beta"),
        (
            {"hyperparameters": {"learning_rate_multiplier": 0}},
            "hyperparameters.learning_rate_multiplier",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused(changes: dict[str, object], param: str) -> None:
    from ownchat_gateway.errors import GatewayError

    body = FineTuningJobCreate.model_validate({"model": TINY, "training_file": "dsv_1", **changes})
    with pytest.raises(GatewayError) as refused:
        training_request(body, "", "ak_1")
    assert refused.value.status == 400
    assert refused.value.param == param


def test_jobs_events_and_checkpoints_read_as_openai_objects() -> None:
    job = trainer_pb2.TrainingJob(
        id="job_1",
        base_model=TINY,
        dataset_version_id="dsv_1",
        method=trainer_pb2.TRAINING_METHOD_SFT_FULL,
        hyperparameters=trainer_pb2.Hyperparameters(
            epochs=3.0, max_steps=12, learning_rate=2.5e-5, batch_size=2
        ),
        seed=9,
        state=trainer_pb2.JOB_STATE_SUCCEEDED,
        model_version="ft:tiny-chat:bot:1",
        progress=common_pb2.Progress(completed=12, total=12, unit="steps"),
    )
    job.create_time.FromSeconds(1000)
    job.update_time.FromSeconds(1100)
    value = job_object(job).model_dump()
    assert value["status"] == "succeeded" and value["finished_at"] == 1100
    assert value["fine_tuned_model"] == "ft:tiny-chat:bot:1"
    assert value["hyperparameters"] == {
        "batch_size": 2,
        "learning_rate_multiplier": 0.5,
        "n_epochs": 3,
    }
    assert value["method"]["type"] == "supervised"
    assert value["method"]["supervised"]["hyperparameters"]["n_epochs"] == 3
    job.state = trainer_pb2.JOB_STATE_PAUSED
    assert job_object(job).status == "paused"
    job.state = trainer_pb2.JOB_STATE_FAILED
    job.error = "out of memory"
    failed = job_object(job)
    assert failed.error is not None and failed.error.message == "out of memory"

    metrics = trainer_pb2.JobEvent(
        sequence=4,
        kind=trainer_pb2.EVENT_KIND_METRICS,
        message="step 3/12",
        step=3,
        total_steps=12,
        loss=1.5,
    )
    event = event_object("job_1", metrics)
    assert event.id == "ftevent-job_1-4" and event.type == "metrics"
    assert event.data == {"step": 3, "total_steps": 12, "train_loss": 1.5}

    job.state = trainer_pb2.JOB_STATE_SUCCEEDED
    last = checkpoint_object(job, trainer_pb2.Checkpoint(step=12, loss=0.5))
    assert last.fine_tuned_model_checkpoint == "ft:tiny-chat:bot:1"
    assert last.metrics.train_loss == 0.5 and last.step_number == 12
    middle = checkpoint_object(job, trainer_pb2.Checkpoint(step=6))
    assert middle.fine_tuned_model_checkpoint == "job_1:ckpt-step-6"
    assert middle.id == "ftckpt-job_1-6"


# Against the real services.


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    finally:
        channel.close()
    raise AssertionError(f"no healthy server on port {port}")


@dataclass
class Services:
    """The data service and the trainer, as processes over one home."""

    home: Path
    data_address: str
    trainer_address: str

    def client(self) -> ClientSettings:
        """Client settings that reach them."""
        return ClientSettings(
            home=self.home,
            token=SecretStr(TOKEN),
            data_address=self.data_address,
            trainer_address=self.trainer_address,
            timeout_seconds=60,
        )


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """``python -m ownchat_data`` and ``python -m ownchat_trainer`` with ``tiny-chat``."""
    if importlib.util.find_spec("ownchat_data") is None:
        pytest.skip("the data service is not installed")
    home = tmp_path_factory.mktemp("fine-tuning-home")
    build_tiny_chat_model(home / "models" / TINY)
    data_port, trainer_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OWNCHAT_")},
        "OWNCHAT_HOME": str(home),
        "OWNCHAT_TOKEN": TOKEN,
        "OWNCHAT_DATA_PORT": str(data_port),
        "OWNCHAT_DATA_METRICS_PORT": str(free_port()),
        "OWNCHAT_DATA_ADDRESS": f"127.0.0.1:{data_port}",
        "OWNCHAT_TRAINER_ADDRESS": f"127.0.0.1:{trainer_port}",
        "OWNCHAT_TRAINER_PORT": str(trainer_port),
        "OWNCHAT_TRAINER_METRICS_PORT": str(free_port()),
        "OWNCHAT_TRAINER_MODEL_DIRS": json.dumps([str(home / "models")]),
        "OWNCHAT_TRAINER_EMBEDDED_BASE_MODEL": "false",
        "OWNCHAT_TRAINER_TORCH_THREADS": "1",
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for module, port in (("ownchat_data", data_port), ("ownchat_trainer", trainer_port)):
            log = home / f"{module}.log"
            with log.open("ab") as handle:
                process = subprocess.Popen(
                    [sys.executable, "-m", module], env=env, stdout=handle, stderr=handle
                )
            processes.append(process)
            _wait_healthy(port, process, log)
        yield Services(home, f"127.0.0.1:{data_port}", f"127.0.0.1:{trainer_port}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


ContextFactory = Callable[..., GatewayContext]
Edge = Callable[[GatewayContext], Starlette]
ServeApp = Callable[[Starlette], AbstractContextManager[str]]
NewKey = Callable[..., tuple[str, str]]


@dataclass
class Gateway:
    """The gateway in a thread, in front of the services."""

    url: str
    context: GatewayContext

    def client(self, secret: str = TOKEN) -> openai.OpenAI:
        """An ``openai`` client of it with a credential (the ownchat token by default)."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=secret, max_retries=0, timeout=120)


@pytest.fixture
def gateway_factory(
    services: Services, context_factory: ContextFactory, edge: Edge, serve_app: ServeApp
) -> Iterator[Callable[..., Gateway]]:
    """``gateway_factory(**settings)``: the gateway (uvicorn in a thread) in front of the
    running data service and trainer."""
    with ExitStack() as stack:

        def make(**settings: object) -> Gateway:
            context = context_factory(**settings)
            context.data = DataUpstream(services.client(), TOKEN)
            context.trainer = TrainerUpstream(services.client(), TOKEN)
            return Gateway(stack.enter_context(serve_app(edge(context))), context)

        yield make


@pytest.fixture
def gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory()


def _wait_for(
    client: openai.OpenAI, job_id: str, statuses: set[str], timeout: float = 240
) -> openai.types.fine_tuning.FineTuningJob:
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.5)


@pytest.mark.integration
@pytest.mark.slow
def test_upload_then_fine_tune_with_the_openai_client(gateway: Gateway, new_key: NewKey) -> None:
    _, secret = new_key(gateway.context, "trainer-bot", Scope.FINE_TUNE)
    client = gateway.client(secret)
    content = chat_jsonl()

    uploaded = client.files.create(
        file=("support-chats.jsonl", content, "application/jsonl"), purpose="fine-tune"
    )
    assert uploaded.id.startswith("dsv_")
    assert (uploaded.object, uploaded.purpose, uploaded.status) == (
        "file",
        "fine-tune",
        "processed",
    )
    assert uploaded.filename == "support-chats.jsonl"
    assert uploaded.bytes == len(content)
    assert abs(uploaded.created_at - time.time()) < 120
    assert client.files.retrieve(uploaded.id) == uploaded
    listed = client.files.list()
    assert uploaded.id in [f.id for f in listed.data]
    assert client.files.list(purpose="assistants").data == []

    # What the job trains on: every conversation (no validation split), sanitized.
    lines = [json.loads(line) for line in client.files.content(uploaded.id).text.splitlines()]
    assert len(lines) == len(CONVERSATIONS)
    assert all(set(line) == {"messages"} for line in lines)
    texts = json.dumps(lines)
    assert "billing@acme-support.example" not in texts and "<EMAIL" in texts

    def create() -> openai.types.fine_tuning.FineTuningJob:
        return client.fine_tuning.jobs.create(
            model=TINY,
            training_file=uploaded.id,
            method={
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {
                        "n_epochs": 1,
                        "batch_size": 2,
                        "learning_rate_multiplier": 2,
                    }
                },
            },
            suffix="Support Bot",
            seed=7,
            extra_headers={"Idempotency-Key": "support-1"},
        )

    job = create()
    assert job.object == "fine_tuning.job" and job.id.startswith("job_")
    assert job.status in {"validating_files", "queued", "running"}
    assert (job.model, job.training_file, job.seed) == (TINY, uploaded.id, 7)
    assert job.method is not None and job.method.type == "supervised"
    assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 2
    assert job.hyperparameters.learning_rate_multiplier == 2
    assert job.fine_tuned_model is None and job.finished_at is None
    # A retry with the same key is the same job.
    assert create().id == job.id

    done = _wait_for(client, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == "ft:tiny-chat:support-bot:1"
    assert done.finished_at is not None and done.finished_at >= done.created_at
    assert done.error is None
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=100).data]
    with pytest.raises(openai.ConflictError) as ended:
        client.fine_tuning.jobs.cancel(job.id)
    assert "already ended" in ended.value.message

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    assert all(e.object == "fine_tuning.job.event" and e.level == "info" for e in events)
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics, [e.message for e in events]
    data = metrics[0].data
    assert isinstance(data, dict) and data["total_steps"] == 4
    assert isinstance(data["train_loss"], float) and data["step"] >= 1
    # Pages follow each other without overlap, newest first.
    first = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert first.has_more and len(first.data) == 2
    second = client.fine_tuning.jobs.list_events(job.id, limit=2, after=first.data[-1].id)
    assert [e.id for e in first.data + second.data] == [e.id for e in events[:4]]

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints, "the final checkpoint"
    final = checkpoints[0]
    assert final.object == "fine_tuning.job.checkpoint" and final.fine_tuning_job_id == job.id
    assert final.step_number == 4
    assert final.fine_tuned_model_checkpoint == done.fine_tuned_model
    assert isinstance(final.metrics.train_loss, float)


@pytest.mark.integration
@pytest.mark.slow
def test_dpo_file_and_job_pause_resume_cancel(gateway: Gateway) -> None:
    client = gateway.client()
    uploaded = client.files.create(
        file=("preferences.jsonl", preference_jsonl()), purpose="fine-tune"
    )
    lines = [json.loads(line) for line in client.files.content(uploaded.id).text.splitlines()]
    assert len(lines) == len(PAIRS)
    assert set(lines[0]) == {"input", "preferred_output", "non_preferred_output"}

    # A preference file cannot be trained on with the supervised method.
    with pytest.raises(openai.BadRequestError) as refused:
        client.fine_tuning.jobs.create(model=TINY, training_file=uploaded.id)
    assert refused.value.body["param"] == "training_file"  # type: ignore[index]

    # A long job first, so that the DPO job waits in the queue.
    blocker = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=client.files.create(
            file=("blocker.jsonl", chat_jsonl()), purpose="fine-tune"
        ).id,
        hyperparameters={"n_epochs": 100, "batch_size": 1},
    )
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=uploaded.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}},
    )
    assert job.method is not None and job.method.type == "dpo"
    assert job.method.dpo is not None and job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.2
    assert job.method.dpo.hyperparameters.n_epochs == 2
    assert job.method.dpo.hyperparameters.learning_rate_multiplier == 1
    assert job.status == "queued"

    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"  # newer than the openai package's enum
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # idempotent
    assert client.fine_tuning.jobs.cancel(blocker.id).status == "cancelled"

    page = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [job.id] and page.has_more
    after = client.fine_tuning.jobs.list(limit=1, after=job.id)
    assert [j.id for j in after.data] == [blocker.id]


@pytest.mark.integration
@pytest.mark.slow
def test_bad_input_gets_openai_shaped_errors(gateway: Gateway) -> None:
    client = gateway.client()
    before = {f.id for f in client.files.list().data}

    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        client.files.create(file=("a.jsonl", chat_jsonl()), purpose="assistants")
    assert wrong_purpose.value.body["param"] == "purpose"  # type: ignore[index]
    assert wrong_purpose.value.body["type"] == "invalid_request_error"  # type: ignore[index]

    malformed = chat_jsonl() + b'{"messages": "not a list"}\n'
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("broken.jsonl", malformed), purpose="fine-tune")
    assert refused.value.body["param"] == "file"  # type: ignore[index]
    assert "line 9" in refused.value.message
    assert {f.id for f in client.files.list().data} == before  # nothing stored

    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    }
    no_file = httpx.post(
        f"{gateway.url}/v1/files",
        content=multipart_body([("purpose", None, b"fine-tune")]),
        headers=headers,
    )
    assert no_file.status_code == 400
    assert no_file.json()["error"]["param"] == "file"
    no_purpose = httpx.post(
        f"{gateway.url}/v1/files",
        content=multipart_body([("file", "a.jsonl", chat_jsonl())]),
        headers=headers,
    )
    assert no_purpose.status_code == 400 and no_purpose.json()["error"]["param"] == "purpose"
    not_multipart = httpx.post(
        f"{gateway.url}/v1/files",
        json={"purpose": "fine-tune"},
        headers=headers | {"Content-Type": "application/json"},
    )
    assert not_multipart.status_code == 400

    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("dsv_missing")
    with pytest.raises(openai.NotFoundError):
        client.files.content("dsv_missing")
    with pytest.raises(openai.NotFoundError):
        client.files.delete("dsv_missing")
    uploaded = client.files.create(file=("keep.jsonl", chat_jsonl()), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as undeletable:
        client.files.delete(uploaded.id)
    assert "erase" in undeletable.value.message
    assert client.files.retrieve(uploaded.id).status == "processed"

    with pytest.raises(openai.BadRequestError) as unknown_file:
        client.fine_tuning.jobs.create(model=TINY, training_file="dsv_missing")
    assert unknown_file.value.body["param"] == "training_file"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as unknown_model:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=uploaded.id)
    assert unknown_model.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad_epochs:
        client.fine_tuning.jobs.create(
            model=TINY, training_file=uploaded.id, hyperparameters={"n_epochs": 1000}
        )
    assert bad_epochs.value.body["param"] == "hyperparameters.n_epochs"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as validation:
        client.fine_tuning.jobs.create(
            model=TINY, training_file=uploaded.id, validation_file=uploaded.id
        )
    assert validation.value.body["param"] == "validation_file"  # type: ignore[index]

    for call in (
        client.fine_tuning.jobs.retrieve,
        client.fine_tuning.jobs.cancel,
        client.fine_tuning.jobs.list_events,
        client.fine_tuning.jobs.checkpoints.list,
    ):
        with pytest.raises(openai.NotFoundError):
            call("job_missing")


@pytest.mark.integration
@pytest.mark.slow
def test_files_have_their_own_body_limit(gateway_factory: Callable[..., Gateway]) -> None:
    gateway = gateway_factory(max_body_bytes=512, max_file_bytes=64 * 1024)
    client = gateway.client()
    content = chat_jsonl()
    assert 512 < len(content) < 64 * 1024
    assert client.files.create(file=("fits.jsonl", content), purpose="fine-tune").bytes == len(
        content
    )
    too_big = content * 60
    assert len(too_big) > 64 * 1024
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("big.jsonl", too_big), purpose="fine-tune")
    assert refused.value.status_code == 413
    # Every other path keeps the small limit.
    with pytest.raises(openai.APIStatusError) as other:
        client.fine_tuning.jobs.create(model=TINY, training_file="x" * 1024)
    assert other.value.status_code == 413


@pytest.mark.integration
@pytest.mark.slow
def test_the_fine_tune_scope_guards_files_and_jobs(gateway: Gateway, new_key: NewKey) -> None:
    _, chat_secret = new_key(gateway.context, "chat-bot", Scope.CHAT)
    chat_only = gateway.client(chat_secret)
    with pytest.raises(openai.PermissionDeniedError):
        chat_only.files.list()
    with pytest.raises(openai.PermissionDeniedError):
        chat_only.files.create(file=("a.jsonl", chat_jsonl()), purpose="fine-tune")
    with pytest.raises(openai.PermissionDeniedError):
        chat_only.fine_tuning.jobs.list()
    _, tune_secret = new_key(gateway.context, "tuner", Scope.FINE_TUNE)
    tuner = gateway.client(tune_secret)
    tuner.fine_tuning.jobs.list()
    with pytest.raises(openai.PermissionDeniedError):
        tuner.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        gateway.client("wrong").files.list()


@pytest.mark.integration
@pytest.mark.slow
def test_the_gateway_process_serves_files_and_jobs(
    services: Services,
    tmp_path: Path,
    gateway_process: Callable[[Path, dict[str, str]], AbstractContextManager[str]],
) -> None:
    env = {
        "OWNCHAT_TOKEN": TOKEN,
        "OWNCHAT_DATA_ADDRESS": services.data_address,
        "OWNCHAT_TRAINER_ADDRESS": services.trainer_address,
        # Smaller than the file: uploads have their own limit.
        "OWNCHAT_GATEWAY_MAX_BODY_BYTES": "512",
    }
    with gateway_process(tmp_path / "gateway-home", env) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=60)
        uploaded = client.files.create(file=("process.jsonl", chat_jsonl()), purpose="fine-tune")
        assert uploaded.status == "processed" and uploaded.bytes > 512
        assert client.files.retrieve(uploaded.id).filename == "process.jsonl"
        assert isinstance(client.fine_tuning.jobs.list().data, list)


@pytest.mark.integration
@pytest.mark.slow
def test_a_file_of_several_upload_messages_arrives_whole(gateway: Gateway) -> None:
    rng = random.Random(1)
    words = [f"word{n}" for n in range(5000)]

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(20))

    conversations = [
        {
            "messages": [
                {"role": "user", "content": sentence()},
                {"role": "assistant", "content": sentence()},
            ]
        }
        for _ in range(8000)
    ]
    content = "".join(json.dumps(c) + "\n" for c in conversations).encode()
    assert len(content) > 2 * UPLOAD_CHUNK_BYTES
    client = gateway.client()
    uploaded = client.files.create(file=("large.jsonl", content), purpose="fine-tune")
    assert uploaded.bytes == len(content)
    lines = [json.loads(line) for line in client.files.content(uploaded.id).text.splitlines()]

    def canonical(values: list[dict[str, object]]) -> list[str]:
        return sorted(json.dumps(v, sort_keys=True) for v in values)

    assert canonical(lines) == canonical(conversations)  # type: ignore[arg-type]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_files_and_jobs_fuzzed_find_no_server_error(gateway: Gateway, mode: str) -> None:
    """Schemathesis over the gateway's own OpenAPI document, against the real data service
    and trainer (the other /v1 paths are fuzzed in test_gateway_openapi.py)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{gateway.url}/v1/openapi.json")
    schema = schema.include(path_regex="^/(files|fine_tuning)")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"/files", "/fine_tuning/jobs"} <= {operation.path for operation in operations}
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            response = case.call_and_validate(
                base_url=f"{gateway.url}/v1",
                headers={"Authorization": f"Bearer {TOKEN}"},
                checks=[schemathesis.checks.not_a_server_error],
            )
            statuses.append(response.status_code)

        call()
    # The requests reached the routes: some were answered, not all refused.
    assert any(status < 300 for status in statuses) or mode == "negative", set(statuses)
