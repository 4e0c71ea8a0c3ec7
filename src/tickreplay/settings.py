"""One settings object, read from the environment (``TICKREPLAY_*``), shared by every entry point.

Why one object: the CLI, workers, activities and test fixtures must agree on where the object
store lives and which credentials to use; reading ``os.environ`` in many places drifts.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".tickreplay"


class Settings(BaseSettings):
    """Runtime configuration. Every field can be set as ``TICKREPLAY_<FIELD>`` in the environment."""

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
    task_queue: str = "tickreplay"

    def resolved_cache_dir(self) -> Path:
        """The cache directory, defaulting to ``<home>/cache``."""
        return self.cache_dir if self.cache_dir is not None else self.home / "cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (tests build their own ``Settings`` and pass it explicitly)."""
    return Settings()
