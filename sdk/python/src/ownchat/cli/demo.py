"""``ownchat demo``: the whole loop on the sample data, on a CPU in minutes.

Starts the five services, ingests the sample support conversations, fine-tunes
SmolLM2-135M-Instruct for a few steps, measures base and fine-tuned perplexity
on the held-out split, deploys the fine-tuned version, and asks it a question
over the OpenAI-compatible REST endpoint.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from rich.table import Table

from ownchat.cli.common import console, error_console, follow_job, upload_requests
from ownchat.cli.evaluate import run_evaluation
from ownchat.cli.supervisor import SERVICE_MODULES, StartupError, Supervisor
from ownchat.client import OwnchatClient
from ownchat.config import ClientSettings
from ownchat.data.v1 import data_pb2
from ownchat.errors import describe_rpc_error
from ownchat.evaluator.v1 import evaluator_pb2
from ownchat.serving.v1 import serving_pb2
from ownchat.trainer.v1 import trainer_pb2

BASE_MODEL = "smollm2-135m-instruct"
QUESTION = "How much does the Zephyr X2 router cost?"
SYSTEM = "You are the support assistant of Acme Networks."


def ask_gateway(settings: ClientSettings, token: str, question: str) -> dict[str, object]:
    """One chat completion over the gateway's OpenAI-compatible REST endpoint."""
    body = json.dumps(
        {
            "model": "",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
            ],
            "temperature": 0,
            "max_tokens": 64,
        }
    ).encode()
    request = urllib.request.Request(
        f"{settings.gateway_url}/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        answer: dict[str, object] = json.loads(response.read())
    return answer


def _perplexity(run: evaluator_pb2.EvalRun) -> float:
    if run.state != evaluator_pb2.EVAL_RUN_STATE_SUCCEEDED:
        raise RuntimeError(f"evaluation of {run.model_id} failed: {run.error}")
    return next(r.value for r in run.results if r.metric == evaluator_pb2.METRIC_PERPLEXITY)


def _loop(ownchat: OwnchatClient, settings: ClientSettings, data: Path, steps: int) -> None:
    console.rule("2/6 ingest")
    header = data_pb2.UploadHeader(
        dataset_name="acme-support",
        file_name=data.name,
        format=data_pb2.SOURCE_FORMAT_OPENAI_CHAT_JSONL,
        validation_fraction=0.15,
    )
    version = ownchat.data.UploadDatasetVersion(upload_requests(data, header)).dataset_version
    console.print(
        f"dataset version {version.id}: {version.stats.samples} conversations, "
        f"{version.stats.train_samples} train / {version.stats.validation_samples} validation"
    )

    console.rule(f"3/6 fine-tune {BASE_MODEL} ({steps} steps, CPU)")
    job = ownchat.trainer.CreateTrainingJob(
        trainer_pb2.CreateTrainingJobRequest(
            base_model=BASE_MODEL,
            dataset_version_id=version.id,
            method=trainer_pb2.TRAINING_METHOD_SFT_FULL,
            hyperparameters=trainer_pb2.Hyperparameters(
                max_steps=steps, batch_size=4, max_seq_length=256, learning_rate=1e-4
            ),
            seed=0,
            suffix="demo",
        ),
        timeout=600,
    ).job
    job = follow_job(ownchat, job.id)
    if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"training job {job.id} ended {job.state}: {job.error}")
    model = job.model_version
    console.print(f"model version [bold]{model}[/bold]")

    console.rule("4/6 evaluate base and fine-tuned on the held-out split")
    base_ppl = _perplexity(run_evaluation(ownchat, BASE_MODEL, version.id))
    tuned_ppl = _perplexity(run_evaluation(ownchat, model, version.id))
    table = Table("model", "perplexity (validation, assistant tokens)")
    table.add_row(BASE_MODEL, f"{base_ppl:.2f}")
    table.add_row(model, f"{tuned_ppl:.2f}")
    console.print(table)

    console.rule("5/6 deploy")
    with console.status(f"loading {model} into vLLM"):
        deployment = ownchat.serving.Deploy(
            serving_pb2.DeployRequest(model_id=model, deployed_by="demo"), timeout=900
        ).deployment
    console.print(f"live: {deployment.model_id}")

    console.rule("6/6 ask over REST (POST /v1/chat/completions)")
    answer = ask_gateway(settings, ownchat.token, QUESTION)
    choices = answer["choices"]
    assert isinstance(choices, list)
    console.print(f"[bold]user[/bold]      {QUESTION}")
    console.print(f"[bold]assistant[/bold] {choices[0]['message']['content']}")
    console.print(f"(model {answer['model']})")


def run_demo(data: Path, steps: int, keep_running: bool) -> int:
    """Runs the demo; returns the process exit code."""
    if not data.is_file():
        error_console.print(f"[red]error[/red] {data} is not a file")
        return 2
    started = time.monotonic()
    settings = ClientSettings()
    supervisor = Supervisor(settings)
    try:
        console.rule("1/6 start the services")
        supervisor.start(list(SERVICE_MODULES))
        with console.status("waiting for health"):
            supervisor.wait_healthy(
                300, on_ready=lambda name: console.print(f"[green]ready[/green] {name}")
            )
        with OwnchatClient.from_settings(settings) as ownchat:
            _loop(ownchat, settings, data, steps)
        console.rule()
        console.print(f"demo finished in {time.monotonic() - started:.0f} s")
        if keep_running:
            console.print("services keep running; Ctrl-C stops them")
            while True:
                time.sleep(1)
        return 0
    except StartupError as error:
        error_console.print(f"[red]error[/red] {error}")
        return 1
    except grpc.RpcError as error:
        error_console.print(f"[red]error[/red] {describe_rpc_error(error)}")
        return 1
    except (RuntimeError, urllib.error.URLError) as error:
        error_console.print(f"[red]error[/red] {error}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        with console.status("stopping the services"):
            supervisor.stop()
