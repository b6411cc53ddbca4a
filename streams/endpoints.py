"""Where the Kafka bootstrap servers and Redis are: explicit flag, environment, embedded stack, default."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from streams.kafka_settings import DURABLE_FETCH_MAX_WAIT_MS, FETCH_MAX_WAIT_ENV

BOOTSTRAP_ENV = "PEDSTREAM_BOOTSTRAP"
REDIS_ENV = "REDIS_URL"
HOME_ENV = "PEDSTREAM_HOME"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_REDIS = "redis://127.0.0.1:6379"


def pedstream_home() -> Path:
    """The folder holding local state (the embedded stack's addresses): ``$PEDSTREAM_HOME`` or ``~/.pedstream``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".pedstream")


def stack_state_path(home: Path | None = None) -> Path:
    return (home or pedstream_home()) / "stack.json"


@dataclass(frozen=True)
class Endpoints:
    bootstrap: str
    redis_url: str
    origin: str  # which rule chose them, for `stack status` and error messages


def resolve(bootstrap: str | None = None, redis_url: str | None = None, home: Path | None = None, role: str = "trainer") -> Endpoints:
    """Pick the addresses every command uses.

    Order: the ``--bootstrap`` / ``--redis`` flags, then ``PEDSTREAM_BOOTSTRAP`` / ``REDIS_URL``,
    then the running embedded stack (``pedstream stack up``), then the defaults. When the stack
    had to start its own redis-server because ``REDIS_URL`` did not answer, that URL maps to it.
    On the stack's own redis-server, ``role="edge"`` (detector agents) gets the edge user's URL,
    which can only read models and write agent status (``streams.redis_roles``).
    """
    origin = "flags"
    state = _read_state(stack_state_path(home))
    if bootstrap is None:
        if os.environ.get(BOOTSTRAP_ENV):
            bootstrap, origin = os.environ[BOOTSTRAP_ENV], "environment"
        elif state.get("bootstrap"):
            bootstrap, origin = str(state["bootstrap"]), "embedded stack"
            if state.get("store_url"):  # a durable stack: its broker needs a longer fetch wait (see kafka_settings)
                os.environ.setdefault(FETCH_MAX_WAIT_ENV, str(DURABLE_FETCH_MAX_WAIT_MS))
        else:
            bootstrap, origin = DEFAULT_BOOTSTRAP, "defaults"
    if redis_url is None:
        env_redis = os.environ.get(REDIS_ENV)
        # The stack starts its own redis-server only when the configured one did not answer;
        # it records which URL it stands in for, so that URL is redirected to it.
        if env_redis and env_redis != state.get("redis_replaces"):
            redis_url = env_redis
        elif role == "edge" and state.get("redis_edge_url"):
            redis_url = str(state["redis_edge_url"])
        elif state.get("redis_url"):
            redis_url = str(state["redis_url"])
        else:
            redis_url = env_redis or DEFAULT_REDIS
    return Endpoints(bootstrap=bootstrap, redis_url=redis_url, origin=origin)


def _read_state(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
