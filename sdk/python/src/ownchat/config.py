"""Typed configuration shared by every ownchat process.

Settings come, highest priority first, from constructor arguments, environment
variables (``OWNCHAT_<SERVICE>_<FIELD>``, plus the shared ``OWNCHAT_HOME`` and
``OWNCHAT_TOKEN``), a TOML file (``OWNCHAT_CONFIG``, or ``$OWNCHAT_HOME/config.toml``
when present) and the defaults below. In the TOML file, shared keys sit at the
top level and each service has its own table::

    home = "/var/lib/ownchat"
    [trainer]
    port = 6000
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_PORTS = {"data": 50051, "trainer": 50052, "evaluator": 50053, "serving": 50054}
DEFAULT_METRICS_PORTS = {"data": 9451, "trainer": 9452, "evaluator": 9453, "serving": 9454}
GATEWAY_DEFAULT_PORT = 3000
# Where a server of the cluster profile listens unless its host is set: every
# interface of its container; which ports are published is the manifests' job.
CLUSTER_HOST = "0.0.0.0"


def default_home() -> Path:
    """The state directory: ``$OWNCHAT_HOME`` or ``./.ownchat``, made absolute."""
    return Path(os.environ.get("OWNCHAT_HOME", ".ownchat")).resolve()


def config_file() -> Path | None:
    """The TOML file to read, if any."""
    explicit = os.environ.get("OWNCHAT_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"OWNCHAT_CONFIG names {path}, which is not a file")
        return path
    candidate = default_home() / "config.toml"
    return candidate if candidate.is_file() else None


class _TomlTableSource(PydanticBaseSettingsSource):
    """Reads the shared keys and one table of the TOML config file."""

    def __init__(self, settings_cls: type[BaseSettings], table: str | None) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        path = config_file()
        if path is None:
            return
        with path.open("rb") as handle:
            document = tomllib.load(handle)
        shared = {k: v for k, v in document.items() if not isinstance(v, dict)}
        section = document.get(table, {}) if table else {}
        self._values = {**shared, **section}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        names = set(self.settings_cls.model_fields)
        return {k: v for k, v in self._values.items() if k in names}


class OwnchatSettings(BaseSettings):
    """Settings read from the environment, then the TOML file's ``toml_table``."""

    toml_table: ClassVar[str | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlTableSource(settings_cls, cls.toml_table))

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable one field is read from (its first, when several)."""
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
            return alias.choices[0]
        if isinstance(alias, str):
            return alias
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


class ServerSettings(OwnchatSettings):
    """What every gRPC server of ownchat is configured by."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    home: Path = Field(
        default_factory=default_home,
        validation_alias=AliasChoices("OWNCHAT_HOME"),
        description="State directory: stores, artifacts, the token.",
    )
    token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OWNCHAT_TOKEN"),
        description="Bearer token every call must carry; generated into the home when unset.",
    )
    host: str = Field(default="127.0.0.1", description="Interface to listen on.")
    port: int = Field(default=0, ge=0, le=65535, description="Port; 0 picks a free one.")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Prometheus port; none disables it."
    )
    max_message_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0, description="Largest message sent or received."
    )
    grace_seconds: float = Field(
        default=10.0, ge=0, description="How long in-flight calls may finish on SIGTERM."
    )
    max_workers: int = Field(default=16, gt=0, description="Threads of a threaded server.")
    tls_cert_file: Path | None = Field(default=None, description="Server certificate (PEM).")
    tls_key_file: Path | None = Field(default=None, description="Server private key (PEM).")
    tls_client_ca_file: Path | None = Field(
        default=None, description="CA that client certificates must chain to (mTLS)."
    )
    reflection: bool = Field(
        default=True, description="Serve gRPC server reflection (off by default in a cluster)."
    )
    database_url: SecretStr | None = Field(
        default=None,
        description=(
            "PostgreSQL URL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE) of the service's"
            " stores; unset keeps them in SQLite files under the home."
        ),
    )
    log_level: str = Field(default="INFO", description="Python logging level.")
    profile: Literal["local", "cluster"] = Field(
        default="local",
        description=(
            "Deployment profile. local: listens on 127.0.0.1, reflection on, TLS optional. "
            "cluster: listens on 0.0.0.0 and serves no reflection unless host or reflection "
            "is set, and a gRPC server refuses to start without mutual TLS on its port and "
            "on its calls to other services."
        ),
    )

    @model_validator(mode="after")
    def _profile_defaults(self) -> Self:
        # Only defaults change: a host or reflection set anywhere (argument, env, TOML) stays.
        if self.profile == "cluster":
            explicit = set(self.model_fields_set)
            if "host" not in explicit:
                self.host = CLUSTER_HOST
            if "reflection" not in explicit:
                self.reflection = False
            # The profile's defaults are still defaults: assignment would count them as set.
            self.model_fields_set.intersection_update(explicit)
        return self

    @property
    def artifacts_dir(self) -> Path:
        """The shared, content-addressed artifact store."""
        return self.home / "artifacts"

    def state_dir(self, service: str) -> Path:
        """The directory a service keeps its own store in."""
        return self.home / service

    def store_location(self, service: str, store: str) -> Path | str:
        """Where one of a service's stores lives: its database when ``database_url``
        is set (all the service's stores share it, each with its own tables), else
        the SQLite file ``<home>/<service>/<store>.db``."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return self.state_dir(service) / f"{store}.db"


class ClientSettings(OwnchatSettings):
    """Where the services are, for the CLI and for services calling each other."""

    model_config = SettingsConfigDict(env_prefix="OWNCHAT_", extra="ignore", populate_by_name=True)

    home: Path = Field(default_factory=default_home)
    token: SecretStr | None = None
    data_address: str = f"127.0.0.1:{DEFAULT_PORTS['data']}"
    trainer_address: str = f"127.0.0.1:{DEFAULT_PORTS['trainer']}"
    evaluator_address: str = f"127.0.0.1:{DEFAULT_PORTS['evaluator']}"
    serving_address: str = f"127.0.0.1:{DEFAULT_PORTS['serving']}"
    gateway_url: str = f"http://127.0.0.1:{GATEWAY_DEFAULT_PORT}"
    tls_ca_file: Path | None = Field(default=None, description="CA of the servers (PEM).")
    tls_cert_file: Path | None = Field(default=None, description="Client certificate (mTLS).")
    tls_key_file: Path | None = Field(default=None, description="Client private key (mTLS).")
    timeout_seconds: float = Field(default=30.0, gt=0, description="Default call deadline.")

    def address(self, service: str) -> str:
        """The address of one service by its short name."""
        value: str = getattr(self, f"{service}_address")
        return value
