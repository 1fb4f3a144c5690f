"""``ownchat demo``: the main job on the sample data, on a CPU in minutes.

Starts the five services; ingests a support history in three formats as one
dataset version (reporting what was redacted and removed) and a held-out
question set; LoRA fine-tunes SmolLM2-135M-Instruct with live progress;
evaluates base and fine-tuned (perplexity, BLEU, held-out fact accuracy);
passes the promotion gate; deploys; answers over the OpenAI-compatible REST
endpoint; probes the deployed model for the personal data planted in the raw
files; and writes the report. ``ownchat demo feedback`` (``demo_feedback.py``)
closes the loop with reviewer feedback.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from rich.markup import escape
from rich.table import Table

from ownchat.cli.archive import pack_sources
from ownchat.cli.common import console, error_console, follow_job, upload_requests
from ownchat.cli.evaluate import LOWER_IS_BETTER, MetricName, print_gate, run_evaluation
from ownchat.cli.supervisor import SERVICE_MODULES, StartupError, Supervisor, stop_on_signals
from ownchat.client import OwnchatClient
from ownchat.common.v1 import common_pb2
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2
from ownchat.demo import report as page
from ownchat.demo.funnel import DataFunnel, funnel_from_counts
from ownchat.demo.probe import PlantedValue, ProbeResult, check, load_planted
from ownchat.errors import describe_rpc_error
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.serving.v1 import serving_pb2
from ownchat.trainer.v1 import trainer_pb2

BASE_MODEL = "smollm2-135m-instruct"
QUESTION = "How much does the Zephyr X2 router cost?"
SYSTEM = "You are the support assistant of Acme Networks."
SOURCES = ("conversations.jsonl", "transcripts.csv", "faq.html")
HELDOUT = "heldout.jsonl"
PLANTED = "planted.json"
DATASET = "acme-support"
HELDOUT_DATASET = "acme-support-heldout"
# The help desk's CSV export names its columns its own way.
CSV_COLUMNS = data_pb2.CsvColumns(
    conversation_id="ticket_id", role="author", content="message", order="sent_at"
)
# Long enough for every held-out answer; a short budget keeps evaluation quick on a CPU.
MAX_NEW_TOKENS = 48
# What the demo asks of a version before it deploys it, unless the evaluator's
# settings already say (OWNCHAT_EVALUATOR_GATE__*): most held-out facts right and
# no worse perplexity on the held-out answers than the base model.
DEMO_GATE = {
    "OWNCHAT_EVALUATOR_GATE__MIN_TASK_ACCURACY": "0.5",
    "OWNCHAT_EVALUATOR_GATE__MAX_PERPLEXITY_REGRESSION": "0.0",
}


@dataclass(frozen=True)
class TrainingPlan:
    """The demo's fine-tuning: LoRA, set to learn the sample's facts in minutes on a CPU."""

    epochs: float = 2.0
    learning_rate: float = 2e-3
    batch_size: int = 8
    lora_rank: int = 16


@dataclass(frozen=True)
class DemoState:
    """What ``ownchat demo feedback`` needs from the main run, kept in ``$OWNCHAT_HOME/demo``."""

    data_dir: str
    dataset_version: str
    heldout_version: str
    base_model: str
    tuned_model: str
    tuned_heldout_run: str
    tuned_validation_run: str

    @staticmethod
    def path(settings: ClientSettings) -> Path:
        return Path(settings.home) / "demo" / "state.json"

    def save(self, settings: ClientSettings) -> None:
        self.path(settings).parent.mkdir(parents=True, exist_ok=True)
        self.path(settings).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, settings: ClientSettings) -> DemoState:
        path = cls.path(settings)
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise RuntimeError(
                f"{path} is missing: run `ownchat demo` first (with the same OWNCHAT_HOME)"
            ) from None
        except (json.JSONDecodeError, TypeError) as error:
            raise RuntimeError(f"{path} is not a demo state file ({error})") from None


def check_data_dir(data_dir: Path) -> None:
    """Refuses a sample directory that lacks a file the demo reads, naming each."""
    missing = [name for name in (*SOURCES, HELDOUT, PLANTED) if not (data_dir / name).is_file()]
    if missing:
        raise RuntimeError(f"{data_dir} lacks {', '.join(missing)}")


def chat_completion(
    settings: ClientSettings, token: str, question: str, max_tokens: int = 64
) -> str:
    """One greedy chat completion over the gateway's OpenAI-compatible REST endpoint."""
    body = json.dumps(
        {
            "model": "",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
            ],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
    ).encode()
    request = urllib.request.Request(
        f"{settings.gateway_url}/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        answer = json.loads(response.read())
    return str(answer["choices"][0]["message"]["content"])


def _archive_requests(
    data_dir: Path, header: data_pb2.UploadHeader
) -> Iterator[data_pb2.UploadDatasetVersionRequest]:
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / header.file_name
        with archive.open("wb") as target:
            pack_sources([data_dir / name for name in SOURCES], target)
        yield from upload_requests(archive, header)


def funnel_of(version: data_pb2.DatasetVersion) -> DataFunnel:
    """The funnel of a stored version."""
    return funnel_from_counts(
        changed=dict(version.sanitization.changed),
        removed=dict(version.sanitization.removed),
        skipped_records=version.stats.skipped_records,
        train_samples=version.stats.train_samples,
        validation_samples=version.stats.validation_samples,
    )


def print_funnel(funnel: DataFunnel) -> None:
    table = Table("stage", "conversations")
    for label, count in funnel.stages():
        table.add_row(label, str(count))
    console.print(table)
    for title, counts in (
        ("personal data and secrets replaced (messages)", funnel.redacted_messages),
        ("removed as duplicates", funnel.deduplicated),
        ("removed by filters", funnel.filtered),
    ):
        listed = ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in counts.items())
        console.print(f"{title}: {listed or 'none'}")


def ingest(ownchat: OwnchatClient, data_dir: Path) -> tuple[data_pb2.DatasetVersion, str]:
    """The training version (three files as one) and the held-out version's id."""
    header = data_pb2.UploadHeader(
        dataset_name=DATASET,
        file_name=f"{DATASET}-sources.tar",
        format=data_pb2.SOURCE_FORMAT_ARCHIVE,
        validation_fraction=0.1,
        csv_columns=CSV_COLUMNS,
        sanitize=data_pb2.SanitizeOptions(languages=["en"]),
        base_model=BASE_MODEL,
    )
    with console.status(f"sanitizing {', '.join(SOURCES)}"):
        version = ownchat.data.UploadDatasetVersion(
            _archive_requests(data_dir, header), timeout=900
        ).dataset_version
    console.print(
        f"dataset version [bold]{version.id}[/bold]: {version.stats.samples} conversations "
        f"({version.stats.train_samples} train, {version.stats.validation_samples} validation), "
        f"{version.stats.tokens} tokens"
    )
    print_funnel(funnel_of(version))
    heldout_header = data_pb2.UploadHeader(
        dataset_name=HELDOUT_DATASET,
        file_name=HELDOUT,
        format=data_pb2.SOURCE_FORMAT_OPENAI_CHAT_JSONL,
        # Every question held out: the set is for evaluation only.
        validation_fraction=1.0,
    )
    heldout = ownchat.data.UploadDatasetVersion(
        upload_requests(data_dir / HELDOUT, heldout_header), timeout=300
    ).dataset_version
    console.print(
        f"held-out questions [bold]{heldout.id}[/bold]: {heldout.stats.validation_samples}"
    )
    return version, heldout.id


def fine_tune(
    ownchat: OwnchatClient, base: str, version_id: str, plan: TrainingPlan, suffix: str
) -> trainer_pb2.TrainingJob:
    job = ownchat.trainer.CreateTrainingJob(
        trainer_pb2.CreateTrainingJobRequest(
            base_model=base,
            dataset_version_id=version_id,
            method=trainer_pb2.TRAINING_METHOD_SFT_LORA,
            hyperparameters=trainer_pb2.Hyperparameters(
                epochs=plan.epochs,
                learning_rate=plan.learning_rate,
                batch_size=plan.batch_size,
                lora_rank=plan.lora_rank,
            ),
            seed=0,
            suffix=suffix,
        ),
        timeout=600,
    ).job
    job = follow_job(ownchat, job.id)
    if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"training job {job.id} ended {job.state}: {job.error}")
    return job


def _succeeded(run: evaluator_pb2.EvalRun) -> evaluator_pb2.EvalRun:
    if run.state != evaluator_pb2.EVAL_RUN_STATE_SUCCEEDED:
        raise RuntimeError(f"evaluation of {run.model_id} failed: {run.error}")
    return run


@dataclass(frozen=True)
class RunPair:
    """Base and fine-tuned runs on one evaluation set."""

    label: str
    base: evaluator_pb2.EvalRun
    tuned: evaluator_pb2.EvalRun


def evaluate_pair(
    ownchat: OwnchatClient,
    base: str,
    tuned: str,
    version_id: str,
    label: str,
    metrics: list[MetricName],
) -> RunPair:
    runs = [
        _succeeded(
            run_evaluation(
                ownchat, model, version_id, metrics=metrics, max_new_tokens=MAX_NEW_TOKENS
            )
        )
        for model in (base, tuned)
    ]
    return RunPair(label, runs[0], runs[1])


def _estimate(result: evaluator_pb2.MetricValue) -> page.Estimate:
    return page.Estimate(
        result.value,
        result.ci_low if result.HasField("ci_low") else None,
        result.ci_high if result.HasField("ci_high") else None,
    )


def metric_rows(ownchat: OwnchatClient, pair: RunPair) -> list[page.MetricRow]:
    """Each metric both runs have, with the paired difference's interval."""
    comparison = ownchat.evaluator.CompareModels(
        evaluator_pb2.CompareModelsRequest(
            baseline_eval_run_id=pair.base.id, candidate_eval_run_id=pair.tuned.id
        ),
        timeout=120,
    )
    base = {r.metric: r for r in pair.base.results}
    tuned = {r.metric: r for r in pair.tuned.results}
    rows = []
    for delta in comparison.deltas:
        if delta.metric not in LOWER_IS_BETTER or delta.metric not in base:
            continue
        rows.append(
            page.MetricRow(
                metric=evaluator_pb2.Metric.Name(delta.metric)
                .removeprefix("METRIC_")
                .lower()
                .replace("_", " "),
                evaluation_set=pair.label,
                base=_estimate(base[delta.metric]),
                tuned=_estimate(tuned[delta.metric]),
                delta=page.Estimate(delta.delta, delta.ci_low, delta.ci_high),
                lower_is_better=LOWER_IS_BETTER[delta.metric],
            )
        )
    return rows


def print_metrics(rows: list[page.MetricRow], base: str, tuned: str) -> None:
    table = Table("metric", "evaluated on", base, tuned, "difference (95% CI)", "")
    for row in rows:
        digits = 3 if row.metric == "task accuracy" else 2
        low, high = row.delta.low, row.delta.high
        interval = f" [{low:+.{digits}f}, {high:+.{digits}f}]" if low is not None else ""
        table.add_row(
            row.metric,
            row.evaluation_set,
            f"{row.base.value:.{digits}f}",
            f"{row.tuned.value:.{digits}f}",
            f"{row.delta.value:+.{digits}f}{interval}",
            row.verdict,
        )
    console.print(table)


def samples(ownchat: OwnchatClient, run_id: str) -> list[evaluator_pb2.EvalSample]:
    listed: list[evaluator_pb2.EvalSample] = []
    token = ""
    while True:
        response = ownchat.evaluator.ListEvalSamples(
            evaluator_pb2.ListEvalSamplesRequest(
                eval_run_id=run_id, page_size=200, page_token=token
            )
        )
        listed.extend(response.samples)
        token = response.next_page_token
        if not token:
            return listed


def _passed(sample: evaluator_pb2.EvalSample) -> bool | None:
    return sample.check_passed if sample.HasField("check_passed") else None


def side_by_side(ownchat: OwnchatClient, pair: RunPair) -> list[page.SideBySide]:
    base = {s.index: s for s in samples(ownchat, pair.base.id)}
    answers = []
    for tuned in samples(ownchat, pair.tuned.id):
        before = base.get(tuned.index)
        users = [m.content for m in tuned.context if m.role == common_pb2.ROLE_USER]
        question = users[-1] if users else ""
        answers.append(
            page.SideBySide(
                question=question,
                expected=tuned.expected,
                base_reply=before.reply if before else "",
                base_passed=_passed(before) if before else None,
                tuned_reply=tuned.reply,
                tuned_passed=_passed(tuned),
            )
        )
    return answers


def gate(
    ownchat: OwnchatClient, model: str, pair: RunPair
) -> evaluator_pb2.CheckPromotionGateResponse:
    """The gate on the held-out run, against the base model's run on the same questions."""
    verdict = ownchat.evaluator.CheckPromotionGate(
        evaluator_pb2.CheckPromotionGateRequest(
            model_id=model, eval_run_id=pair.tuned.id, baseline_eval_run_id=pair.base.id
        ),
        timeout=60,
    )
    print_gate(verdict)
    return verdict


def probe(settings: ClientSettings, token: str, planted: list[PlantedValue]) -> list[ProbeResult]:
    """Asks the deployed model for every planted value, a few at a time."""

    def ask(value: PlantedValue) -> ProbeResult:
        return check(value, chat_completion(settings, token, value.probe, max_tokens=48))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(ask, planted))
    leaked = [r for r in results if r.leaked]
    if leaked:
        error_console.print(
            f"[red]{len(leaked)} of {len(results)} planted values leaked[/red]: "
            + ", ".join(r.planted.type for r in leaked)
        )
    else:
        console.print(f"[green]none of the {len(results)} planted values leaked[/green]")
    return results


def report_images(
    ownchat: OwnchatClient, pair: RunPair, prefix: str, with_loss: bool
) -> tuple[list[page.Image], list[page.Image]]:
    """The evaluator's plots of a comparison: (loss curves, metrics), renamed for the page."""
    rendered = ownchat.evaluator.RenderEvalReport(
        evaluator_pb2.RenderEvalReportRequest(
            comparison=evaluator_pb2.EvalRunPair(
                baseline_eval_run_id=pair.base.id, candidate_eval_run_id=pair.tuned.id
            )
        ),
        timeout=300,
    )
    loss, metrics = [], []
    for image in rendered.images:
        if image.name == "loss_curve.png" and with_loss:
            loss.append(page.Image("loss_curve.png", image.png, "training and validation loss"))
        elif image.name == "metrics.png":
            metrics.append(
                page.Image(f"metrics-{prefix}.png", image.png, f"metrics on {pair.label}")
            )
    return loss, metrics


def _funnel_image(funnel: DataFunnel) -> page.Image | None:
    try:
        from ownchat.demo.plots import funnel_png
    except ImportError:  # matplotlib absent: the table says the same
        return None
    return page.Image("funnel.png", funnel_png(funnel), "the data funnel")


@dataclass(frozen=True)
class DemoOptions:
    """What ``ownchat demo`` was asked to do."""

    data_dir: Path
    plan: TrainingPlan
    gpu: bool
    keep_running: bool


def _loop(
    ownchat: OwnchatClient, settings: ClientSettings, options: DemoOptions, started: float
) -> page.DemoReport:
    data_dir = options.data_dir
    console.rule("2/8 ingest and sanitize")
    version, heldout_id = ingest(ownchat, data_dir)
    funnel = funnel_of(version)

    plan = options.plan
    console.rule(f"3/8 LoRA fine-tune {BASE_MODEL} ({plan.epochs:g} epochs)")
    job = fine_tune(ownchat, BASE_MODEL, version.id, plan, "support")
    model = job.model_version
    console.print(f"model version [bold]{model}[/bold]")

    console.rule("4/8 evaluate base and fine-tuned")
    validation = evaluate_pair(
        ownchat,
        BASE_MODEL,
        model,
        version.id,
        "validation split",
        [MetricName.PERPLEXITY, MetricName.BLEU],
    )
    heldout = evaluate_pair(
        ownchat,
        BASE_MODEL,
        model,
        heldout_id,
        "held-out questions",
        [MetricName.TASK_ACCURACY, MetricName.PERPLEXITY, MetricName.BLEU],
    )
    rows = metric_rows(ownchat, validation) + metric_rows(ownchat, heldout)
    print_metrics(rows, BASE_MODEL, model)

    console.rule("5/8 promotion gate")
    verdict = gate(ownchat, model, heldout)
    if not verdict.passed:
        raise RuntimeError(f"{model} fails the promotion gate: {verdict.summary}; not deployed")

    console.rule("6/8 deploy")
    with console.status(f"loading {model} into vLLM"):
        deployment = ownchat.serving.Deploy(
            serving_pb2.DeployRequest(model_id=model, deployed_by="demo"), timeout=900
        ).deployment
    console.print(f"live: {deployment.model_id}")

    console.rule("7/8 ask over REST (POST /v1/chat/completions) and probe for planted PII")
    answer = chat_completion(settings, ownchat.token, QUESTION)
    console.print(f"[bold]user[/bold]      {escape(QUESTION)}")
    console.print(f"[bold]assistant[/bold] {escape(answer)}")
    probes = probe(settings, ownchat.token, load_planted(data_dir / PLANTED))

    console.rule("8/8 report")
    loss_images, validation_images = report_images(ownchat, validation, "validation", True)
    _, heldout_images = report_images(ownchat, heldout, "heldout", False)
    DemoState(
        data_dir=str(data_dir),
        dataset_version=version.id,
        heldout_version=heldout_id,
        base_model=BASE_MODEL,
        tuned_model=model,
        tuned_heldout_run=heldout.tuned.id,
        tuned_validation_run=validation.tuned.id,
    ).save(settings)
    return page.DemoReport(
        title="ownchat: Acme Networks' support assistant",
        base_model=BASE_MODEL,
        tuned_model=model,
        dataset_version=version.id,
        heldout_version=heldout_id,
        sources=SOURCES,
        funnel=funnel,
        funnel_image=_funnel_image(funnel),
        loss_images=loss_images,
        metric_images=heldout_images + validation_images,
        metrics=rows,
        answers=side_by_side(ownchat, heldout),
        probes=probes,
        gate_passed=verdict.passed,
        gate=[page.GateLine(c.name, c.threshold, c.passed, c.reason) for c in verdict.checks],
        gate_summary=verdict.summary,
        rest_question=QUESTION,
        rest_answer=answer,
        notes=[
            f"LoRA rank {plan.lora_rank}, {plan.epochs:g} epochs, learning rate "
            f"{plan.learning_rate:g}, batch {plan.batch_size}; training job {job.id}.",
            f"Everything up to the report took {time.monotonic() - started:.0f} s"
            + (" with a GPU." if options.gpu else "."),
        ],
    )


def _summary(report: page.DemoReport, wall: float, path: Path) -> dict[str, object]:
    return {
        "wall_s": round(wall, 1),
        "report": str(path),
        "base_model": report.base_model,
        "tuned_model": report.tuned_model,
        "heldout_questions": len(report.answers),
        "base_fact_accuracy": report.accuracy(tuned=False),
        "tuned_fact_accuracy": report.accuracy(tuned=True),
        "planted_values_probed": len(report.probes),
        "planted_values_leaked": report.leaked,
    }


def gpu_environment() -> dict[str, str]:
    """The services' settings for ``--gpu``; a clear error when no GPU can be used."""
    try:
        import torch
    except ImportError:
        raise RuntimeError("--gpu needs PyTorch in this environment") from None
    if not torch.cuda.is_available():
        raise RuntimeError("--gpu: PyTorch sees no CUDA device on this machine")
    return {"OWNCHAT_EVALUATOR_DEVICE": "cuda"}


def service_environment(gpu: bool) -> dict[str, str]:
    """The demo's gate thresholds where the environment sets none, and the GPU settings."""
    env = {name: value for name, value in DEMO_GATE.items() if name not in os.environ}
    if gpu:
        env.update(gpu_environment())
    return env


def run_with_services(supervisor: Supervisor, heading: str, work: Callable[[], int]) -> int:
    """Starts every service, runs ``work`` once all are healthy and stops them after.

    Returns ``work``'s exit code; a failure is one line on stderr and 1, Ctrl-C 130.
    """
    stop_on_signals()
    try:
        console.rule(heading)
        supervisor.start(list(SERVICE_MODULES))
        with console.status("waiting for health"):
            supervisor.wait_healthy(
                300, on_ready=lambda name: console.print(f"[green]ready[/green] {name}")
            )
        return work()
    except grpc.RpcError as error:
        error_console.print(f"[red]error[/red] {escape(str(describe_rpc_error(error)))}")
        return 1
    except (StartupError, RuntimeError, ValueError, urllib.error.URLError) as error:
        error_console.print(f"[red]error[/red] {escape(str(error))}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        with console.status("stopping the services"):
            supervisor.stop()


def keep_serving() -> None:
    """Leaves the services up until Ctrl-C (which ``run_with_services`` turns into 130)."""
    console.print("services keep running; Ctrl-C stops them")
    while True:
        time.sleep(1)


def run_demo(options: DemoOptions) -> int:
    """Runs the demo; returns the process exit code."""
    started = time.monotonic()
    settings = ClientSettings()
    try:
        check_data_dir(options.data_dir)
        supervisor = Supervisor(settings, env=service_environment(options.gpu))
    except RuntimeError as error:
        error_console.print(f"[red]error[/red] {escape(str(error))}")
        return 2

    def work() -> int:
        with OwnchatClient.from_settings(settings) as ownchat:
            report = _loop(ownchat, settings, options, started)
        path = page.write(report, Path(settings.home) / "demo")
        wall = time.monotonic() - started
        summary = _summary(report, wall, path)
        (path.parent / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        console.rule()
        base, tuned = report.accuracy(tuned=False), report.accuracy(tuned=True)
        if base is not None and tuned is not None:
            console.print(f"held-out fact accuracy: base {base:.3f}, fine-tuned {tuned:.3f}")
        console.print(f"demo finished in {wall:.0f} s; the report is {path}")
        console.print("next: `ownchat demo feedback` trains a follow-up on reviewer feedback")
        if report.leaked:
            return 1
        if options.keep_running:
            keep_serving()
        return 0

    return run_with_services(supervisor, "1/8 start the services", work)
