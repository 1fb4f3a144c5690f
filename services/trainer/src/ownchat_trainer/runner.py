"""Runs queued jobs one at a time, oldest first, each in its own worker process.

One thread takes the oldest QUEUED job, makes sure its base model is in the
registry, writes the worker's spec into the job's folder and starts
``python -m ownchat_trainer.worker``. It reads the worker's JSON-line events
from its stdout as they come and records them; the worker's stderr goes to
``worker.log`` in the job's folder. Checkpoints the worker saves are moved into
the artifact store; the final one becomes a registered model version.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ownchat.artifacts import Artifact, ArtifactStore
from ownchat.errors import FailedPreconditionError, OwnchatError
from ownchat_trainer.records import Checkpoint, EventKind, Job, JobState, Model, NewEvent
from ownchat_trainer.registry import ModelRegistry
from ownchat_trainer.store import TrainerStore
from ownchat_trainer.worker import WorkerSpec

logger = logging.getLogger("ownchat.trainer.runner")

INTERRUPTED_BY_RESTART = "interrupted: the trainer restarted"
INTERRUPTED_BY_STOP = "interrupted: the trainer stopped"
LOG_NAME = "worker.log"
IDLE_WAIT_SECONDS = 1.0


@dataclass
class _Outcome:
    """What the worker reported about its end."""

    final: Checkpoint | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    done: bool = False
    error: str = ""


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


class JobRunner:
    """The one thread that runs jobs, and the handle to cancel the running one."""

    def __init__(
        self,
        store: TrainerStore,
        registry: ModelRegistry,
        artifacts: ArtifactStore,
        jobs_dir: Path,
        torch_threads: int | None,
        cancel_grace_seconds: float,
    ) -> None:
        self._store = store
        self._registry = registry
        self._artifacts = artifacts
        self._jobs_dir = jobs_dir
        self._torch_threads = torch_threads
        self._grace = cancel_grace_seconds
        self._lock = threading.Condition()
        self._stopping = False
        self._current: str | None = None
        self._cancel_requested = False
        self._process: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    def recover(self) -> None:
        """Fails the jobs a previous run of the service left unfinished."""
        for job in self._store.jobs_in([JobState.VALIDATING, JobState.QUEUED, JobState.RUNNING]):
            self._store.set_state(
                job.id, JobState.FAILED, INTERRUPTED_BY_RESTART, error=INTERRUPTED_BY_RESTART
            )
            logger.warning("job interrupted by a restart", extra={"job_id": job.id})

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Tells the runner a job was queued."""
        with self._lock:
            self._lock.notify_all()

    def stop(self) -> None:
        """Stops the running worker (its job fails as interrupted) and the thread."""
        with self._lock:
            self._stopping = True
            self._terminate()
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=self._grace + 30)

    def cancel(self, job_id: str) -> Job:
        """Cancels a queued job at once, or asks the running one's worker to end."""
        with self._lock:
            job = self._store.get_job(job_id)
            if job.state in (JobState.VALIDATING, JobState.QUEUED):
                return self._store.set_state(
                    job_id, JobState.CANCELLED, "cancelled before it started"
                )
            if job.state is JobState.RUNNING and self._current == job_id:
                self._cancel_requested = True
                self._terminate()
            return job

    def _terminate(self) -> None:
        # Called with the lock held; the runner thread reaps the process.
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()

            def kill_later() -> None:
                try:
                    process.wait(timeout=self._grace)
                except subprocess.TimeoutExpired:
                    process.kill()

            threading.Thread(target=kill_later, daemon=True).start()

    def _next(self) -> Job | None:
        with self._lock:
            while not self._stopping:
                queued = self._store.jobs_in([JobState.QUEUED])
                if queued:
                    job = self._store.set_state(queued[0].id, JobState.RUNNING, "running")
                    self._current = job.id
                    self._cancel_requested = False
                    return job
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

    def _message(self, job: Job, text: str) -> None:
        self._store.append_event(job.id, NewEvent(EventKind.MESSAGE, text))

    def _finish_failed(self, job: Job, reason: str) -> None:
        if not self._store.get_job(job.id).state.terminal:
            self._store.set_state(job.id, JobState.FAILED, f"failed: {reason}", error=reason)

    def _run(self, job: Job) -> None:
        job_dir = self._jobs_dir / job.id
        output_dir = job_dir / "checkpoints"
        output_dir.mkdir(parents=True, exist_ok=True)
        try:
            base = self._base_model(job)
            spec = WorkerSpec(
                job_id=job.id,
                base_model_dir=self._artifacts.path(base.artifact.digest),
                train_split=self._artifacts.path(job.train_split.digest),
                validation_split=self._artifacts.path(job.validation_split.digest),
                output_dir=output_dir,
                max_steps=job.hyperparameters.max_steps,
                learning_rate=job.hyperparameters.learning_rate,
                batch_size=job.hyperparameters.batch_size,
                max_seq_length=job.hyperparameters.max_seq_length,
                warmup_ratio=job.hyperparameters.warmup_ratio,
                checkpoint_interval_steps=job.hyperparameters.checkpoint_interval_steps,
                eval_interval_steps=job.hyperparameters.eval_interval_steps,
                seed=job.seed,
                torch_threads=self._torch_threads,
            )
            spec_path = job_dir / "job-spec.json"
            spec_path.write_text(spec.to_json())
            with (job_dir / LOG_NAME).open("a") as log:
                with self._lock:
                    if self._stopping or self._cancel_requested:
                        process = None
                    else:
                        process = self._start_worker(spec_path, log)
                        self._process = process
                outcome = self._follow(job, process) if process is not None else _Outcome()
                status = process.wait() if process is not None else None
            self._conclude(job, base.base_model, status, outcome, job_dir)
        except OwnchatError as error:
            # A base model that cannot be imported, a split gone from the store.
            self._finish_failed(job, error.message)
        finally:
            shutil.rmtree(output_dir, ignore_errors=True)

    def _base_model(self, job: Job) -> Model:
        if self._store.get_model(job.base_model) is not None:
            return self._registry.get(job.base_model)
        self._message(job, f"importing base model {job.base_model} (first use)")
        started = time.perf_counter()
        model = self._registry.get(job.base_model)
        self._message(job, f"base model ready in {time.perf_counter() - started:.1f} s")
        return model

    def _start_worker(self, spec_path: Path, log: IO[str]) -> subprocess.Popen[str]:
        env = dict(os.environ)
        env.update(
            {
                "TOKENIZERS_PARALLELISM": "false",
                # Nothing is fetched at run time: every file the worker reads is local.
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            }
        )
        if self._torch_threads:
            env["OMP_NUM_THREADS"] = str(self._torch_threads)
        return subprocess.Popen(
            [sys.executable, "-m", "ownchat_trainer.worker", str(spec_path)],
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
                self._record(job, event, outcome)
        return outcome

    def _record(self, job: Job, event: dict[str, Any], outcome: _Outcome) -> None:
        kind = event.get("event")
        if kind == "started":
            self._store.set_device(job.id, str(event.get("device", "")))
            self._message(job, str(event.get("message", "")))
        elif kind == "metrics":
            self._store.append_event(
                job.id,
                NewEvent(
                    EventKind.METRICS,
                    step=int(event["step"]),
                    total_steps=int(event["total_steps"]),
                    loss=_optional_float(event.get("loss")),
                    validation_loss=_optional_float(event.get("validation_loss")),
                    learning_rate=_optional_float(event.get("learning_rate")),
                    tokens_per_second=_optional_float(event.get("tokens_per_second")),
                    eta_seconds=_optional_float(event.get("eta_seconds")),
                ),
            )
        elif kind == "checkpoint":
            checkpoint = self._store_checkpoint(job, event)
            if event.get("final"):
                outcome.final = checkpoint
        elif kind == "done":
            outcome.done = True
            for name in ("train_loss", "validation_loss"):
                if event.get(name) is not None:
                    outcome.metrics[name] = float(event[name])
        elif kind == "error":
            outcome.error = str(event.get("message", ""))
        elif kind == "message":
            self._message(job, str(event.get("message", "")))

    def _store_checkpoint(self, job: Job, event: dict[str, Any]) -> Checkpoint:
        path = Path(event["path"])
        # Only a directory the runner gave the worker is taken into the store.
        if path.parent != self._jobs_dir / job.id / "checkpoints":
            raise FailedPreconditionError(
                f"the worker saved a checkpoint outside its folder: {path}"
            )
        artifact: Artifact = self._artifacts.put_tree(path)
        shutil.rmtree(path, ignore_errors=True)
        checkpoint = Checkpoint(
            job_id=job.id,
            step=int(event["step"]),
            loss=_optional_float(event.get("loss")),
            validation_loss=_optional_float(event.get("validation_loss")),
            artifact=artifact,
            create_time=time.time(),
        )
        self._store.add_checkpoint(
            checkpoint, f"checkpoint at step {checkpoint.step} stored as {artifact.digest}"
        )
        return checkpoint

    def _conclude(
        self, job: Job, root_base: str, status: int | None, outcome: _Outcome, job_dir: Path
    ) -> None:
        if self._stopping:
            self._finish_failed(job, INTERRUPTED_BY_STOP)
        elif self._cancel_requested:
            self._store.set_state(job.id, JobState.CANCELLED, "cancelled on request")
        elif status == 0 and outcome.done and outcome.final is not None:
            self._store.register_version(
                job, root_base, outcome.final.artifact, outcome.metrics, "succeeded: {model}"
            )
        else:
            reason = outcome.error or (
                f"the worker exited with status {status}: {log_tail(job_dir / LOG_NAME)}"
            )
            self._finish_failed(job, reason)
