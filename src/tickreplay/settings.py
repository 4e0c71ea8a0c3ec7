"""One settings object, read from the environment (``TICKREPLAY_*``), shared by every entry point.

Why one object: the CLI, workers, activities and test fixtures must agree on where the object
store lives and which credentials to use; reading ``os.environ`` in many places drifts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".tickreplay"


class Settings(BaseSettings):
    """Runtime configuration. Every field can be set as ``TICKREPLAY_<FIELD>`` in the environment.

    Built one way, :meth:`load`, at the edge (a command, the worker's ``main``, ``up``) and
    passed down explicitly; no module keeps or falls back to a process-wide instance. Tests
    construct their own and pass them.
    """

    model_config = SettingsConfigDict(env_prefix="TICKREPLAY_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="State dir of the embedded stack")
    s3_endpoint: str | None = Field(None, description="S3 endpoint URL, e.g. http://127.0.0.1:8333")
    s3_access_key: str = "tickreplay"
    s3_secret_key: str = "tickreplay-secret"
    s3_region: str = "us-east-1"
    data_bucket: str = "market-data"
    results_bucket: str = "results"
    artifacts_bucket: str = "artifacts"
    cache_dir: Path | None = Field(None, description="Node-local partition cache (default: home/cache)")
    cache_max_bytes: int = 20 * 1024**3
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_tls_cert: Path | None = Field(None, description="Client certificate (PEM) for "
                                                             "mTLS to Temporal (Temporal Cloud)")
    temporal_tls_key: Path | None = Field(None, description="Its private key (PEM)")
    temporal_tls_ca: Path | None = Field(None, description="CA bundle of a self-hosted "
                                                           "Temporal's server certificate")
    temporal_api_key: str | None = Field(None, description="Temporal Cloud API key (instead "
                                                           "of a client certificate)")
    task_queue: str = "tickreplay"
    max_concurrent_runs: int = Field(default_factory=lambda: os.cpu_count() or 1)
    shutdown_grace_s: float = 45.0
    run_memory_mb: int = Field(6144, description="Memory cap of a backtest's runner (RLIMIT_AS "
                                                 "and its memory cgroup)")
    run_pids_max: int = Field(256, description="Processes and threads a runner may have (its "
                                               "pids cgroup: a fork bomb stops there)")
    run_file_mb: int = Field(4096, description="Largest file a runner may write (RLIMIT_FSIZE)")
    run_open_files: int = Field(1024, description="Open files of a runner (RLIMIT_NOFILE)")
    node_id: str | None = Field(None, description="Worker node name (default: host + random)")
    signing_key: str | None = Field(
        None, description="Hex HMAC key sealing checkpoints and signing manifests "
                          "(default: read from, or created in, home/signing.key)")
    outage_budget_s: float = Field(
        3600.0, description="How long a job waits out an object-store or Temporal outage")
    fault_delay: str | None = Field(
        None, description="Fault injection for chaos tests only: 'stage=seconds,...' makes "
                          "that activity (warm_cache, publish_results) pause, heartbeating, "
                          "so a worker can be killed inside it")
    db_dsn: str | None = Field(
        None, description="Metadata database (SQLAlchemy URL), e.g. "
                          "postgresql+psycopg://user@host/db (default: SQLite home/tickreplay.db)")
    max_running_per_user: int = Field(
        20, ge=1, description="RUNNING jobs one user may have at once (more wait PENDING)")
    max_running_jobs: int = Field(
        200, ge=1, description="RUNNING jobs of all users together (more wait PENDING)")
    api_url: str | None = Field(
        None, description="The job API (REST) the CLI talks to, e.g. http://127.0.0.1:8000; "
                          "written into stack.env by `tickreplay up`")
    api_token: str | None = Field(None, description="Bearer token the CLI sends to the API")
    runner_backend: str = Field(
        "auto", description="Where strategy code runs: 'sandbox' (bubblewrap: no network, only "
                            "the job's files), 'podman' (the job's image as a Pod), 'process' "
                            "(a plain child process: development with trusted code only), or "
                            "'auto' (sandbox when bubblewrap is installed, else process)")
    runner_sandbox: str = Field(
        "auto", description="Deprecated spelling of runner_backend: 'bwrap' is 'sandbox', "
                            "'process' is 'process' (used when runner_backend is 'auto')")
    runner_image: str = Field(
        "localhost/tickreplay-runner:latest",
        description="Image the podman backend runs bundle (non-image) strategies in; pin it by "
                    "digest in production (`make runner-image` builds it here)")
    run_cpus: float = Field(4.0, gt=0, description="CPU limit of a runner pod (cores)")
    pod_start_timeout_s: float = Field(
        120.0, gt=0, description="How long a runner pod may take to start (image pull "
                                 "included) before the attempt fails and is retried")
    kube_api_url: str | None = Field(
        None, description="Kubernetes API server for the kubernetes backend (default: the "
                          "in-cluster service account, else ~/.kube/config)")
    kube_namespace: str = Field("tickreplay", description="Namespace of the runner Jobs")
    kube_node_home: str | None = Field(
        None, description="The state dir (home) as a path on the node, for the runner Job's "
                          "hostPath volumes (the DaemonSet mounts it at home)")
    kube_spot: bool = Field(True, description="Runner Jobs tolerate the spot pool's taints "
                                              "and prefer its nodes")
    registry_username: str | None = Field(None, description="Strategy image registry user")
    registry_password: str | None = Field(None, description="Strategy image registry password")
    registry_insecure: str = Field(
        "", description="Comma-separated registry hosts reached over plain HTTP (loopback "
                        "registries always are)")

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Settings from the environment, falling back to ``<home>/stack.env`` written by ``up``.

        Real environment variables win over the file, so a user can always point one command
        elsewhere.
        """
        home = Path(os.environ.get("TICKREPLAY_HOME") or overrides.get("home") or _default_home())
        defaults: dict[str, Any] = {}
        env_file = home / "stack.env"
        if env_file.is_file():
            for line in env_file.read_text().splitlines():
                key, sep, value = line.strip().partition("=")
                name = key.removeprefix("TICKREPLAY_").lower()
                if sep and key.startswith("TICKREPLAY_") and key not in os.environ \
                        and name in cls.model_fields:
                    defaults[name] = value
        return cls(**{**defaults, **overrides})

    def to_env(self) -> dict[str, str]:
        """These settings as ``TICKREPLAY_*`` variables (for child processes)."""
        out = {}
        for name, value in self.model_dump().items():
            if value is not None:
                out[f"TICKREPLAY_{name.upper()}"] = str(value)
        return out

    def platform_key(self, *, create: bool = False) -> bytes:
        """The workers' signing key: ``signing_key`` if set, else ``<home>/signing.key``.

        Workers create the file on first start (``create=True``); clients only read it, so a
        client pointed at the wrong home fails verification instead of inventing a key.
        """
        from tickreplay.integrity import IntegrityError, load_or_create_key, parse_key

        if self.signing_key:
            return parse_key(self.signing_key, "TICKREPLAY_SIGNING_KEY")
        path = self.home / "signing.key"
        if not create and not path.is_file():
            raise IntegrityError(f"no signing key at {path} (set TICKREPLAY_SIGNING_KEY or "
                                 "TICKREPLAY_HOME to the stack's)")
        return load_or_create_key(path)

    def fault_delay_s(self, stage: str) -> float:
        """Seconds ``stage`` pauses under ``fault_delay`` (0 without fault injection)."""
        for item in (self.fault_delay or "").split(","):
            name, _, seconds = item.partition("=")
            if name.strip() == stage:
                return float(seconds)
        return 0.0

    def temporal_options(self) -> dict[str, Any]:
        """Keyword arguments of ``temporalio.client.Client.connect`` besides the address: the
        namespace, and TLS (a client certificate, or an API key) when configured."""
        options: dict[str, Any] = {"namespace": self.temporal_namespace}
        if self.temporal_tls_cert or self.temporal_tls_ca or self.temporal_api_key:
            from temporalio.service import TLSConfig

            options["tls"] = TLSConfig(
                client_cert=self.temporal_tls_cert.read_bytes() if self.temporal_tls_cert
                else None,
                client_private_key=self.temporal_tls_key.read_bytes() if self.temporal_tls_key
                else None,
                server_root_ca_cert=self.temporal_tls_ca.read_bytes() if self.temporal_tls_ca
                else None)
        if self.temporal_api_key:
            options["api_key"] = self.temporal_api_key
        return options

    def kube_node_name(self) -> str:
        """This worker's Kubernetes node (``node_id``: the DaemonSet sets it to spec.nodeName)."""
        import socket

        return self.node_id or socket.gethostname()

    def registry_insecure_hosts(self) -> set[str]:
        """The registries reached over plain HTTP besides loopback ones."""
        return {h.strip() for h in self.registry_insecure.split(",") if h.strip()}

    def registry_credentials(self) -> tuple[str, str] | None:
        """``(user, password)`` for the strategy image registry, if configured."""
        if not self.registry_username:
            return None
        return self.registry_username, self.registry_password or ""

    def resolved_db_dsn(self) -> str:
        """The metadata database's URL, defaulting to a SQLite file in the state dir."""
        return self.db_dsn or f"sqlite:///{self.home / 'tickreplay.db'}"

    def resolved_cache_dir(self) -> Path:
        """The cache directory, defaulting to ``<home>/cache``."""
        return self.cache_dir if self.cache_dir is not None else self.home / "cache"
