"""``ownchat eval`` against a real evaluator and data service on loopback (tiny models):
run with chosen metrics, compare (reusing runs), report files, the gate, the queue.

The dataset's samples carry expected answers in chat JSONL, so a task-accuracy
run needing no run check also shows that the data service stores them in the
form the evaluator reads.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner, Result

from ownchat.artifacts import ArtifactStore
from ownchat.cli.main import app
from ownchat.common.v1 import common_pb2
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2, data_pb2_grpc
from ownchat.errors import NotFoundError
from ownchat.evaluator.v1 import evaluator_pb2, evaluator_pb2_grpc
from ownchat.interceptors import ServerInterceptor
from ownchat.testing import build_tiny_chat_model
from ownchat_evaluator.core import EvaluatorCore, RunOptions
from ownchat_evaluator.curves import LossCurve, LossPoint, base_model_curve, curve_from_points
from ownchat_evaluator.gate import GateThresholds
from ownchat_evaluator.lookups import ValidationSplits
from ownchat_evaluator.review.core import ReviewQueue
from ownchat_evaluator.review.data_client import DataServiceFeedback
from ownchat_evaluator.review.rpcs import ReviewRpcs
from ownchat_evaluator.review.store import ReviewStore
from ownchat_evaluator.servicer import EvaluatorServicer
from ownchat_evaluator.store import EvalStore

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ownchat_data") is None, reason="the data service is not installed"
)

TOKEN = "test-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PRICES = [(f"plan {name}", 10 + 3 * i) for i, name in enumerate("ABCDEFGHIJKL")]


@dataclass
class World:
    """A data service and an evaluator, and the environment the CLI needs to reach them."""

    env: dict[str, str]
    dataset_version_id: str


def _curves(model_id: str) -> LossCurve:
    if model_id == "tiny-b":
        return curve_from_points(model_id, "job_1", [LossPoint(s, 6.0 - s) for s in range(1, 5)])
    return base_model_curve(model_id)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from ownchat_data.core import DataCore
    from ownchat_data.servicer import DataServicer
    from ownchat_data.store import DataStore

    root = tmp_path_factory.mktemp("cli")
    models = {
        "tiny-a": build_tiny_chat_model(root / "a", seed=0),
        "tiny-b": build_tiny_chat_model(root / "b", seed=1),
    }

    def model_dir(model_id: str) -> Path:
        if model_id not in models:
            raise NotFoundError("model", model_id)
        return models[model_id]

    artifacts = ArtifactStore(root / "artifacts")
    data_store = DataStore(root / "data.db")
    data_core = DataCore(data_store, artifacts, max_upload_bytes=1 << 24, max_record_bytes=1 << 20)
    data_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[ServerInterceptor(TOKEN)]
    )
    data_pb2_grpc.add_DataServiceServicer_to_server(DataServicer(data_core), data_server)
    data_port = data_server.add_insecure_port("127.0.0.1:0")
    data_server.start()
    settings = ClientSettings(home=root, data_address=f"127.0.0.1:{data_port}")

    eval_store = EvalStore(root / "evaluator.db")
    core = EvaluatorCore(
        eval_store,
        model_dir,
        ValidationSplits(settings, TOKEN, artifacts),
        RunOptions(max_length=256, resamples=200),
        gate=GateThresholds(max_perplexity=1e9, min_bleu=99.0),
        curves=_curves,
    )
    review_store = ReviewStore(root / "reviews.db")
    queue = ReviewQueue(review_store, data=DataServiceFeedback(settings, TOKEN, artifacts))
    eval_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[ServerInterceptor(TOKEN)]
    )
    evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server(
        EvaluatorServicer(core, ReviewRpcs(queue)),  # type: ignore[abstract]
        eval_server,
    )
    eval_port = eval_server.add_insecure_port("127.0.0.1:0")
    eval_server.start()

    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"How much is {plan}?"},
                    {"role": "assistant", "content": f"{plan.capitalize()} costs {price} euros."},
                ],
                "expected": {"answer": f"{price} euros", "kind": "contains"},
            }
        )
        for plan, price in PRICES
    ]
    header = data_pb2.UploadHeader(
        dataset_name="prices",
        file_name="prices.jsonl",
        format=data_pb2.SOURCE_FORMAT_OPENAI_CHAT_JSONL,
        validation_fraction=0.5,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{data_port}")
    version = (
        data_pb2_grpc.DataServiceStub(channel)
        .UploadDatasetVersion(
            iter(
                [
                    data_pb2.UploadDatasetVersionRequest(header=header),
                    data_pb2.UploadDatasetVersionRequest(chunk="\n".join(lines).encode()),
                ]
            ),
            metadata=AUTH,
        )
        .dataset_version
    )
    channel.close()
    env = {
        "OWNCHAT_HOME": str(root / "home"),
        "OWNCHAT_TOKEN": TOKEN,
        "OWNCHAT_DATA_ADDRESS": f"127.0.0.1:{data_port}",
        "OWNCHAT_EVALUATOR_ADDRESS": f"127.0.0.1:{eval_port}",
        "COLUMNS": "200",
    }
    try:
        yield World(env, version.id)
    finally:
        eval_server.stop(None).wait()
        data_server.stop(None).wait()
        core.close()
        eval_store.close()
        review_store.close()
        data_store.close()


def cli(world: World, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=world.env)


METRIC_FLAGS = ["--metric", "perplexity", "--metric", "bleu", "--metric", "task-accuracy"]


def test_eval_run_prints_each_metric_with_its_interval(world: World) -> None:
    result = cli(
        world,
        "eval",
        "run",
        "--model",
        "tiny-a",
        "--dataset-version",
        world.dataset_version_id,
        *METRIC_FLAGS,
        "--max-new-tokens",
        "4",
        "--max-samples",
        "4",
    )
    assert result.exit_code == 0, result.output
    for name in ("perplexity", "bleu", "task_accuracy"):
        assert re.search(
            rf"^  {name} [\d.]+  (95% CI \[[\d.]+, [\d.]+\]|no interval)", result.output, re.M
        ), result.output
    # The samples' own expected answers were checked: no run check was given.
    assert "4 checked replies passed" in result.output
    assert "nrefs:1" in result.output  # sacrebleu's signature


def test_eval_compare_reuses_runs_and_says_which_is_better(world: World) -> None:
    args = [
        "eval",
        "compare",
        "tiny-a",
        "tiny-b",
        "--dataset-version",
        world.dataset_version_id,
        *METRIC_FLAGS,
        "--max-new-tokens",
        "4",
        "--max-samples",
        "4",
    ]
    first = cli(world, *args)
    assert first.exit_code == 0, first.output
    assert re.search(r"baseline tiny-a: reusing run eval_\w+", first.output), first.output
    assert re.search(r"candidate tiny-b: run eval_\w+", first.output)
    assert "4 paired samples" in first.output
    rows = {line.split()[1]: line for line in first.output.splitlines() if line.startswith("│ ")}
    for name in ("perplexity", "bleu", "task_accuracy"):
        assert name in rows
        assert re.search(r"better|worse|no clear difference|no interval", rows[name]), rows[name]
    assert re.search(r"is (better|worse)|Neither version is clearly better", first.output)

    again = cli(world, *args)
    assert again.exit_code == 0, again.output
    assert "baseline tiny-a: reusing run" in again.output
    assert "candidate tiny-b: reusing run" in again.output

    report = re.search(r"ownchat eval report (eval_\w+) --against (eval_\w+)", again.output)
    assert report is not None
    output = Path(world.env["OWNCHAT_HOME"]) / "reports" / "comparison.html"
    written = cli(
        world, "eval", "report", report[1], "--against", report[2], "--output", str(output)
    )
    assert written.exit_code == 0, written.output
    html = output.read_text()
    assert "tiny-b against tiny-a" in html and "tiny-a is a base model" in html
    assert "losses of training job job_1" in html
    for name in ("metrics", "deltas", "loss_curve", "sample_loss"):
        png = output.with_name(f"comparison-{name}.png")
        assert png.read_bytes().startswith(PNG_SIGNATURE), name
        assert str(png) in written.output.replace("\n", "")

    single = output.with_name("single.html")
    alone = cli(world, "eval", "report", report[1], "-o", str(single))
    assert alone.exit_code == 0, alone.output
    assert "Evaluation of tiny-b" in single.read_text()
    assert single.with_name("single-metrics.png").exists()


def test_eval_gate_prints_every_check_and_fails_with_exit_1(world: World) -> None:
    result = cli(world, "eval", "gate", "tiny-a")
    assert result.exit_code == 1, result.output
    assert re.search(r"pass max_perplexity \(perplexity <= 1e\+09\)", result.output), result.output
    assert re.search(r"FAIL min_bleu \(BLEU >= 99\): BLEU [\d.]+ is below", result.output)
    assert "tiny-a fails the promotion gate" in result.output


def test_eval_queue_enqueues_a_sample_and_shows_stats(world: World) -> None:
    enqueued = cli(
        world,
        "eval",
        "queue",
        "enqueue-sample",
        "--dataset-version",
        world.dataset_version_id,
        "--count",
        "3",
        "--kind",
        "correction",
    )
    assert enqueued.exit_code == 0, enqueued.output
    assert "enqueued 3 correction item(s)" in enqueued.output
    # Two reviewers rate the same two items.
    channel = grpc.insecure_channel(world.env["OWNCHAT_EVALUATOR_ADDRESS"])
    stub = evaluator_pb2_grpc.EvaluatorServiceStub(channel)
    items = [
        evaluator_pb2.ReviewItem(
            kind=evaluator_pb2.REVIEW_KIND_RATING,
            context=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=question)],
            reply_a="Hello.",
            source="test",
            reviews_wanted=2,
        )
        for question in ("Hi?", "Hello?")
    ]
    stub.EnqueueReviewItems(evaluator_pb2.EnqueueReviewItemsRequest(items=items), metadata=AUTH)
    for reviewer, ratings in (("ann", [5, 2]), ("bob", [4, 1])):
        for rating in ratings:
            leased = stub.NextReviewItem(
                evaluator_pb2.NextReviewItemRequest(
                    reviewer=reviewer, kind=evaluator_pb2.REVIEW_KIND_RATING
                ),
                metadata=AUTH,
            ).item
            stub.SubmitReview(
                evaluator_pb2.SubmitReviewRequest(
                    item_id=leased.id, reviewer=reviewer, rating=rating
                ),
                metadata=AUTH,
            )
    channel.close()

    stats = cli(world, "eval", "queue")
    assert stats.exit_code == 0, stats.output
    assert re.search(r"correction\s*│\s*3\s*│\s*0\s*│\s*0\s*│\s*0", stats.output), stats.output
    assert re.search(r"rating\s*│\s*0\s*│\s*0\s*│\s*2\s*│\s*4", stats.output), stats.output
    assert re.search(r"ann\s*│\s*2", stats.output) and re.search(r"bob\s*│\s*2", stats.output)
    assert re.search(
        r"agreement on rating: Krippendorff's alpha -?[\d.]+ over 2 items", stats.output
    ), stats.output
    assert re.search(r"ann / bob: Cohen's kappa -?[\d.]+ over 2 items", stats.output)
    assert "agreement on pairwise" not in stats.output


def test_eval_errors_are_reported_with_exit_1(world: World) -> None:
    missing = cli(world, "eval", "run", "--model", "nope", "--dataset-version", "dsv_x")
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output
    never = Path(world.env["OWNCHAT_HOME"]) / "never.html"
    bad = cli(world, "eval", "report", "eval_nope", "-o", str(never))
    assert bad.exit_code == 1 and "NOT_FOUND" in bad.output
    assert not never.exists()
