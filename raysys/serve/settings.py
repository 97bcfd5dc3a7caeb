"""What a replica is told: the deployment's name and its live settings (`user_config`), defined once
and built from the serve config. A light module (no Ray, no torch): `deploy.py` and the app share it.

    settings = ReplicaSettings.from_config(cfg.serve, model_dir)   # -> user_config=settings.model_dump()
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from pydantic import field_validator

from raysys.config import ReplicaOptions, ServeConfig
from raysys.errors import RaysysError

DEPLOYMENT_NAME = "Recommender"
KEY_OFF = "off"


class ReplicaSettings(ReplicaOptions):
    """The deployment's `user_config`: the model directory, the API key's hash and every `ReplicaOptions`
    setting; all of it can change without restarting replicas."""

    model_dir: str
    # Hex SHA-256 of the API key. None (or absent) keeps the key the replicas have, so a redeploy that
    # forgets it never opens the endpoint (a first deploy without one serves without a key); "off"
    # turns a key off on purpose.
    api_key_sha256: str | None = None

    @field_validator("api_key_sha256")
    @classmethod
    def _hex_or_off(cls, value: str | None) -> str | None:
        if value is not None and value != KEY_OFF and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError(f'api_key_sha256 must be 64 lowercase hex digits (a SHA-256), "{KEY_OFF}" or null')
        return value

    @property
    def key_required(self) -> bool:
        return self.api_key_sha256 not in (None, KEY_OFF)

    def keeping_key_of(self, current: ReplicaSettings | None) -> ReplicaSettings:
        """These settings, with `current`'s key when they name none."""
        if self.api_key_sha256 is None and current is not None and current.key_required:
            return self.model_copy(update={"api_key_sha256": current.api_key_sha256})
        return self

    @classmethod
    def from_config(cls, cfg: ServeConfig, model_dir: str) -> ReplicaSettings:
        """The settings `cfg` gives replicas serving `model_dir`; the API key only as its hash."""
        key = resolve_api_key(cfg)
        options = cfg.model_dump(include=set(ReplicaOptions.model_fields))
        for variant in options["variants"]:  # the replicas may run elsewhere: absolute paths
            if variant["model_dir"] and "://" not in variant["model_dir"]:
                variant["model_dir"] = str(Path(variant["model_dir"]).expanduser().resolve())
        digest = KEY_OFF if key == KEY_OFF else hashlib.sha256(key.encode()).hexdigest() if key else None
        return cls(model_dir=model_dir, api_key_sha256=digest, **options)


def resolve_api_key(cfg: ServeConfig) -> str | None:
    """The API key from `serve.api_key_env` (an environment variable) or `serve.api_key`."""
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise RaysysError(f"environment variable {cfg.api_key_env} is not set", where="serve.api_key_env")
        return key
    return cfg.api_key
