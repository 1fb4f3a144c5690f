"""``ownchat demo feedback``: the closed loop after ``ownchat demo``.

Reviewer feedback (scripted from a file: preference pairs and corrections)
goes through the evaluator's review queue like a reviewer's clicks would; the
evaluator exports it as a preference and an SFT dataset version; a DPO
follow-up trains on the preferences from the live version (its adapter merged
first); and the follow-up is measured on the same held-out questions against
the live version, through the promotion gate. Whether it wins is printed and
written as a comparison report; deploying it is left to the operator.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from ownchat.cli.common import console, error_console, follow_job
from ownchat.cli.demo import (
    DemoState,
    RunPair,
    gate,
    keep_serving,
    metric_rows,
    print_metrics,
    run_with_services,
    service_environment,
)
from ownchat.cli.evaluate import MetricName, run_evaluation
from ownchat.cli.supervisor import Supervisor
from ownchat.client import OwnchatClient
from ownchat.common.v1 import common_pb2
from ownchat.config import ClientSettings
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.trainer.v1 import trainer_pb2

REVIEWER = "demo-reviewer"
# Who wrote the preferred reply of a scripted pair: a support agent, not a model.
AGENT = "support-agent"
FEEDBACK_DATASET = "acme-support-feedback"
ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
}


@dataclass(frozen=True)
class Preference:
    """A reviewer preferred ``chosen`` over ``rejected`` as the reply to ``prompt``."""

    prompt: tuple[tuple[str, str], ...]
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Correction:
    """A reviewer rewrote ``reply`` to ``prompt`` as ``correction``."""

    prompt: tuple[tuple[str, str], ...]
    reply: str
    correction: str


Feedback = Preference | Correction


def load_feedback(path: Path) -> list[Feedback]:
    """Reads the scripted feedback; a clear ValueError naming the line when one is wrong."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror}") from None
    feedback: list[Feedback] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            prompt = tuple((m["role"], m["content"]) for m in record["prompt"])
            if not prompt or any(role not in ROLES for role, _ in prompt):
                raise KeyError("prompt")
            if "chosen" in record:
                feedback.append(Preference(prompt, record["chosen"], record["rejected"]))
            else:
                feedback.append(Correction(prompt, record["reply"], record["correction"]))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path} line {number}: expected {{prompt, chosen, rejected}} or "
                f"{{prompt, reply, correction}} ({type(error).__name__}: {error})"
            ) from None
    if not any(isinstance(f, Preference) for f in feedback):
        raise ValueError(f"{path}: no preference pairs to train on")
    return feedback


def _item(record: Feedback, live_model: str) -> evaluator_pb2.ReviewItem:
    context = [common_pb2.ChatMessage(role=ROLES[r], content=c) for r, c in record.prompt]
    if isinstance(record, Preference):
        return evaluator_pb2.ReviewItem(
            kind=evaluator_pb2.REVIEW_KIND_PAIRWISE,
            context=context,
            reply_a=record.chosen,
            reply_b=record.rejected,
            model_id_a=AGENT,
            model_id_b=live_model,
            source="demo:feedback",
            reviews_wanted=1,
        )
    return evaluator_pb2.ReviewItem(
        kind=evaluator_pb2.REVIEW_KIND_CORRECTION,
        context=context,
        reply_a=record.reply,
        source="demo:feedback",
        reviews_wanted=1,
    )


def review(ownchat: OwnchatClient, feedback: list[Feedback], live_model: str) -> int:
    """Enqueues the feedback and works the queue as the scripted reviewer; returns reviews."""
    enqueued = ownchat.evaluator.EnqueueReviewItems(
        evaluator_pb2.EnqueueReviewItemsRequest(items=[_item(f, live_model) for f in feedback])
    )
    scripted = dict(zip(enqueued.item_ids, feedback, strict=True))
    submitted = 0
    while scripted:
        item = ownchat.evaluator.NextReviewItem(
            evaluator_pb2.NextReviewItemRequest(reviewer=REVIEWER)
        ).item
        record = scripted.pop(item.id, None) if item.id else None
        if record is None:
            # Someone else's item (a captured chat, say): not ours to review.
            if item.id:
                ownchat.evaluator.ReleaseReviewItem(
                    evaluator_pb2.ReleaseReviewItemRequest(item_id=item.id, reviewer=REVIEWER)
                )
            break
        if isinstance(record, Preference):
            # The queue may show the pair in either order.
            preferred = "a" if item.reply_a == record.chosen else "b"
            request = evaluator_pb2.SubmitReviewRequest(
                item_id=item.id, reviewer=REVIEWER, preferred=preferred
            )
        else:
            request = evaluator_pb2.SubmitReviewRequest(
                item_id=item.id, reviewer=REVIEWER, correction=record.correction
            )
        ownchat.evaluator.SubmitReview(request)
        submitted += 1
    if scripted:
        raise RuntimeError(
            f"{len(scripted)} scripted item(s) were not offered to {REVIEWER}: the review "
            "queue holds other items first; review them (ownchat eval queue) and run again"
        )
    return submitted


def _loop(ownchat: OwnchatClient, state: DemoState, feedback: list[Feedback]) -> bool:
    console.rule("2/6 reviewers work the queue")
    reviews = review(ownchat, feedback, state.tuned_model)
    console.print(f"{reviews} reviews by {REVIEWER} (scripted)")

    console.rule("3/6 export the feedback as dataset versions")
    exported = ownchat.evaluator.ExportFeedback(
        evaluator_pb2.ExportFeedbackRequest(dataset_name=FEEDBACK_DATASET, validation_fraction=0),
        timeout=300,
    )
    console.print(
        f"preferences: {exported.preference_pairs} pairs in "
        f"{exported.preference_dataset_version_id or 'none'}; corrections: "
        f"{exported.corrections} in {exported.sft_dataset_version_id or 'none'}"
    )
    if not exported.preference_dataset_version_id:
        raise RuntimeError("no preference pairs were exported: nothing to train on")

    console.rule("4/6 DPO follow-up from the live version")
    with console.status(f"merging {state.tuned_model} into a full version"):
        merged = ownchat.trainer.MergeAdapter(
            trainer_pb2.MergeAdapterRequest(model_id=state.tuned_model), timeout=900
        ).model
    job = ownchat.trainer.CreateTrainingJob(
        trainer_pb2.CreateTrainingJobRequest(
            base_model=merged.id,
            dataset_version_id=exported.preference_dataset_version_id,
            method=trainer_pb2.TRAINING_METHOD_DPO,
            # A handful of pairs: a few passes over them, at a LoRA learning rate.
            hyperparameters=trainer_pb2.Hyperparameters(epochs=4, batch_size=4, learning_rate=5e-4),
            seed=0,
            suffix="feedback",
        ),
        timeout=600,
    ).job
    job = follow_job(ownchat, job.id)
    if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"training job {job.id} ended {job.state}: {job.error}")
    follow_up = job.model_version
    console.print(f"follow-up version [bold]{follow_up}[/bold]")

    console.rule("5/6 the follow-up against the live version, on the held-out questions")
    live_run = ownchat.evaluator.GetEvalRun(
        evaluator_pb2.GetEvalRunRequest(eval_run_id=state.tuned_heldout_run)
    ).eval_run
    follow_up_run = run_evaluation(
        ownchat,
        follow_up,
        state.heldout_version,
        metrics=[MetricName.TASK_ACCURACY, MetricName.PERPLEXITY, MetricName.BLEU],
        max_new_tokens=48,
    )
    if follow_up_run.state != evaluator_pb2.EVAL_RUN_STATE_SUCCEEDED:
        raise RuntimeError(f"evaluation of {follow_up} failed: {follow_up_run.error}")
    pair = RunPair("held-out questions", live_run, follow_up_run)
    rows = metric_rows(ownchat, pair)
    print_metrics(rows, state.tuned_model, follow_up)

    console.rule("6/6 does it win?")
    verdict = gate(ownchat, follow_up, pair)
    rendered = ownchat.evaluator.RenderEvalReport(
        evaluator_pb2.RenderEvalReportRequest(
            comparison=evaluator_pb2.EvalRunPair(
                baseline_eval_run_id=live_run.id, candidate_eval_run_id=follow_up_run.id
            )
        ),
        timeout=300,
    )
    path = Path(ownchat.settings.home) / "demo" / "feedback-report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rendered.html, encoding="utf-8")
    better = [r.metric for r in rows if r.verdict == "better"]
    worse = [r.metric for r in rows if r.verdict == "worse"]
    console.print(
        f"better on: {', '.join(better) or 'nothing measurable'}; "
        f"worse on: {', '.join(worse) or 'nothing measurable'}"
    )
    if verdict.passed and not worse:
        console.print(
            f"[green]{follow_up} wins[/green]: `ownchat deploy {follow_up}` puts it live "
            "(`--canary 10%` first, if you like)"
        )
    else:
        console.print(f"[yellow]{follow_up} does not win[/yellow]: the live version stays")
    console.print(f"comparison report: {path}")
    return verdict.passed


def run_feedback(feedback_path: Path, keep_running: bool) -> int:
    """Runs the closed loop; returns the process exit code."""
    settings = ClientSettings()
    try:
        state = DemoState.load(settings)
        feedback = load_feedback(feedback_path)
        supervisor = Supervisor(settings, env=service_environment(gpu=False))
    except (RuntimeError, ValueError) as error:
        error_console.print(f"[red]error[/red] {escape(str(error))}")
        return 2
    started = time.monotonic()

    def work() -> int:
        with OwnchatClient.from_settings(settings) as ownchat:
            _loop(ownchat, state, feedback)
        console.print(f"finished in {time.monotonic() - started:.0f} s")
        if keep_running:
            keep_serving()
        return 0

    return run_with_services(supervisor, "1/6 start the services", work)
