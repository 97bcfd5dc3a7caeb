"""What a replica is told: the deployment's name and its live settings (`user_config`), defined once
and built from the serve config. A light module (no Ray, no torch): `deploy.py` and the app share it.

    settings = ReplicaSettings.from_config(cfg.serve, model_dir)   # -> user_config=settings.model_dump()
"""

from __future__ import annotations

import hashlib
import os

from raysys.config import ReplicaOptions, ServeConfig
from raysys.errors import RaysysError

DEPLOYMENT_NAME = "Recommender"


class ReplicaSettings(ReplicaOptions):
    """The deployment's `user_config`: the model directory, the API key's hash and every `ReplicaOptions`
    setting; all of it can change without restarting replicas."""

    model_dir: str
    api_key_sha256: str | None = None  # hex SHA-256 of the API key; None = no key needed

    @classmethod
    def from_config(cls, cfg: ServeConfig, model_dir: str) -> ReplicaSettings:
        """The settings `cfg` gives replicas serving `model_dir`; the API key only as its hash."""
        key = resolve_api_key(cfg)
        options = cfg.model_dump(include=set(ReplicaOptions.model_fields))
        return cls(
            model_dir=model_dir, api_key_sha256=hashlib.sha256(key.encode()).hexdigest() if key else None, **options
        )


def resolve_api_key(cfg: ServeConfig) -> str | None:
    """The API key from `serve.api_key_env` (an environment variable) or `serve.api_key`."""
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise RaysysError(f"environment variable {cfg.api_key_env} is not set", where="serve.api_key_env")
        return key
    return cfg.api_key
