"""``ownchat``: start the services and drive them.

ownchat up                      start all five services, Ctrl-C stops them
ownchat down                    stop what an `ownchat up` left running (it was killed)
ownchat demo                    the whole loop on the sample data
ownchat data ingest FILE... --dataset NAME    several files become one chat version
ownchat train create --base smollm2-135m-instruct --dataset-version dsv_...
ownchat eval run --model MODEL --dataset-version dsv_... [--metric bleu ...]
ownchat eval compare BASELINE CANDIDATE --dataset-version dsv_...
ownchat eval report RUN_ID [--against RUN_ID] --output report.html
ownchat eval gate MODEL [--baseline MODEL]
ownchat eval queue
ownchat deploy MODEL            consults the promotion gate first (--skip-gate to deploy anyway)
ownchat chat "How do I reset my router?"
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ownchat.cli.archive import CHAT_SOURCE_SUFFIXES, pack_sources
from ownchat.cli.capture import capture_app
from ownchat.cli.certs import certs_app
from ownchat.cli.common import (
    client,
    console,
    error_console,
    follow_job,
    reports_rpc_errors,
    upload_progress,
    upload_requests,
)
from ownchat.cli.erasure import erase_captured_and_reviews
from ownchat.cli.evaluate import consult_promotion_gate, eval_app
from ownchat.cli.keys import keys_app
from ownchat.cli.stack_record import records, stop_stack
from ownchat.cli.supervisor import (
    SERVICE_MODULES,
    StartupError,
    Supervisor,
    service_status,
    stop_on_signals,
)
from ownchat.client import OwnchatClient
from ownchat.common.v1 import common_pb2
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2
from ownchat.serving.v1 import serving_pb2
from ownchat.trainer.v1 import trainer_pb2

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Datasets and their versions.", no_args_is_help=True)
train_app = typer.Typer(help="Fine-tuning jobs.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(capture_app, name="capture")
app.add_typer(certs_app, name="certs")


def _where(name: str, settings: ClientSettings) -> str:
    return settings.gateway_url if name == "gateway" else settings.address(name)


@app.command()
def up(
    only: Annotated[
        list[str] | None, typer.Option(help="Start only these services (repeatable).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for health.")] = 180,
) -> None:
    """Start the services, wait until each is healthy, and stop them all on Ctrl-C."""
    names = only or list(SERVICE_MODULES)
    unknown = [n for n in names if n not in SERVICE_MODULES]
    if unknown:
        raise typer.BadParameter(f"unknown service(s): {', '.join(unknown)}")
    settings = ClientSettings()
    supervisor = Supervisor(settings)
    stop_on_signals()
    try:
        supervisor.start(names)
        with console.status("starting " + ", ".join(names)):
            supervisor.wait_healthy(
                timeout,
                on_ready=lambda name: console.print(
                    f"[green]ready[/green] {name:<10} {_where(name, settings)}"
                ),
            )
        console.print(f"all services up; state in {settings.home}. Ctrl-C stops them.")
        while all(p.process.poll() is None for p in supervisor.processes):
            time.sleep(0.5)
        dead = [p for p in supervisor.processes if p.process.poll() is not None]
        for service in dead:
            error_console.print(
                f"[red]{service.name} exited[/red] (code {service.process.returncode}):\n"
                f"{service.log_tail()}"
            )
        raise typer.Exit(1)
    except StartupError as error:
        error_console.print(f"[red]error[/red] {error}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        supervisor.stop()
    console.print("all services stopped")


@app.command()
def down(
    grace: Annotated[float, typer.Option(help="Seconds each service gets to drain.")] = 15,
) -> None:
    """Stop the services an `ownchat up` started, also when it was killed and left them."""
    settings = ClientSettings()
    found, unreadable = records(settings.home)
    for error in unreadable:
        error_console.print(f"[yellow]skipped[/yellow] {error}")
    stopped = []
    for record in found:
        if not record.running():
            record.path.unlink(missing_ok=True)  # it ended without removing its record
            continue
        console.print(
            f"stopping {', '.join(record.names)} (`ownchat up`, pid {record.supervisor.pid})…"
        )
        stop_stack(record, grace)
        stopped.extend(record.names)
    answering = [n for n in SERVICE_MODULES if service_status(n, settings) != "UNREACHABLE"]
    if answering:
        error_console.print(
            f"[red]still answering[/red]: {', '.join(answering)}, not started by `ownchat up`"
            f" with the home {settings.home}; stop them where they were started"
        )
        raise typer.Exit(1)
    console.print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status() -> None:
    """Show whether each service answers its health check."""
    settings = ClientSettings()
    table = Table("service", "address", "health")
    for name in SERVICE_MODULES:
        health = service_status(name, settings)
        colour = "green" if health == "SERVING" else "red"
        table.add_row(name, _where(name, settings), f"[{colour}]{health}[/{colour}]")
    console.print(table)


FORMATS = {
    "openai": data_pb2.SOURCE_FORMAT_OPENAI_CHAT_JSONL,
    "sharegpt": data_pb2.SOURCE_FORMAT_SHAREGPT_JSON,
    "csv": data_pb2.SOURCE_FORMAT_CSV_TRANSCRIPT,
    "preference": data_pb2.SOURCE_FORMAT_PREFERENCE_JSONL,
    "document": data_pb2.SOURCE_FORMAT_DOCUMENT,
    "faq": data_pb2.SOURCE_FORMAT_FAQ,
    "archive": data_pb2.SOURCE_FORMAT_ARCHIVE,
}
PII_MODES = {
    "placeholder": data_pb2.PII_MODE_PLACEHOLDER,
    "redact": data_pb2.PII_MODE_REDACT,
    "pseudonymize": data_pb2.PII_MODE_PSEUDONYMIZE,
    "off": data_pb2.PII_MODE_OFF,
}
FORMAT_BY_SUFFIX = {
    ".jsonl": "openai",
    ".json": "sharegpt",
    ".csv": "csv",
    ".txt": "document",
    ".md": "document",
    ".html": "document",
    ".htm": "document",
    ".zip": "archive",
    ".tar": "archive",
    ".tgz": "archive",
    ".tar.gz": "archive",
}


def _format_by_name(path: Path) -> str | None:
    """The format a single file's name suggests (``.tar.gz`` is an archive)."""
    name = path.name.lower()
    return next((f for suffix, f in FORMAT_BY_SUFFIX.items() if name.endswith(suffix)), None)


def print_histogram(buckets: Iterable[data_pb2.LengthBucket]) -> None:
    """Samples per token-count bucket, one line per bucket that has any."""
    lower = 0
    for bucket in buckets:
        if bucket.samples:
            upper = f"{bucket.below_tokens - 1}" if bucket.below_tokens else "+"
            console.print(f"  {lower:>5}-{upper:<5} tokens: {bucket.samples} samples")
        lower = bucket.below_tokens


@data_app.command("ingest")
@reports_rpc_errors
def data_ingest(
    files: Annotated[
        list[Path],
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="FILE",
            help="One source file, or several chat sources (.jsonl, .json, .csv, and "
            ".html/.htm/.md read as FAQs) packed into one archive upload.",
            show_default=False,
        ),
    ],
    dataset: Annotated[str, typer.Option(help="Dataset to add the version to.")],
    format: Annotated[
        str | None,
        typer.Option(
            help="One file only: openai, sharegpt, csv, preference, document, faq or archive; "
            "by file name if unset (.html/.htm/.md are documents, .zip/.tar/.tar.gz/.tgz "
            "archives)."
        ),
    ] = None,
    pii: Annotated[
        str, typer.Option(help="placeholder, redact, pseudonymize or off: personal data handling.")
    ] = "placeholder",
    language: Annotated[
        list[str] | None,
        typer.Option(help="Keep only conversations in this language (ISO 639-1; repeatable)."),
    ] = None,
    skip_bad_records: Annotated[
        bool, typer.Option(help="Skip and report bad records instead of refusing the file.")
    ] = False,
    validation_fraction: Annotated[
        float,
        typer.Option(help="Share held out, 0 to 1; 1 makes an evaluation-only version."),
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    csv_conversation_column: Annotated[str, typer.Option(help="CSV: conversation id.")] = "",
    csv_role_column: Annotated[str, typer.Option(help="CSV: author column.")] = "",
    csv_content_column: Annotated[str, typer.Option(help="CSV: message column.")] = "",
    csv_order_column: Annotated[str, typer.Option(help="CSV: ordering column.")] = "",
    base: Annotated[
        str,
        typer.Option(
            help="Base model the data is for: count tokens with its template and remove "
            "samples longer than its context."
        ),
    ] = "",
    max_tokens: Annotated[
        int, typer.Option(help="With --base: remove samples over this many tokens.")
    ] = 0,
) -> None:
    """Upload source files as one dataset version.

    One file: chat JSONL, ShareGPT, CSV transcript, preferences, a document, an
    FAQ page (--format faq) or an archive of chat sources. Several files: a
    team's mixed support history (chat exports, CSV transcripts, FAQ pages) as
    one chat version; they are packed into one tar and uploaded as an archive.
    Their .html/.htm/.md files are read as FAQs, since a document's plain text
    cannot be mixed into a chat version.
    """
    if pii not in PII_MODES:
        raise typer.BadParameter(f"--pii must be one of {', '.join(PII_MODES)}")
    with contextlib.ExitStack() as scratch:
        if len(files) > 1:
            if format is not None:
                raise typer.BadParameter(
                    "--format names one file's format; several files are packed into an "
                    f"archive, each read by its name ({', '.join(CHAT_SOURCE_SUFFIXES)})"
                )
            folder = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="ownchat-")))
            source = folder / "sources.tar"
            file_name = f"{dataset}-sources.tar"
            try:
                with source.open("wb") as target:
                    pack_sources(files, target)
            except ValueError as error:
                raise typer.BadParameter(str(error)) from None
            chosen: str | None = "archive"
        else:
            [source] = files
            file_name = source.name
            chosen = format or _format_by_name(source)
        if chosen not in FORMATS:
            raise typer.BadParameter(
                f"say which format {source.name} is with --format ({', '.join(FORMATS)})"
            )
        header = data_pb2.UploadHeader(
            dataset_name=dataset,
            file_name=file_name,
            format=FORMATS[chosen],
            validation_fraction=validation_fraction,
            split_seed=seed,
            bad_record_policy=(
                data_pb2.BAD_RECORD_POLICY_SKIP_AND_REPORT
                if skip_bad_records
                else data_pb2.BAD_RECORD_POLICY_REJECT_ALL
            ),
            sanitize=data_pb2.SanitizeOptions(
                pii_mode=PII_MODES[pii], languages=language or [], max_tokens=max_tokens
            ),
            base_model=base,
            csv_columns=data_pb2.CsvColumns(
                conversation_id=csv_conversation_column,
                role=csv_role_column,
                content=csv_content_column,
                order=csv_order_column,
            ),
        )
        with client() as ownchat, upload_progress() as progress:
            response = ownchat.data.UploadDatasetVersion(
                upload_requests(source, header, progress), timeout=3600
            )
    version = response.dataset_version
    console.print(
        f"dataset version [bold]{version.id}[/bold]: {version.stats.samples} samples "
        f"({version.stats.train_samples} train, {version.stats.validation_samples} validation)"
    )
    if version.stats.tokenizer:
        console.print(f"{version.stats.tokens} tokens with {version.stats.tokenizer}'s template")
        print_histogram(version.stats.length_histogram)
    report = version.sanitization
    for step, count in sorted(report.changed.items()):
        console.print(f"  {step.replace('_', ' ')}: {count} message(s)")
    for reason, count in sorted(report.removed.items()):
        console.print(f"  removed ({reason.replace('_', ' ')}): {count} sample(s)")
    if version.stats.skipped_records:
        console.print(f"skipped {version.stats.skipped_records} bad record(s):")
        for issue in version.skipped:
            console.print(f"  record {issue.record}: {issue.reason}")


@data_app.command("lint")
@reports_rpc_errors
def data_lint(
    version_id: str,
    base: Annotated[str, typer.Option(help="Base model whose template applies.")] = (
        "smollm2-135m-instruct"
    ),
    max_samples: Annotated[int, typer.Option(help="Per split; 0 for all.")] = 0,
) -> None:
    """Pre-flight check: render samples through the model's chat template."""
    with client() as ownchat:
        report = ownchat.data.LintDatasetVersion(
            data_pb2.LintDatasetVersionRequest(
                dataset_version_id=version_id, base_model=base, max_samples=max_samples
            ),
            timeout=600,
        )
    console.print("first sample as the model sees it ([green]green[/green] carries loss):")
    for span in report.rendered_spans:
        style = "green" if span.loss else "dim"
        console.print(span.text, style=style, end="", markup=False, highlight=False)
    console.print()
    console.print(
        f"{report.samples_checked} samples, {report.total_tokens} tokens, "
        f"{report.loss_tokens} carrying loss; context {report.max_length}"
    )
    print_histogram(report.length_histogram)
    if report.too_long_records:
        console.print(f"[yellow]longer than the context[/yellow]: {list(report.too_long_records)}")
    if report.special_token_records:
        console.print(
            f"[yellow]holding special tokens[/yellow]: {list(report.special_token_records)}"
        )


@data_app.command("export")
@reports_rpc_errors
def data_export(
    version_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    split: Annotated[str, typer.Option(help="train or validation.")] = "train",
) -> None:
    """Download one split of a dataset version as JSON lines."""
    if split not in ("train", "validation"):
        raise typer.BadParameter("--split must be train or validation")
    request = data_pb2.ExportDatasetVersionRequest(
        dataset_version_id=version_id,
        split=data_pb2.SPLIT_VALIDATION if split == "validation" else data_pb2.SPLIT_TRAIN,
    )
    partial = output.with_name(output.name + ".partial")
    with client() as ownchat, partial.open("wb") as handle, upload_progress() as progress:
        version = ownchat.data.GetDatasetVersion(
            data_pb2.GetDatasetVersionRequest(dataset_version_id=version_id)
        ).dataset_version
        size = (
            version.validation_split if split == "validation" else version.train_split
        ).size_bytes
        task = progress.add_task("export", total=size)
        for response in ownchat.data.ExportDatasetVersion(request, timeout=3600):
            handle.write(response.chunk)
            progress.advance(task, len(response.chunk))
    partial.replace(output)
    console.print(f"wrote {output} ({output.stat().st_size} bytes)")


@data_app.command("erase")
@reports_rpc_errors
def data_erase(
    dataset: Annotated[str, typer.Option(help="The dataset to erase from.")],
    value: Annotated[
        list[str] | None, typer.Option(help="Erase every sample holding this value (repeatable).")
    ] = None,
    record: Annotated[
        list[str] | None,
        typer.Option(
            help="Erase samples from this source record, 'sha256:<hex>:<n>' (repeatable)."
        ),
    ] = None,
) -> None:
    """Right to erasure: a new version without the data, and every file holding it deleted.

    Values are also erased from the gateway's captured chats and the evaluator's
    review queue; the command fails when one of them could not be reached.
    """
    with client() as ownchat:
        response = ownchat.data.EraseRecords(
            data_pb2.EraseRecordsRequest(
                dataset_name=dataset, values=value or [], source_records=record or []
            ),
            timeout=3600,
        )
        console.print(
            f"removed {response.removed_samples} sample(s); new version "
            f"[bold]{response.dataset_version.id}[/bold]; audit record {response.audit_id}"
        )
        if response.erased_version_ids:
            console.print(
                f"versions whose files were deleted: {', '.join(response.erased_version_ids)}"
            )
        if response.blocked_model_ids:
            console.print(
                "models trained on them, now refused by deploy until retrained: "
                + ", ".join(response.blocked_model_ids)
            )
        # Source records name dataset files only; values can be anywhere.
        if value and not erase_captured_and_reviews(ownchat, value).complete:
            raise typer.Exit(1)


@data_app.command("list")
@reports_rpc_errors
def data_list() -> None:
    """List datasets."""
    with client() as ownchat:
        response = ownchat.data.ListDatasets(data_pb2.ListDatasetsRequest())
    table = Table("dataset", "versions", "latest version")
    for dataset in response.datasets:
        table.add_row(dataset.name, str(dataset.version_count), dataset.latest_version_id)
    console.print(table)


@data_app.command("show")
@reports_rpc_errors
def data_show(version_id: str) -> None:
    """Show one dataset version."""
    with client() as ownchat:
        version = ownchat.data.GetDatasetVersion(
            data_pb2.GetDatasetVersionRequest(dataset_version_id=version_id)
        ).dataset_version
    console.print(version)


_TRAINING_METHODS = {
    "full": trainer_pb2.TRAINING_METHOD_SFT_FULL,
    "lora": trainer_pb2.TRAINING_METHOD_SFT_LORA,
    "dpo": trainer_pb2.TRAINING_METHOD_DPO,
}


@train_app.command("create")
@reports_rpc_errors
def train_create(
    dataset_version: Annotated[str, typer.Option(help="Dataset version to train on.")],
    base: Annotated[str, typer.Option(help="Base model.")] = "smollm2-135m-instruct",
    method: Annotated[
        str,
        typer.Option(
            help="full: every weight; lora: a LoRA adapter; dpo: preference pairs "
            "(a LoRA adapter unless --lora-rank 0)."
        ),
    ] = "full",
    suffix: Annotated[str, typer.Option(help="Name part of the new version.")] = "",
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    epochs: Annotated[float | None, typer.Option()] = None,
    learning_rate: Annotated[float | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    max_seq_length: Annotated[int | None, typer.Option()] = None,
    lora_rank: Annotated[int | None, typer.Option(help="LoRA rank (lora, dpo).")] = None,
    lora_alpha: Annotated[float | None, typer.Option(help="LoRA alpha (lora, dpo).")] = None,
    dpo_beta: Annotated[float | None, typer.Option(help="DPO's beta (dpo).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    idempotency_key: Annotated[
        str, typer.Option(help="Retries with the same key create one job.")
    ] = "",
    follow: Annotated[bool, typer.Option(help="Show progress until the job ends.")] = True,
) -> None:
    """Fine-tune a base model on a dataset version."""
    if method not in _TRAINING_METHODS:
        error_console.print(f"--method must be one of {', '.join(_TRAINING_METHODS)}")
        raise typer.Exit(2)
    hyperparameters = trainer_pb2.Hyperparameters(
        max_steps=max_steps,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_seq_length=max_seq_length,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        dpo_beta=dpo_beta,
    )
    with client() as ownchat:
        job = ownchat.trainer.CreateTrainingJob(
            trainer_pb2.CreateTrainingJobRequest(
                base_model=base,
                dataset_version_id=dataset_version,
                method=_TRAINING_METHODS[method],
                hyperparameters=hyperparameters,
                seed=seed,
                suffix=suffix,
                idempotency_key=idempotency_key,
            ),
            timeout=600,
        ).job
        console.print(f"job [bold]{job.id}[/bold] {trainer_pb2.JobState.Name(job.state)}")
        if follow:
            job = follow_job(ownchat, job.id)
            _report_job(job)


def _report_job(job: trainer_pb2.TrainingJob) -> None:
    state = trainer_pb2.JobState.Name(job.state)
    if job.state == trainer_pb2.JOB_STATE_SUCCEEDED:
        console.print(f"job {job.id} {state}: model version [bold]{job.model_version}[/bold]")
    else:
        error_console.print(f"job {job.id} {state} {job.error}")
        raise typer.Exit(1)


@train_app.command("events")
@reports_rpc_errors
def train_events(job_id: str) -> None:
    """Follow a job's progress until it ends."""
    with client() as ownchat:
        _report_job(follow_job(ownchat, job_id))


@train_app.command("list")
@reports_rpc_errors
def train_list() -> None:
    """List training jobs."""
    with client() as ownchat:
        jobs = ownchat.trainer.ListTrainingJobs(trainer_pb2.ListTrainingJobsRequest()).jobs
    table = Table("job", "state", "method", "base", "dataset version", "model version")
    methods = {value: name for name, value in _TRAINING_METHODS.items()}
    for job in jobs:
        table.add_row(
            job.id,
            trainer_pb2.JobState.Name(job.state),
            methods.get(job.method, ""),
            job.base_model,
            job.dataset_version_id,
            job.model_version,
        )
    console.print(table)


@train_app.command("show")
@reports_rpc_errors
def train_show(job_id: str) -> None:
    """Show one training job."""
    with client() as ownchat:
        console.print(
            ownchat.trainer.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=job_id)).job
        )


@train_app.command("cancel")
@reports_rpc_errors
def train_cancel(job_id: str) -> None:
    """Cancel a training job."""
    with client() as ownchat:
        job = ownchat.trainer.CancelTrainingJob(
            trainer_pb2.CancelTrainingJobRequest(job_id=job_id)
        ).job
    console.print(f"job {job.id} {trainer_pb2.JobState.Name(job.state)}")


@train_app.command("pause")
@reports_rpc_errors
def train_pause(job_id: str) -> None:
    """Pause a training job; a running one saves a checkpoint first."""
    with client() as ownchat:
        job = ownchat.trainer.PauseTrainingJob(
            trainer_pb2.PauseTrainingJobRequest(job_id=job_id), timeout=60
        ).job
    state = trainer_pb2.JobState.Name(job.state)
    if job.state == trainer_pb2.JOB_STATE_RUNNING:
        state += " (saving a checkpoint, then PAUSED)"
    console.print(f"job {job.id} {state}")


@train_app.command("resume")
@reports_rpc_errors
def train_resume(
    job_id: str,
    follow: Annotated[bool, typer.Option(help="Show progress until the job ends.")] = False,
) -> None:
    """Resume a paused training job from its newest checkpoint."""
    with client() as ownchat:
        job = ownchat.trainer.ResumeTrainingJob(
            trainer_pb2.ResumeTrainingJobRequest(job_id=job_id)
        ).job
        console.print(f"job {job.id} {trainer_pb2.JobState.Name(job.state)}")
        if follow:
            _report_job(follow_job(ownchat, job.id))


@models_app.command("list")
@reports_rpc_errors
def models_list() -> None:
    """List base models and fine-tuned versions."""
    with client() as ownchat:
        models = ownchat.trainer.ListModels(trainer_pb2.ListModelsRequest(), timeout=600).models
    table = Table("model", "kind", "base", "dataset version")
    for model in models:
        kind = trainer_pb2.ModelKind.Name(model.kind).removeprefix("MODEL_KIND_").lower()
        table.add_row(model.id, kind, model.base_model, model.dataset_version_id)
    console.print(table)


@models_app.command("merge")
@reports_rpc_errors
def models_merge(model: str) -> None:
    """Merge a LoRA adapter version into its base as a new full version."""
    with client() as ownchat:
        merged = ownchat.trainer.MergeAdapter(
            trainer_pb2.MergeAdapterRequest(model_id=model), timeout=1800
        ).model
    console.print(f"merged into [bold]{merged.id}[/bold] (full, base {merged.base_model})")


ENGINES = {
    "vllm": serving_pb2.ENGINE_VLLM,
    "onnxruntime": serving_pb2.ENGINE_ONNXRUNTIME,
    "transformers": serving_pb2.ENGINE_TRANSFORMERS,
}


@app.command()
@reports_rpc_errors
def deploy(
    model: str,
    engine: Annotated[
        str, typer.Option(help="vllm, onnxruntime (small CPU deployments) or transformers.")
    ] = "vllm",
    canary: Annotated[
        str,
        typer.Option(
            help="Send this share of conversations (1% to 99%) to the version beside the live "
            "one; deploying the canary's version again without --canary promotes it."
        ),
    ] = "",
    skip_gate: Annotated[
        bool,
        typer.Option(
            "--skip-gate",
            help="Deploy without consulting the promotion gate (when it fails or the "
            "evaluator is down).",
        ),
    ] = False,
) -> None:
    """Load a model version into serving and move traffic to it, or a canary's share.

    The promotion gate is consulted first, with the live version as the baseline:
    a failed check, or an evaluator that cannot be reached, refuses the deployment.
    """
    import getpass

    if engine not in ENGINES:
        raise typer.BadParameter(f"--engine must be one of {', '.join(ENGINES)}")
    share = canary.strip().removesuffix("%").strip()
    if canary and not (share.isdigit() and 1 <= int(share) <= 99):
        raise typer.BadParameter("takes a share from 1% to 99%", param_hint="--canary")
    request = serving_pb2.DeployRequest(
        model_id=model,
        deployed_by=getpass.getuser() or "cli",
        engine=ENGINES[engine],
        canary_percent=int(share) if canary else 0,
    )
    with client() as ownchat:
        if skip_gate:
            console.print("[yellow]--skip-gate[/yellow]: deploying without the promotion gate")
        else:
            consult_promotion_gate(ownchat, model)
        with console.status(f"loading {model} on {engine}"):
            deployment = ownchat.serving.Deploy(request, timeout=900).deployment
    role = f"canary ({deployment.canary_percent}%)" if deployment.canary_percent else "main"
    console.print(
        f"deployment {deployment.id}: {deployment.model_id} "
        f"{serving_pb2.DeploymentState.Name(deployment.state).removeprefix('DEPLOYMENT_STATE_')}, "
        f"{role}, {deployment.traffic_percent}% of traffic"
    )


@app.command()
@reports_rpc_errors
def rollback() -> None:
    """End the canary; without one, move traffic back to the previously live version."""
    import getpass

    with client() as ownchat, console.status("rolling back"):
        deployment = ownchat.serving.Rollback(
            serving_pb2.RollbackRequest(deployed_by=getpass.getuser() or "cli"), timeout=900
        ).deployment
    console.print(f"live: {deployment.model_id}, {deployment.traffic_percent}% of traffic")


@app.command()
@reports_rpc_errors
def deployments(
    limit: Annotated[int, typer.Option(help="Show at most this many, newest first.")] = 50,
) -> None:
    """Show the live deployments (main and canary) and the history: who deployed what, when."""
    with client() as ownchat:
        response = ownchat.serving.ListDeployments(
            serving_pb2.ListDeploymentsRequest(page_size=limit)
        )
    table = Table("deployment", "model", "engine", "state", "traffic", "by", "when", "note")
    for item in response.deployments:
        state = serving_pb2.DeploymentState.Name(item.state).removeprefix("DEPLOYMENT_STATE_")
        engine = serving_pb2.Engine.Name(item.engine).removeprefix("ENGINE_").lower()
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item.create_time.seconds))
        notes = [f"canary {item.canary_percent}%"] if item.canary_percent else []
        if item.restart_count:
            notes.append(f"engine restarted {item.restart_count}x")
        if item.error:
            notes.append(item.error)
        table.add_row(
            item.id,
            item.model_id,
            engine,
            state,
            f"{item.traffic_percent}%",
            item.deployed_by,
            when,
            "; ".join(notes),
        )
    console.print(table)


@app.command()
@reports_rpc_errors
def chat(
    message: Annotated[
        str | None,
        typer.Argument(help="Ask this once and exit; without it, chat until /exit or Ctrl-D."),
    ] = None,
    model: Annotated[str, typer.Option(help="Model version; the live one when empty.")] = "",
    system: Annotated[str, typer.Option(help="A system message.")] = "",
    max_tokens: Annotated[int, typer.Option()] = 256,
    temperature: Annotated[float, typer.Option()] = 0.0,
) -> None:
    """Chat with the deployed model in the terminal; replies stream in as they are written.

    The conversation keeps one id, so a canary split answers it with one version
    throughout. /reset starts a new conversation; Ctrl-C stops a reply.
    """
    import uuid

    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from ownchat.errors import describe_rpc_error

    opening = (
        [common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=system)] if system else []
    )
    sampling = serving_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature)

    def retry_delay(error: grpc.RpcError) -> float | None:
        """The server's advice when it is at capacity, in seconds."""
        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
            return None
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return float(info.retry_delay.ToTimedelta().total_seconds())
        return 1.0

    def reply(ownchat: OwnchatClient, request: serving_pb2.GenerateRequest) -> str:
        """Streams one reply to the terminal; retries a busy server twice, as it advises."""
        for attempt in range(3):
            call = ownchat.serving.Generate(request, timeout=300)
            pieces: list[str] = []
            try:
                for piece in call:
                    console.print(piece.text, end="", soft_wrap=True, highlight=False, markup=False)
                    pieces.append(piece.text)
            except KeyboardInterrupt:
                call.cancel()
                console.print(" [dim](stopped)[/dim]")
                return "".join(pieces)
            except grpc.RpcError as error:
                delay = retry_delay(error)
                if delay is None or pieces or attempt == 2:
                    raise
                error_console.print(f"[yellow]serving is busy[/yellow]; retrying in {delay:.1f} s")
                time.sleep(delay)
                continue
            console.print()
            return "".join(pieces)
        raise AssertionError("unreachable")

    def request(
        turns: list[common_pb2.ChatMessage], conversation: str
    ) -> serving_pb2.GenerateRequest:
        return serving_pb2.GenerateRequest(
            model_id=model, messages=turns, sampling=sampling, conversation_id=conversation
        )

    with client() as ownchat:
        if message is not None:
            turn = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=message)
            reply(ownchat, request([*opening, turn], uuid.uuid4().hex))
            return
        console.print(
            f"[dim]Chatting with {model or 'the live deployment'}. /reset starts over, "
            "/exit or Ctrl-D quits, Ctrl-C stops a reply.[/dim]"
        )
        turns, conversation = list(opening), uuid.uuid4().hex
        while True:
            try:
                text = console.input("[bold green]you>[/bold green] ").strip()
            except (EOFError, KeyboardInterrupt):
                console.print()
                return
            if text in ("/exit", "/quit"):
                return
            if text == "/reset":
                turns, conversation = list(opening), uuid.uuid4().hex
                console.print("[dim]a new conversation[/dim]")
                continue
            if not text:
                continue
            turns.append(common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text))
            console.print("[bold blue]bot>[/bold blue] ", end="")
            try:
                answer = reply(ownchat, request(turns, conversation))
            except grpc.RpcError as error:
                console.print()
                error_console.print(f"[red]error[/red] {describe_rpc_error(error)}")
                turns.pop()
                continue
            turns.append(common_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, content=answer))


demo_app = typer.Typer(
    help="The main job on the sample data, then a follow-up trained on reviewer feedback.",
    invoke_without_command=True,
)
app.add_typer(demo_app, name="demo")
SAMPLE_DATA = Path("examples/support")


@demo_app.callback()
def demo(
    context: typer.Context,
    data_dir: Annotated[
        Path,
        typer.Option(
            help="The sample data: conversations.jsonl, transcripts.csv, faq.html, "
            "heldout.jsonl and planted.json."
        ),
    ] = SAMPLE_DATA,
    epochs: Annotated[float, typer.Option(help="LoRA fine-tuning epochs.")] = 2.0,
    gpu: Annotated[
        bool, typer.Option(help="Require a GPU (one is used anyway when the machine has one).")
    ] = False,
    keep_running: Annotated[bool, typer.Option(help="Leave the services up at the end.")] = False,
) -> None:
    """Ingest and sanitize, LoRA fine-tune, evaluate, gate, deploy, answer over REST, report."""
    if context.invoked_subcommand is not None:
        return
    from ownchat.cli.demo import DemoOptions, TrainingPlan, run_demo

    if epochs <= 0:
        raise typer.BadParameter("--epochs must be above 0")
    options = DemoOptions(
        data_dir=data_dir, plan=TrainingPlan(epochs=epochs), gpu=gpu, keep_running=keep_running
    )
    raise typer.Exit(run_demo(options))


@demo_app.command("feedback")
def demo_feedback(
    feedback: Annotated[
        Path, typer.Option(help="Scripted reviewer feedback: preference pairs and corrections.")
    ] = SAMPLE_DATA / "feedback.jsonl",
    keep_running: Annotated[bool, typer.Option(help="Leave the services up at the end.")] = False,
) -> None:
    """After `ownchat demo`: reviewers' preferences and corrections go through the review
    queue, a DPO follow-up trains on them, and it is compared with the live version."""
    from ownchat.cli.demo_feedback import run_feedback

    raise typer.Exit(run_feedback(feedback, keep_running))


def main() -> None:
    """The console script's entry point."""
    app()


if __name__ == "__main__":
    main()
