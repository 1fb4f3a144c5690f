"""Runs queued jobs one at a time, oldest first, each in its own worker process.

One thread takes the oldest QUEUED job, makes sure its base model is in the
registry, asks ``placement`` where it can run (the CPU, some GPUs, or not yet),
writes the worker's spec into the job's folder and starts
``python -m ownchat_trainer.worker`` (under torchrun when several processes
share the job). It reads the worker's JSON-line events from its stdout as they
come and records them; the worker's stderr goes to ``worker.log`` in the job's
folder.

The job's checkpoints folder, ``<jobs_dir>/<job_id>/checkpoints``, outlives
the worker: every start of a worker for the job resumes from the newest
complete checkpoint there. Each checkpoint's model is also copied into the
artifact store as it is written (ListCheckpoints). The folder is deleted when
the job succeeds or is cancelled, and kept when it fails.

How a run ends:

- "done": the model it names becomes a registered version; SUCCEEDED.
- "error": FAILED with the worker's reason.
- Paused on request (SIGTERM; the worker checkpoints and says "paused"): PAUSED.
- Cancelled (SIGKILL to every process of the worker): CANCELLED.
- The service stopping (SIGTERM, as for a pause): QUEUED again, to resume at
  the next start.
- Anything else (killed, out of memory): QUEUED again from the newest complete
  checkpoint, at most ``MAX_RESTARTS`` times in a row without a newer one;
  FAILED when there is no checkpoint to resume from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from ownchat.artifacts import ArtifactStore
from ownchat.errors import FailedPreconditionError, OwnchatError
from ownchat_trainer.placement import (
    GpuProbe,
    Placement,
    Strategy,
    choose_training_devices,
)
from ownchat_trainer.processes import (
    children_of,
    exit_description,
    kill_and_wait,
    process_tree,
    processes_with_argument,
    send,
)
from ownchat_trainer.records import (
    Checkpoint,
    EventKind,
    Job,
    JobState,
    Model,
    ModelKind,
    NewEvent,
    TrainingMethod,
)
from ownchat_trainer.registry import ModelRegistry
from ownchat_trainer.sizing import training_bytes
from ownchat_trainer.store import TrainerStore
from ownchat_trainer.worker import WorkerSpec

logger = logging.getLogger("ownchat.trainer.runner")

WORKER_MODULE = "ownchat_trainer.worker"
INTERRUPTED_BY_RESTART = "interrupted: the trainer restarted while the job ran"
INTERRUPTED_BY_STOP = "interrupted: the trainer stopped; the job resumes when it starts again"
LOG_NAME = "worker.log"
SPEC_NAME = "job-spec.json"
CHECKPOINTS_NAME = "checkpoints"
IDLE_WAIT_SECONDS = 1.0
MAX_RESTARTS = 3
"""Unexpected worker deaths in a row, without a newer checkpoint, that re-queue a job."""

# The rule of engine.checkpoint.is_complete, restated so that the service
# process never imports torch: a "step-<n>" directory with its marker.
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
_COMPLETE_MARKER = "COMPLETE"

Intent = Literal["pause", "cancel", "stop"]


@dataclass(frozen=True)
class RunnerOptions:
    """How the runner starts workers.

    ``gpus_per_job``: GPUs a job takes when the machine has them (one worker
    process a GPU, under torchrun when more than one; sharded with FSDP when
    no one GPU could hold the job, ``placement.choose_training_devices``). ``cpu_processes``:
    worker processes of a job on a machine without a GPU (more than one runs
    torchrun with gloo). ``stop_grace_seconds``: how long a worker asked to
    pause, or stopped with the service, may take to save its checkpoint before
    it is killed. ``gpu_probe``: where the GPUs are read (NVML when None).
    """

    torch_threads: int | None = None
    gpus_per_job: int = 1
    cpu_processes: int = 1
    stop_grace_seconds: float = 120.0
    placement_retry_seconds: float = 5.0
    deterministic: bool = False
    gpu_probe: GpuProbe | None = None


@dataclass
class _Outcome:
    """What the worker reported about its run."""

    done: dict[str, Any] | None = None
    paused_step: int | None = None
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def log_tail(path: Path, limit: int = 400) -> str:
    """The last non-empty line of a log, shortened, or empty."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    return lines[-1][-limit:] if lines else ""


def latest_complete_step(checkpoints_dir: Path) -> int | None:
    """The step of the newest complete checkpoint in a job's folder, or None."""
    if not checkpoints_dir.is_dir():
        return None
    steps = [
        int(match.group(1))
        for path in checkpoints_dir.iterdir()
        if (match := _CHECKPOINT_NAME.match(path.name)) and (path / _COMPLETE_MARKER).is_file()
    ]
    return max(steps, default=None)


class JobRunner:
    """The one thread that runs jobs, and the handles to pause or cancel the running one."""

    def __init__(
        self,
        store: TrainerStore,
        registry: ModelRegistry,
        artifacts: ArtifactStore,
        jobs_dir: Path,
        options: RunnerOptions,
    ) -> None:
        self._store = store
        self._registry = registry
        self._artifacts = artifacts
        self._jobs_dir = jobs_dir
        self._options = options
        self._lock = threading.Condition()
        self._stopping = False
        self._current: str | None = None
        self._process: subprocess.Popen[str] | None = None
        self._torchrun = False
        self._intent: Intent | None = None
        self._resume_after_pause = False
        # The job last told it waits for a GPU: told once per wait.
        self._waiting: str | None = None
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    def checkpoints_dir(self, job_id: str) -> Path:
        """The job's persistent checkpoints folder."""
        return self._jobs_dir / job_id / CHECKPOINTS_NAME

    def recover(self) -> None:
        """Re-queues the jobs a previous run of the service left running.

        A worker the previous run left behind (its service was killed) is
        killed first: it would write into the folder the new worker resumes from.
        """
        for job in self._store.jobs_in([JobState.VALIDATING, JobState.RUNNING]):
            if job.state is JobState.VALIDATING:
                # Stored only once validated; its queueing was not recorded.
                self._store.set_state(job.id, JobState.QUEUED, "queued after a restart")
                continue
            self._kill_strays(job.id)
            step = latest_complete_step(self.checkpoints_dir(job.id))
            resume = (
                f"resumes from the checkpoint at step {step}"
                if step is not None
                else "starts again from the beginning (no complete checkpoint)"
            )
            self._store.set_state(
                job.id,
                JobState.QUEUED,
                f"{INTERRUPTED_BY_RESTART}; it {resume}",
                device="",
                steps_done=step or 0,
            )
            logger.warning("job interrupted by a restart", extra={"job_id": job.id})

    def _kill_strays(self, job_id: str) -> None:
        strays = processes_with_argument(str(self._jobs_dir / job_id / SPEC_NAME))
        if strays:
            logger.warning("killing a worker left behind", extra={"job_id": job_id})
            kill_and_wait(strays)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Tells the runner a job was queued."""
        with self._lock:
            self._lock.notify_all()

    def stop(self) -> None:
        """Stops the running worker (it checkpoints; its job is queued again) and the thread."""
        with self._lock:
            self._stopping = True
            if self._intent is None:
                self._intent = "stop"
            self._terminate()
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=self._options.stop_grace_seconds + 30)

    def cancel(self, job_id: str) -> Job:
        """Cancels a job that is not running at once, or kills the running one's worker."""
        with self._lock:
            job = self._store.get_job(job_id)
            if job.state is JobState.RUNNING and self._current == job_id:
                self._intent = "cancel"
                if self._process is not None and self._process.poll() is None:
                    send(process_tree(self._process.pid), signal.SIGKILL)
                return job
            if job.state in (JobState.VALIDATING, JobState.QUEUED, JobState.PAUSED):
                self._remove_checkpoints(job_id)
                return self._store.set_state(
                    job_id, JobState.CANCELLED, f"cancelled while {job.state.value}"
                )
            return job

    def pause(self, job_id: str) -> Job:
        """Pauses a queued job at once, or asks the running one's worker to checkpoint and end."""
        with self._lock:
            job = self._store.get_job(job_id)
            if job.state in (JobState.VALIDATING, JobState.QUEUED):
                return self._store.set_state(job_id, JobState.PAUSED, "paused while queued")
            if job.state is JobState.RUNNING and self._current == job_id:
                self._resume_after_pause = False
                if self._intent is None:
                    self._intent = "pause"
                    self._store.append_event(
                        job_id,
                        NewEvent(
                            EventKind.MESSAGE,
                            "pausing: the worker saves a checkpoint after its current step",
                        ),
                    )
                    self._terminate()
            return job

    def resume(self, job_id: str) -> Job:
        """Queues a paused job again; its worker resumes from the newest checkpoint."""
        with self._lock:
            job = self._store.get_job(job_id)
            if job.state is JobState.PAUSED:
                step = latest_complete_step(self.checkpoints_dir(job_id))
                where = "from the start" if step is None else f"from the checkpoint at step {step}"
                job = self._store.set_state(
                    job_id, JobState.QUEUED, f"resumed: queued to continue {where}"
                )
                self._lock.notify_all()
            elif job.state is JobState.RUNNING and self._intent == "pause":
                # Still saving its checkpoint: queue it again once it has.
                self._resume_after_pause = True
            return job

    def _terminate(self) -> None:
        """Asks the worker to checkpoint and end (SIGTERM); kills it after the grace period.

        Called with the lock held; the runner thread reaps the process. Under
        torchrun the ranks get the signal, so that each finishes its step and
        torchrun sees them end normally.
        """
        process = self._process
        if process is None or process.poll() is not None:
            return
        targets = [process.pid]
        if self._torchrun:
            ranks = children_of().get(process.pid, [])
            targets = ranks or targets
        send(targets, signal.SIGTERM)
        grace = self._options.stop_grace_seconds

        def kill_later() -> None:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                logger.warning("worker did not end in time; killing it")
                send(process_tree(process.pid), signal.SIGKILL)

        threading.Thread(target=kill_later, daemon=True).start()

    def _next(self) -> Job | None:
        with self._lock:
            while not self._stopping:
                queued = self._store.jobs_in([JobState.QUEUED])
                if queued:
                    self._current = queued[0].id
                    self._intent = None
                    self._resume_after_pause = False
                    return queued[0]
                self._lock.wait(IDLE_WAIT_SECONDS)
            return None

    def _loop(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._run(job)
            except Exception as error:  # noqa: BLE001 - a job's failure must not end the loop
                logger.exception("job failed", extra={"job_id": job.id})
                self._finish_failed(job, f"internal error: {error}")
            finally:
                with self._lock:
                    self._current = None
                    self._process = None
                    self._torchrun = False

    def _message(self, job: Job, text: str) -> None:
        self._store.append_event(job.id, NewEvent(EventKind.MESSAGE, text))

    def _finish_failed(self, job: Job, reason: str) -> None:
        if not self._store.get_job(job.id).state.terminal:
            self._store.set_state(job.id, JobState.FAILED, f"failed: {reason}", error=reason)

    def _remove_checkpoints(self, job_id: str) -> None:
        shutil.rmtree(self.checkpoints_dir(job_id), ignore_errors=True)

    def _run(self, job: Job) -> None:
        job_dir = self._jobs_dir / job.id
        output_dir = job_dir / CHECKPOINTS_NAME
        output_dir.mkdir(parents=True, exist_ok=True)
        try:
            base = self._base_model(job)
            base_dir = self._artifacts.path(base.artifact.digest)
            placement = self._place(job, base_dir)
            if placement is None:
                return
            spec_path = job_dir / SPEC_NAME
            spec = self._spec(job, base_dir, output_dir, placement.strategy)
            spec_path.write_text(spec.to_json())
            command, env, processes = self._launch(placement, spec_path)
            with (job_dir / LOG_NAME).open("a") as log:
                with self._lock:
                    if self._stopping or self._store.get_job(job.id).state is not JobState.QUEUED:
                        return  # paused, cancelled or stopped while it was prepared
                    message = f"running on {placement.device}" + (
                        f" ({processes} processes)" if processes > 1 else ""
                    )
                    if placement.strategy == "fsdp":
                        message += f"; the training state is sharded: {placement.reason}"
                    job = self._store.set_state(
                        job.id, JobState.RUNNING, message, device=placement.device
                    )
                    self._waiting = None
                    process = self._start_worker(command, env, log)
                    self._process = process
                    self._torchrun = processes > 1
                try:
                    outcome = self._follow(job, process)
                except BaseException:
                    # Whatever failed here, no worker may go on without a reader.
                    send(process_tree(process.pid), signal.SIGKILL)
                    process.wait()
                    raise
                status = process.wait()
            self._conclude(job, base, status, outcome)
        except OwnchatError as error:
            # A base model that cannot be imported, a split gone from the store.
            self._finish_failed(job, error.message)

    def _base_model(self, job: Job) -> Model:
        if self._store.get_model(job.base_model) is not None:
            return self._registry.get(job.base_model)
        self._message(job, f"importing base model {job.base_model} (first use)")
        started = time.perf_counter()
        model = self._registry.get(job.base_model)
        self._message(job, f"base model ready in {time.perf_counter() - started:.1f} s")
        return model

    def _place(self, job: Job, base_dir: Path) -> Placement | None:
        """Where the job runs now; None when it waits (retried) or cannot run (failed)."""
        h = job.hyperparameters
        processes = self._options.gpus_per_job

        def required(shards: int) -> int:
            return training_bytes(
                base_dir,
                adapter=job.trains_adapter,
                dpo=job.method is TrainingMethod.DPO,
                batch_size=h.batch_size,
                max_seq_length=h.max_seq_length,
                processes=processes,
                shards=shards,
            )

        try:
            placement = choose_training_devices(required, processes, probe=self._options.gpu_probe)
        except (OSError, ValueError, KeyError) as error:
            raise FailedPreconditionError(
                f"the base model's files cannot be read: {error}"
            ) from None
        if placement.kind == "too_large":
            reason = f"the job does not fit this machine's GPUs; {placement.reason}"
            self._finish_failed(job, reason)
            return None
        if placement.kind == "wait":
            if self._waiting != job.id:
                self._message(job, f"waiting for a GPU: {placement.reason}")
            self._waiting = job.id
            with self._lock:
                self._lock.wait(self._options.placement_retry_seconds)
            return None
        return placement

    def _spec(self, job: Job, base_dir: Path, output_dir: Path, strategy: Strategy) -> WorkerSpec:
        h = job.hyperparameters
        return WorkerSpec(
            job_id=job.id,
            base_model_dir=base_dir,
            train_split=self._artifacts.path(job.train_split.digest),
            validation_split=self._artifacts.path(job.validation_split.digest),
            output_dir=output_dir,
            method=job.method.value,
            max_steps=h.max_steps,
            learning_rate=h.learning_rate,
            batch_size=h.batch_size,
            max_seq_length=h.max_seq_length,
            warmup_ratio=h.warmup_ratio,
            checkpoint_interval_steps=h.checkpoint_interval_steps,
            eval_interval_steps=h.eval_interval_steps,
            seed=job.seed,
            lora_rank=h.lora_rank,
            lora_alpha=h.lora_alpha,
            dpo_beta=h.dpo_beta if job.method is TrainingMethod.DPO else 0.1,
            deterministic=self._options.deterministic,
            torch_threads=self._options.torch_threads,
            strategy=strategy,
        )

    def _launch(
        self, placement: Placement, spec_path: Path
    ) -> tuple[list[str], dict[str, str], int]:
        """The worker's command line, environment and process count."""
        env = dict(os.environ)
        env.update(
            {
                "TOKENIZERS_PARALLELISM": "false",
                # Nothing is fetched at run time: every file the worker reads is local.
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            }
        )
        env.update(placement.worker_env())
        if self._options.torch_threads:
            env["OMP_NUM_THREADS"] = str(self._options.torch_threads)
        if placement.kind == "gpu" or self._options.cpu_processes <= 1:
            return (
                placement.worker_command(WORKER_MODULE, str(spec_path)),
                env,
                placement.processes,
            )
        processes = self._options.cpu_processes
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            "-m",
            WORKER_MODULE,
            str(spec_path),
        ]
        return command, env, processes

    def _start_worker(
        self, command: list[str], env: dict[str, str], log: IO[str]
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            # Its own session: a Ctrl-C meant for the service does not reach it;
            # the service ends it deliberately.
            start_new_session=True,
        )

    def _follow(self, job: Job, process: subprocess.Popen[str]) -> _Outcome:
        outcome = _Outcome()
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("worker wrote a non-event line", extra={"job_id": job.id})
                continue
            if isinstance(event, dict):
                try:
                    self._record(job, event, outcome)
                except (KeyError, TypeError, ValueError) as error:
                    logger.warning(
                        "worker event not understood",
                        extra={"job_id": job.id, "error": str(error)},
                    )
        return outcome

    def _record(self, job: Job, event: dict[str, Any], outcome: _Outcome) -> None:
        kind = event.get("event")
        if kind == "started":
            self._store.set_device(job.id, str(event.get("device", "")))
            resumed = event.get("resumed_from_step")
            if resumed is not None:
                self._message(job, f"resumed from the checkpoint at step {int(resumed)}")
            self._message(job, str(event.get("message", "")))
        elif kind == "metrics":
            self._record_metrics(job, event, outcome)
        elif kind == "checkpoint":
            self._store_checkpoint(job, event)
        elif kind == "paused":
            outcome.paused_step = int(event.get("step", 0))
        elif kind == "done":
            outcome.done = event
        elif kind == "error":
            outcome.error = str(event.get("message", ""))
        elif kind == "message":
            self._message(job, str(event.get("message", "")))

    def _record_metrics(self, job: Job, event: dict[str, Any], outcome: _Outcome) -> None:
        # DPO's reward statistics have no field of their own in a job event.
        rewards = {
            name: float(event[name])
            for name in ("reward_accuracy", "reward_margin")
            if event.get(name) is not None
        }
        outcome.metrics.update(rewards)
        message = ", ".join(
            f"{name.replace('_', ' ')} {value:.4g}" for name, value in rewards.items()
        )
        self._store.append_event(
            job.id,
            NewEvent(
                EventKind.METRICS,
                message,
                step=int(event["step"]),
                total_steps=int(event["total_steps"]),
                loss=_optional_float(event.get("loss")),
                validation_loss=_optional_float(event.get("validation_loss")),
                learning_rate=_optional_float(event.get("learning_rate")),
                tokens_per_second=_optional_float(event.get("tokens_per_second")),
                eta_seconds=_optional_float(event.get("eta_seconds")),
            ),
        )

    def _checked_model_path(self, job: Job, value: Any) -> Path:
        """A model directory the worker named: only ``<output_dir>/step-<n>/model`` is taken."""
        path = Path(str(value))
        step_dir = path.parent
        if (
            path.name != "model"
            or step_dir.parent != self.checkpoints_dir(job.id)
            or not _CHECKPOINT_NAME.match(step_dir.name)
        ):
            raise FailedPreconditionError(f"the worker named a model outside its folder: {path}")
        return path

    def _store_checkpoint(self, job: Job, event: dict[str, Any]) -> None:
        step = int(event["step"])
        path = self._checked_model_path(job, event["path"])
        try:
            artifact = self._artifacts.put_tree(path)
        except OSError as error:
            # The worker prunes old checkpoints; one may go before it is copied.
            self._message(job, f"the checkpoint at step {step} could not be stored: {error}")
            return
        checkpoint = Checkpoint(
            job_id=job.id,
            step=step,
            loss=_optional_float(event.get("loss")),
            validation_loss=_optional_float(event.get("validation_loss")),
            artifact=artifact,
            create_time=time.time(),
        )
        best = " (best validation loss so far)" if event.get("best") else ""
        self._store.add_checkpoint(
            checkpoint, f"checkpoint at step {step} stored as {artifact.digest}{best}"
        )

    def _conclude(self, job: Job, base: Model, status: int, outcome: _Outcome) -> None:
        with self._lock:
            intent = self._intent
            resume_after_pause = self._resume_after_pause
        if intent == "cancel":
            self._remove_checkpoints(job.id)
            self._store.set_state(job.id, JobState.CANCELLED, "cancelled on request")
        elif outcome.done is not None:
            self._register(job, base, outcome.done, outcome.metrics)
        elif outcome.error:
            self._finish_failed(job, outcome.error)
        elif intent == "stop":
            self._store.set_state(
                job.id, JobState.QUEUED, self._where(INTERRUPTED_BY_STOP, job, outcome)
            )
        elif intent == "pause":
            if resume_after_pause:
                self._store.set_state(
                    job.id, JobState.QUEUED, self._where("paused and resumed", job, outcome)
                )
            else:
                self._store.set_state(job.id, JobState.PAUSED, self._where("paused", job, outcome))
        else:
            self._after_crash(job, status, outcome)

    def _where(self, what: str, job: Job, outcome: _Outcome) -> str:
        step = latest_complete_step(self.checkpoints_dir(job.id))
        if outcome.paused_step is not None:
            step = outcome.paused_step
        if step is None:
            return f"{what}; no checkpoint yet, it starts from the beginning"
        return f"{what}; it resumes from the checkpoint at step {step}"

    def _after_crash(self, job: Job, status: int, outcome: _Outcome) -> None:
        """Re-queues a job whose worker ended without a word, if a checkpoint allows it."""
        job_dir = self._jobs_dir / job.id
        how = f"the worker {exit_description(status)} without reporting an end"
        tail = log_tail(job_dir / LOG_NAME)
        step = latest_complete_step(self.checkpoints_dir(job.id))
        if step is None:
            detail = f": {tail}" if tail else ""
            self._finish_failed(job, f"{how} and left no checkpoint{detail}")
            return
        current = self._store.get_job(job.id)
        restarts = 1 if step > current.restart_step else current.restarts + 1
        if restarts > MAX_RESTARTS:
            self._finish_failed(
                job,
                f"{how}, {restarts} times in a row without getting past the checkpoint at "
                f"step {step}" + (f": {tail}" if tail else ""),
            )
            return
        self._store.set_state(
            job.id,
            JobState.QUEUED,
            f"{how}; it resumes from the checkpoint at step {step} "
            f"(restart {restarts} of at most {MAX_RESTARTS} without progress)",
            steps_done=step,
            restarts=(restarts, step),
        )

    def _register(
        self, job: Job, base: Model, done: dict[str, Any], metrics: dict[str, float]
    ) -> None:
        try:
            path = self._checked_model_path(job, done.get("model_path"))
            kind = ModelKind(str(done.get("model_kind", "full")))
            if kind is ModelKind.BASE:
                raise ValueError("a base model")
            artifact = self._artifacts.put_tree(path)
        except (OwnchatError, ValueError, OSError) as error:
            reason = error.message if isinstance(error, OwnchatError) else str(error)
            self._finish_failed(job, f"the worker's model could not be registered: {reason}")
            return
        values = dict(metrics)
        for name in ("train_loss", "validation_loss"):
            if done.get(name) is not None:
                values[name] = float(done[name])
        note = ""
        if done.get("model_step") is not None:
            note = f" (the checkpoint at step {int(done['model_step'])})"
        if done.get("stopped_early"):
            note += "; stopped early: the validation loss stopped improving"
        adapter = kind is ModelKind.LORA_ADAPTER
        self._store.register_version(
            job,
            self._registry.root_base(base),
            artifact,
            values,
            "succeeded: {model}" + note,
            kind=kind,
            # An adapter's lineage is the model it applies to.
            base_model=base.id if adapter else None,
        )
        # Only now: until the version is registered, the folder is what a retry resumes from.
        self._remove_checkpoints(job.id)
