"""``ownchat eval``: evaluation runs, comparisons, reports, the promotion gate, the review queue.

ownchat eval run --model MODEL --dataset-version dsv_... [--metric perplexity --metric bleu ...]
ownchat eval compare BASELINE CANDIDATE --dataset-version dsv_...
ownchat eval report RUN_ID [--against BASELINE_RUN_ID] --output report.html
ownchat eval gate MODEL [--baseline MODEL]
ownchat eval queue [enqueue-sample --dataset-version dsv_... --count N]
ownchat eval list [--model MODEL]

``ownchat deploy`` consults the promotion gate through :func:`consult_promotion_gate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ownchat.cli.common import client, console, error_console, reports_rpc_errors
from ownchat.client import OwnchatClient
from ownchat.data.v1 import data_pb2
from ownchat.errors import describe_rpc_error
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.serving.v1 import serving_pb2

eval_app = typer.Typer(
    help="Evaluation runs, comparisons, reports, the promotion gate and the review queue.",
    no_args_is_help=True,
)
queue_app = typer.Typer(help="The human-review queue: its statistics, and sampling into it.")
eval_app.add_typer(queue_app, name="queue")

M = evaluator_pb2
ENDED = (M.EVAL_RUN_STATE_SUCCEEDED, M.EVAL_RUN_STATE_FAILED)


class MetricName(StrEnum):
    """The metrics as the command line names them (response length brings its p95)."""

    PERPLEXITY = "perplexity"
    BLEU = "bleu"
    CHRF = "chrf"
    TASK_ACCURACY = "task-accuracy"
    RESPONSE_LENGTH = "response-length"
    REFUSAL_RATE = "refusal-rate"


METRICS = {
    MetricName.PERPLEXITY: M.METRIC_PERPLEXITY,
    MetricName.BLEU: M.METRIC_BLEU,
    MetricName.CHRF: M.METRIC_CHRF,
    MetricName.TASK_ACCURACY: M.METRIC_TASK_ACCURACY,
    MetricName.RESPONSE_LENGTH: M.METRIC_RESPONSE_LENGTH,
    MetricName.REFUSAL_RATE: M.METRIC_REFUSAL_RATE,
}
# Which way a metric improves; a reply's length improves neither way.
LOWER_IS_BETTER = {
    M.METRIC_PERPLEXITY: True,
    M.METRIC_BLEU: False,
    M.METRIC_CHRF: False,
    M.METRIC_TASK_ACCURACY: False,
    M.METRIC_REFUSAL_RATE: True,
}
SHARES = (M.METRIC_TASK_ACCURACY, M.METRIC_REFUSAL_RATE)
GENERATION_METRICS = frozenset(METRICS.values()) - {M.METRIC_PERPLEXITY}


class CheckName(StrEnum):
    """How a task check compares a reply with the expected answer."""

    EXACT = "exact"
    CONTAINS = "contains"
    REGEX = "regex"


CHECKS = {
    CheckName.EXACT: M.TASK_CHECK_KIND_EXACT,
    CheckName.CONTAINS: M.TASK_CHECK_KIND_CONTAINS,
    CheckName.REGEX: M.TASK_CHECK_KIND_REGEX,
}


class SampleKind(StrEnum):
    """What reviewers are asked of a sampled conversation."""

    RATING = "rating"
    CORRECTION = "correction"


def metric_name(metric: M.Metric.ValueType) -> str:
    """A metric's name as output shows it, for example "response_length_p95"."""
    return M.Metric.Name(metric).removeprefix("METRIC_").lower()


def number(metric: int, value: float, signed: bool = False) -> str:
    """A metric's value: three decimals for shares, two otherwise; "n/a" when undefined."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:{'+' if signed else ''}.{3 if metric in SHARES else 2}f}"


def interval(metric: int, low: float | None, high: float | None) -> str:
    """A 95% interval as output shows it."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "no interval"
    return f"95% CI [{number(metric, low)}, {number(metric, high)}]"


def verdict(delta: M.MetricDelta) -> tuple[str, str]:
    """Whether the candidate is better on a metric, and a colour: counted only when the
    difference's interval leaves out zero."""
    if not (math.isfinite(delta.ci_low) and math.isfinite(delta.ci_high)):
        return "no interval", "dim"
    if delta.ci_low <= 0 <= delta.ci_high:
        return "no clear difference", "dim"
    lower = LOWER_IS_BETTER.get(delta.metric)
    if lower is None:
        return ("longer" if delta.delta > 0 else "shorter"), "dim"
    return ("better", "green") if (delta.delta < 0) == lower else ("worse", "red")


# Runs.


def _request(
    model: str,
    dataset_version: str,
    metrics: Sequence[MetricName] | None,
    max_samples: int = 0,
    max_new_tokens: int = 0,
    task_check: CheckName | None = None,
    pattern: str = "",
    seed: int = 0,
) -> M.CreateEvalRunRequest:
    request = M.CreateEvalRunRequest(
        model_id=model,
        dataset_version_id=dataset_version,
        metrics=[METRICS[m] for m in metrics or [MetricName.PERPLEXITY]],
        max_samples=max_samples,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    if task_check is not None:
        request.task_check.CopyFrom(M.TaskCheck(kind=CHECKS[task_check], pattern=pattern))
    return request


def wait_for_run(ownchat: OwnchatClient, run: M.EvalRun, label: str = "") -> M.EvalRun:
    """Shows a run's progress until it ends; returns the ended run."""
    label = label or f"evaluating {run.model_id}"
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(escape(label), total=None, unit="")
        while run.state not in ENDED:
            time.sleep(0.5)
            run = ownchat.evaluator.GetEvalRun(M.GetEvalRunRequest(eval_run_id=run.id)).eval_run
            progress.update(
                task,
                completed=run.progress.completed,
                total=run.progress.total or None,
                unit=run.progress.unit,
            )
    return run


def run_evaluation(
    ownchat: OwnchatClient,
    model: str,
    dataset_version: str,
    max_samples: int = 0,
    metrics: Sequence[MetricName] | None = None,
    max_new_tokens: int = 0,
    task_check: CheckName | None = None,
    pattern: str = "",
    seed: int = 0,
) -> M.EvalRun:
    """Starts an evaluation run (perplexity unless told) and waits for it, showing progress."""
    request = _request(
        model, dataset_version, metrics, max_samples, max_new_tokens, task_check, pattern, seed
    )
    run = ownchat.evaluator.CreateEvalRun(request, timeout=600).eval_run
    return wait_for_run(ownchat, run)


def _succeeded(run: M.EvalRun) -> M.EvalRun:
    if run.state != M.EVAL_RUN_STATE_SUCCEEDED:
        error_console.print(f"[red]evaluation {run.id} failed[/red]: {escape(run.error)}")
        raise typer.Exit(1)
    return run


def print_results(run: M.EvalRun) -> None:
    """Each metric of a run with its interval, and how it was computed."""
    wall = run.timings_seconds.get("wall_seconds")
    took = f" in {wall:.1f} s" if wall is not None else ""
    console.print(
        f"run [bold]{run.id}[/bold]: {escape(run.model_id)} on {run.dataset_version_id}, "
        f"computed{took} on {run.device or 'an unknown device'}"
    )
    for result in run.results:
        low = result.ci_low if result.HasField("ci_low") else None
        high = result.ci_high if result.HasField("ci_high") else None
        console.print(
            f"  {metric_name(result.metric)} [bold]{number(result.metric, result.value)}[/bold]"
            f"  {interval(result.metric, low, high)}"
        )
        console.print(f"  [dim]{escape(result.details)}[/dim]", highlight=False, soft_wrap=True)


MetricOption = Annotated[
    list[MetricName] | None,
    typer.Option(
        "--metric",
        help="A metric to compute (repeatable): perplexity, bleu, chrf, task-accuracy, "
        "response-length, refusal-rate. Perplexity when none.",
    ),
]
MaxSamplesOption = Annotated[int, typer.Option(help="Use at most this many samples; 0 for all.")]
MaxNewTokensOption = Annotated[
    int, typer.Option(help="Tokens generated at most per reply; the evaluator's default when 0.")
]
TaskCheckOption = Annotated[
    CheckName | None,
    typer.Option(
        help="For task-accuracy on samples without an expected answer: compare the reply "
        "with the reference (exact, contains, or regex with --pattern)."
    ),
]
PatternOption = Annotated[
    str, typer.Option(help="With --task-check regex: the pattern extracting the answer.")
]
SeedOption = Annotated[int, typer.Option(help="Seed of the confidence intervals.")]


@eval_app.command("run")
@reports_rpc_errors
def eval_run(
    model: Annotated[str, typer.Option(help="Model version to evaluate.")],
    dataset_version: Annotated[str, typer.Option(help="Its validation split is used.")],
    metric: MetricOption = None,
    max_samples: MaxSamplesOption = 0,
    max_new_tokens: MaxNewTokensOption = 0,
    task_check: TaskCheckOption = None,
    pattern: PatternOption = "",
    seed: SeedOption = 0,
) -> None:
    """Evaluate a model version on a dataset version's validation split."""
    with client() as ownchat:
        run = run_evaluation(
            ownchat,
            model,
            dataset_version,
            max_samples,
            metric,
            max_new_tokens,
            task_check,
            pattern,
            seed,
        )
    print_results(_succeeded(run))


@eval_app.command("list")
@reports_rpc_errors
def eval_list(
    model: Annotated[str, typer.Option(help="Only the runs of this model version.")] = "",
    limit: Annotated[int, typer.Option(help="Show at most this many, newest first.")] = 20,
) -> None:
    """List evaluation runs, newest first."""
    with client() as ownchat:
        runs = ownchat.evaluator.ListEvalRuns(
            M.ListEvalRunsRequest(page_size=limit, model_id=model)
        ).eval_runs
    table = Table("run", "model", "dataset version", "state", "metrics", "created")
    for run in runs:
        table.add_row(
            run.id,
            escape(run.model_id),
            run.dataset_version_id,
            M.EvalRunState.Name(run.state).removeprefix("EVAL_RUN_STATE_"),
            ", ".join(f"{metric_name(r.metric)} {number(r.metric, r.value)}" for r in run.results)
            or ", ".join(metric_name(m) for m in run.metrics),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(run.create_time.seconds)),
        )
    console.print(table)


# Comparisons.


def _reusable(
    ownchat: OwnchatClient, model: str, dataset_version: str, wanted: M.CreateEvalRunRequest
) -> M.EvalRun | None:
    """The newest finished run of ``model`` measured as ``wanted`` asks, if any.

    Fields of ``wanted`` left at zero match anything; set ones must be equal.
    """
    response = ownchat.evaluator.ListEvalRuns(M.ListEvalRunsRequest(model_id=model, page_size=200))
    for run in response.eval_runs:
        if run.state != M.EVAL_RUN_STATE_SUCCEEDED or run.dataset_version_id != dataset_version:
            continue
        if not set(wanted.metrics) <= set(run.metrics) or run.max_samples != wanted.max_samples:
            continue
        generates = any(m in GENERATION_METRICS for m in wanted.metrics)
        fixed = [
            (wanted.max_new_tokens, run.max_new_tokens) if generates else (0, 0),
            (wanted.context_length, run.context_length),
            (wanted.stride, run.stride),
        ]
        if any(want and want != have for want, have in fixed):
            continue
        if wanted.HasField("task_check") and (
            not run.HasField("task_check") or run.task_check != wanted.task_check
        ):
            continue
        if wanted.refusal_patterns and list(wanted.refusal_patterns) != list(run.refusal_patterns):
            continue
        return run
    return None


def _like(run: M.EvalRun, model: str) -> M.CreateEvalRunRequest:
    """A request measuring ``model`` as ``run`` measured its model, so the two compare."""
    request = M.CreateEvalRunRequest(
        model_id=model,
        dataset_version_id=run.dataset_version_id,
        metrics=list(run.metrics),
        max_samples=run.max_samples,
        context_length=run.context_length,
        stride=run.stride,
        seed=run.seed,
    )
    if any(m in GENERATION_METRICS for m in run.metrics):
        request.max_new_tokens = run.max_new_tokens
        request.refusal_patterns.extend(run.refusal_patterns)
    if run.HasField("task_check"):
        request.task_check.CopyFrom(run.task_check)
    return request


def _obtain(
    ownchat: OwnchatClient, request: M.CreateEvalRunRequest, reuse: bool, role: str
) -> M.EvalRun:
    """A finished run as ``request`` asks: reused when one exists (and ``reuse``), else made."""
    found = (
        _reusable(ownchat, request.model_id, request.dataset_version_id, request) if reuse else None
    )
    if found is not None:
        console.print(f"{role} {escape(request.model_id)}: reusing run {found.id}")
        return found
    run = ownchat.evaluator.CreateEvalRun(request, timeout=600).eval_run
    console.print(f"{role} {escape(request.model_id)}: run {run.id}")
    return _succeeded(wait_for_run(ownchat, run, f"evaluating {role} {request.model_id}"))


@eval_app.command("compare")
@reports_rpc_errors
def eval_compare(
    baseline: Annotated[str, typer.Argument(help="The current model version.")],
    candidate: Annotated[str, typer.Argument(help="The model version that would replace it.")],
    dataset_version: Annotated[
        str, typer.Option(help="Both are evaluated on its validation split.")
    ],
    metric: MetricOption = None,
    max_samples: MaxSamplesOption = 0,
    max_new_tokens: MaxNewTokensOption = 0,
    task_check: TaskCheckOption = None,
    pattern: PatternOption = "",
    seed: SeedOption = 0,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples; 1000 when 0.")] = 0,
    reuse: Annotated[
        bool, typer.Option(help="Reuse finished runs that measured the same way.")
    ] = True,
) -> None:
    """Compare two model versions on the same data: each metric's difference with its
    95% paired bootstrap interval, and which version is better."""
    wanted = _request(
        baseline, dataset_version, metric, max_samples, max_new_tokens, task_check, pattern
    )
    with client() as ownchat:
        base_run = _obtain(ownchat, wanted, reuse, "baseline")
        # The candidate is measured exactly as the baseline was, or the runs would not compare.
        cand_run = _obtain(ownchat, _like(base_run, candidate), reuse, "candidate")
        comparison = ownchat.evaluator.CompareModels(
            M.CompareModelsRequest(
                baseline_eval_run_id=base_run.id,
                candidate_eval_run_id=cand_run.id,
                resamples=resamples,
                seed=seed,
            ),
            timeout=600,
        )
    table = Table(
        "metric",
        "baseline",
        "candidate",
        "difference",
        "95% interval",
        "candidate is",
        title=f"{candidate} against {baseline} on {dataset_version}: {comparison.samples} "
        f"paired samples, {comparison.resamples} resamples",
    )
    outcome: dict[str, list[str]] = {}
    for delta in comparison.deltas:
        words, colour = verdict(delta)
        outcome.setdefault(words, []).append(metric_name(delta.metric))
        table.add_row(
            metric_name(delta.metric),
            number(delta.metric, delta.baseline_value),
            number(delta.metric, delta.candidate_value),
            number(delta.metric, delta.delta, signed=True),
            interval(delta.metric, delta.ci_low, delta.ci_high).removeprefix("95% CI "),
            f"[{colour}]{words}[/{colour}]",
        )
    console.print(table)
    better, worse = outcome.get("better", []), outcome.get("worse", [])
    if better and not worse:
        console.print(f"[green]{escape(candidate)} is better[/green] on {', '.join(better)}.")
    elif worse and not better:
        console.print(f"[red]{escape(candidate)} is worse[/red] on {', '.join(worse)}.")
    elif better and worse:
        console.print(
            f"{escape(candidate)} is [green]better[/green] on {', '.join(better)} and "
            f"[red]worse[/red] on {', '.join(worse)}."
        )
    else:
        console.print("Neither version is clearly better on these samples.")
    console.print(
        f"[dim]report: ownchat eval report {cand_run.id} --against {base_run.id} "
        "--output report.html[/dim]"
    )


# Reports.


@eval_app.command("report")
@reports_rpc_errors
def eval_report(
    run_id: Annotated[
        str, typer.Argument(help="The finished run (the candidate's, with --against).")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The HTML file to write; its PNGs go beside it.")
    ],
    against: Annotated[
        str, typer.Option(help="A baseline run on the same data: report a comparison.")
    ] = "",
    worst_examples: Annotated[
        int, typer.Option(help="Examples in each list of worst examples.")
    ] = 10,
) -> None:
    """Write the HTML report of a run, or of a run against a baseline run, with its plots."""
    request = M.RenderEvalReportRequest(worst_examples=worst_examples)
    if against:
        request.comparison.CopyFrom(
            M.EvalRunPair(baseline_eval_run_id=against, candidate_eval_run_id=run_id)
        )
    else:
        request.eval_run_id = run_id
    with client() as ownchat, console.status("rendering the report"):
        report = ownchat.evaluator.RenderEvalReport(request, timeout=600)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report.html, encoding="utf-8")
    console.print(f"wrote {output} ({len(report.html.encode()) // 1024} KiB, plots embedded)")
    for image in report.images:
        path = output.with_name(f"{output.stem}-{Path(image.name).name}")
        path.write_bytes(image.png)
        console.print(f"wrote {path}")


# The promotion gate.


def print_gate(verdict: M.CheckPromotionGateResponse) -> None:
    """Every check of the gate, passed or failed, with why."""
    if not verdict.checks:
        console.print(f"promotion gate: {escape(verdict.summary)}")
        return
    runs = f"run {verdict.eval_run_id or 'none'}" + (
        f" against run {verdict.baseline_eval_run_id}" if verdict.baseline_eval_run_id else ""
    )
    console.print(f"promotion gate ({runs}):")
    for check in verdict.checks:
        mark = "[green]pass[/green]" if check.passed else "[red]FAIL[/red]"
        console.print(
            f"  {mark} {check.name} ({escape(check.threshold)}): {escape(check.reason)}",
            highlight=False,
        )


@eval_app.command("gate")
@reports_rpc_errors
def eval_gate(
    model: Annotated[str, typer.Argument(help="The candidate model version.")],
    baseline: Annotated[
        str, typer.Option(help="The version it would replace (for regression and win rate).")
    ] = "",
    run: Annotated[str, typer.Option(help="The candidate's run; its newest when empty.")] = "",
    baseline_run: Annotated[
        str, typer.Option(help="The baseline's run; its newest on the same data when empty.")
    ] = "",
) -> None:
    """Check a model version against the promotion gate; exit 1 when a check fails."""
    with client() as ownchat:
        verdict = ownchat.evaluator.CheckPromotionGate(
            M.CheckPromotionGateRequest(
                model_id=model,
                eval_run_id=run,
                baseline_model_id=baseline,
                baseline_eval_run_id=baseline_run,
            )
        )
    print_gate(verdict)
    if not verdict.passed:
        error_console.print(f"[red]{escape(model)} fails the promotion gate[/red]")
        raise typer.Exit(1)
    console.print(f"[green]{escape(model)} passes the promotion gate[/green]")


def live_main_model(ownchat: OwnchatClient) -> str:
    """The model version of serving's live main deployment (not a canary); "" when none."""
    token = ""
    while True:
        response = ownchat.serving.ListDeployments(
            serving_pb2.ListDeploymentsRequest(page_size=200, page_token=token)
        )
        for deployment in response.deployments:
            if deployment.state == serving_pb2.DEPLOYMENT_STATE_LIVE and not (
                deployment.canary_percent
            ):
                return deployment.model_id
        token = response.next_page_token
        if not token:
            return ""


def consult_promotion_gate(ownchat: OwnchatClient, model: str) -> None:
    """Checks ``model`` against the gate with the live version as baseline; prints every
    check. Raises ``typer.Exit(1)`` when a check fails or the gate cannot be consulted."""
    live = live_main_model(ownchat)
    baseline = live if live != model else ""
    try:
        verdict = ownchat.evaluator.CheckPromotionGate(
            M.CheckPromotionGateRequest(model_id=model, baseline_model_id=baseline), timeout=60
        )
    except grpc.RpcError as error:
        described = describe_rpc_error(error)
        if described.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            why = (
                f"the promotion gate could not be consulted: the evaluator at "
                f"{ownchat.settings.evaluator_address} is unreachable ({described.code.name})"
            )
        else:
            why = f"the promotion gate answered with an error: {described}"
        error_console.print(
            f"[red]not deployed[/red]: {escape(why)}. --skip-gate deploys without the gate."
        )
        raise typer.Exit(1) from None
    if baseline:
        console.print(f"live version: {escape(baseline)}")
    print_gate(verdict)
    if not verdict.passed:
        failed = "; ".join(f"{c.name} ({c.threshold})" for c in verdict.checks if not c.passed)
        error_console.print(
            f"[red]not deployed[/red]: {escape(model)} fails the promotion gate on "
            f"{escape(failed)}. --skip-gate deploys anyway.",
            highlight=False,
        )
        raise typer.Exit(1)


# The review queue.

KIND_NAMES = {
    M.REVIEW_KIND_RATING: "rating",
    M.REVIEW_KIND_PAIRWISE: "pairwise",
    M.REVIEW_KIND_CORRECTION: "correction",
}


def _optional(message: object, field: str, digits: int = 3) -> str:
    value = getattr(message, field) if message.HasField(field) else None  # type: ignore[attr-defined]
    return "undefined" if value is None else f"{value:.{digits}f}"


@queue_app.callback(invoke_without_command=True)
@reports_rpc_errors
def queue(
    context: typer.Context,
    candidate: Annotated[
        str, typer.Option(help="Also show the human win rate of this model version...")
    ] = "",
    baseline: Annotated[str, typer.Option(help="...over this one.")] = "",
) -> None:
    """The review queue's counts, reviews per reviewer and inter-annotator agreement."""
    if context.invoked_subcommand is not None:
        return
    with client() as ownchat:
        stats = ownchat.evaluator.GetReviewStats(
            M.GetReviewStatsRequest(candidate_model_id=candidate, baseline_model_id=baseline)
        )
    counts = Table("kind", "open", "leased", "done", "reviews", title="review queue")
    for row in stats.counts:
        counts.add_row(
            KIND_NAMES.get(row.kind, "?"),
            str(row.open_items),
            str(row.leased_items),
            str(row.done_items),
            str(row.reviews),
        )
    console.print(counts)
    if stats.reviewers:
        people = Table("reviewer", "reviews", title="reviews per reviewer")
        for reviewer in stats.reviewers:
            people.add_row(escape(reviewer.reviewer), str(reviewer.reviews))
        console.print(people)
    for agreement in stats.agreement:
        if not agreement.items:
            continue
        kind = KIND_NAMES.get(agreement.kind, "?")
        console.print(
            f"agreement on {kind}: Krippendorff's alpha "
            f"{_optional(agreement, 'krippendorff_alpha')} over {agreement.items} items "
            "reviewed at least twice"
        )
        for pair in agreement.pairs:
            console.print(
                f"  {escape(pair.reviewer_a)} / {escape(pair.reviewer_b)}: Cohen's kappa "
                f"{_optional(pair, 'cohen_kappa')} over {pair.items} items"
            )
    if stats.HasField("win_rate"):
        rate = stats.win_rate
        console.print(
            f"human win rate of {escape(rate.candidate_model_id)} over "
            f"{escape(rate.baseline_model_id)}: {_optional(rate, 'rate')} "
            f"({rate.wins} wins, {rate.ties} ties, {rate.losses} losses in {rate.reviews} reviews)"
        )


@queue_app.command("enqueue-sample")
@reports_rpc_errors
def queue_enqueue_sample(
    dataset_version: Annotated[str, typer.Option(help="The chat dataset version to sample.")],
    count: Annotated[int, typer.Option(help="Conversations to sample (1 to 1000).")],
    kind: Annotated[SampleKind, typer.Option(help="rating or correction.")] = SampleKind.RATING,
    train: Annotated[
        bool, typer.Option("--train", help="Sample the training split, not validation.")
    ] = False,
    seed: Annotated[int, typer.Option(help="The same seed samples the same conversations.")] = 0,
    priority: Annotated[int, typer.Option(help="Higher is offered first.")] = 0,
    reviews_wanted: Annotated[
        int, typer.Option(help="Reviewers per item; the evaluator's default when 0.")
    ] = 0,
) -> None:
    """Enqueue a seeded sample of a dataset version's conversations for review."""
    with client() as ownchat:
        response = ownchat.evaluator.EnqueueDatasetSample(
            M.EnqueueDatasetSampleRequest(
                dataset_version_id=dataset_version,
                split=data_pb2.SPLIT_TRAIN if train else data_pb2.SPLIT_VALIDATION,
                count=count,
                seed=seed,
                kind=M.REVIEW_KIND_CORRECTION
                if kind is SampleKind.CORRECTION
                else M.REVIEW_KIND_RATING,
                priority=priority,
                reviews_wanted=reviews_wanted,
            ),
            timeout=300,
        )
    console.print(f"enqueued {len(response.item_ids)} {kind.value} item(s)")
    if response.skipped:
        console.print(f"skipped {response.skipped} conversation(s) with no reply to review")
