"""The whole path through all five real services, on a CPU, with SmolLM2.

`ownchat up` starts data, trainer, evaluator, serving (vLLM) and the gateway as
processes; the CLI ingests the sample data, fine-tunes SmolLM2-135M-Instruct for
a few steps, measures perplexity and deploys the new version; the official
OpenAI client asks it a question through the gateway. Along the way: every
server answers health without a token and refuses calls without one, a
malformed upload names its bad line and stores nothing, and Ctrl-C at the end
leaves no process behind.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import openai
import pytest
from process_tree import children_of, processes_with_env, sessions_alive
from test_up import wait_for_line

from ownchat.cli.supervisor import grpc_health, http_ready
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from ownchat.serving.v1 import serving_pb2, serving_pb2_grpc
from ownchat.trainer.v1 import trainer_pb2, trainer_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "support" / "conversations.jsonl"
OWNCHAT = str(Path(sys.executable).with_name("ownchat"))


def cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OWNCHAT, *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def unauthenticated_calls(env: dict[str, str]) -> dict[str, grpc.StatusCode]:
    """Each service's answer to a call without the token."""
    calls = {
        "data": lambda c: data_pb2_grpc.DataServiceStub(c).ListDatasets(
            data_pb2.ListDatasetsRequest(), timeout=10
        ),
        "trainer": lambda c: trainer_pb2_grpc.TrainerServiceStub(c).ListTrainingJobs(
            trainer_pb2.ListTrainingJobsRequest(), timeout=10
        ),
        "evaluator": lambda c: evaluator_pb2_grpc.EvaluatorServiceStub(c).ListEvalRuns(
            evaluator_pb2.ListEvalRunsRequest(), timeout=10
        ),
        "serving": lambda c: serving_pb2_grpc.ServingServiceStub(c).ListDeployments(
            serving_pb2.ListDeploymentsRequest(), timeout=10
        ),
    }
    codes = {}
    for service, call in calls.items():
        with grpc.insecure_channel(env[f"OWNCHAT_{service.upper()}_ADDRESS"]) as channel:
            try:
                call(channel)
                codes[service] = grpc.StatusCode.OK
            except grpc.RpcError as error:
                codes[service] = error.code()
    return codes


def review_items(env: dict[str, str], token: str) -> int:
    """How many items the review queue holds, in any state."""
    with grpc.insecure_channel(env["OWNCHAT_EVALUATOR_ADDRESS"]) as channel:
        stats = evaluator_pb2_grpc.EvaluatorServiceStub(channel).GetReviewStats(
            evaluator_pb2.GetReviewStatsRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    return sum(row.open_items + row.leased_items + row.done_items for row in stats.counts)


def wait_for_review_items(env: dict[str, str], token: str, timeout: float = 60) -> int:
    """The queue's item count once it is not zero: the gateway captures after the reply."""
    deadline = time.monotonic() + timeout
    while (count := review_items(env, token)) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    return count


def stored_artifacts(env: dict[str, str]) -> set[str]:
    objects = Path(env["OWNCHAT_HOME"]) / "artifacts" / "sha256"
    return {p.name for p in objects.iterdir()} if objects.exists() else set()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_engine(request: pytest.FixtureRequest, ownchat_env: dict[str, str]) -> str:
    """Runs the path with every service's stores in SQLite files, then in PostgreSQL
    (a database per service on one real server)."""
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        for service in ("data", "trainer", "evaluator", "serving", "gateway"):
            ownchat_env[f"OWNCHAT_{service.upper()}_DATABASE_URL"] = server.create_database(service)
    return str(request.param)


def test_the_whole_path_through_every_service(
    ownchat_env: dict[str, str], store_engine: str, tmp_path: Path
):
    env = ownchat_env
    up = subprocess.Popen(
        [OWNCHAT, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sessions: set[int] = set()
    try:
        wait_for_line(up, "all services up", timeout=600)
        sessions = children_of(up.pid)
        assert len(sessions) == 5

        # Health answers without a token; everything else demands it.
        for service in ("data", "trainer", "evaluator", "serving"):
            assert grpc_health(env[f"OWNCHAT_{service.upper()}_ADDRESS"]) == "SERVING"
        assert http_ready(env["OWNCHAT_GATEWAY_URL"]) == "SERVING"
        assert set(unauthenticated_calls(env).values()) == {grpc.StatusCode.UNAUTHENTICATED}
        body = {"model": "", "messages": [{"role": "user", "content": "hi"}]}
        request = urllib.request.Request(
            f"{env['OWNCHAT_GATEWAY_URL']}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401

        # A malformed upload names its bad line and stores nothing.
        lines = SAMPLE.read_text().splitlines()[:5]
        lines[2] = '{"messages": [{"role": "user", "content": "no answer"}'
        bad = tmp_path / "bad.jsonl"
        bad.write_text("\n".join(lines) + "\n")
        before = stored_artifacts(env)
        rejected = cli(env, "data", "ingest", str(bad), "--dataset", "support")
        assert rejected.returncode == 1
        assert "INVALID_ARGUMENT" in rejected.stderr and "line 3" in rejected.stderr
        assert stored_artifacts(env) == before
        assert "support" not in cli(env, "data", "list").stdout

        # Ingest, fine-tune, evaluate, deploy: through the CLI.
        ingested = cli(
            env, "data", "ingest", str(SAMPLE), "--dataset", "support",
            "--base", "smollm2-135m-instruct",
        )  # fmt: skip
        assert ingested.returncode == 0, ingested.stderr
        assert "tokens with smollm2-135m-instruct's template" in ingested.stdout
        version = re.search(r"dsv_[0-9a-f]+", ingested.stdout)
        assert version, ingested.stdout
        exported = cli(
            env, "data", "export", version.group(), "-o", str(tmp_path / "train.jsonl")
        )  # fmt: skip
        assert exported.returncode == 0, exported.stderr
        train_lines = (tmp_path / "train.jsonl").read_text().splitlines()
        assert train_lines and all(json.loads(line)["messages"] for line in train_lines)

        trained = cli(
            env,
            "train", "create",
            "--dataset-version", version.group(),
            "--max-steps", "3",
            "--batch-size", "2",
            "--max-seq-length", "256",
            "--suffix", "e2e",
        )  # fmt: skip
        assert trained.returncode == 0, trained.stdout + trained.stderr
        model = re.search(r"ft:smollm2-135m-instruct:e2e:\d+", trained.stdout)
        assert model, trained.stdout

        evaluated = cli(
            env, "eval", "run", "--model", model.group(),
            "--dataset-version", version.group(), "--max-samples", "6",
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
        perplexity = re.search(r"perplexity ([0-9.]+)", evaluated.stdout)
        assert perplexity and 1.0 < float(perplexity.group(1)) < 1000

        deployed = cli(env, "deploy", model.group())
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr

        # The official OpenAI client, through the gateway, to vLLM.
        token = (Path(env["OWNCHAT_HOME"]) / "token").read_text().strip()
        client = openai.OpenAI(base_url=f"{env['OWNCHAT_GATEWAY_URL']}/v1", api_key=token)
        started = time.monotonic()
        completion = client.chat.completions.create(
            model=model.group(),
            messages=[{"role": "user", "content": "How much does the Zephyr X2 router cost?"}],
            max_tokens=24,
            temperature=0,
        )
        assert time.monotonic() - started < 120
        assert completion.model == model.group()
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.completion_tokens > 0

        # A chat the gateway captures (scrubbed, then queued for review) that names
        # what will be erased: the erasure must reach it too.
        client.chat.completions.create(
            model=model.group(),
            messages=[{"role": "user", "content": "Does care plus cover the Zephyr X2?"}],
            max_tokens=8,
            temperature=0,
            store=True,
        )
        assert wait_for_review_items(env, token) == 1

        # Right to erasure follows lineage: the model trained on the erased data
        # is blocked in the trainer's registry and refused by deploy.
        erased = cli(env, "data", "erase", "--dataset", "support", "--value", "Care Plus")
        assert erased.returncode == 0, erased.stdout + erased.stderr
        assert version.group() in erased.stdout
        assert model.group() in erased.stdout
        assert "removed 1 captured chat(s)" in erased.stdout
        assert "removed 1 review item(s)" in erased.stdout
        assert re.search(r"removed \d+ evaluation sample output\(s\)", erased.stdout)
        assert review_items(env, token) == 0
        redeployed = cli(env, "deploy", model.group())
        assert redeployed.returncode == 1
        assert "FAILED_PRECONDITION" in redeployed.stderr
        assert "erasure_" in redeployed.stderr
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                up.kill()
    assert up.returncode == 0
    assert sessions_alive(sessions) == []
    assert processes_with_env("OWNCHAT_HOME", env["OWNCHAT_HOME"]) == []
    # The stores' files (Prometheus' multiprocess files are .db files too).
    store_files = {"data.db", "trainer.db", "evaluator.db", "reviews.db", "serving.db"}
    store_files |= {"gateway.db", "captured.db"}
    home = Path(env["OWNCHAT_HOME"])
    stores_on_disk = sorted(p.name for p in home.rglob("*.db") if p.name in store_files)
    if store_engine == "postgresql":
        # Every store went to PostgreSQL: no service fell back to a SQLite file.
        assert stores_on_disk == []
    else:
        assert "data.db" in stores_on_disk and "trainer.db" in stores_on_disk
