"""Which Kafka and Redis every command uses: flags, then environment, then the embedded stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.endpoints import resolve


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("PEDSTREAM_BOOTSTRAP", "REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PEDSTREAM_HOME", str(tmp_path))


def _stack(tmp_path: Path, **state: object) -> None:
    (tmp_path / "stack.json").write_text(json.dumps(state))


def test_defaults_without_anything() -> None:
    ep = resolve()
    assert (ep.bootstrap, ep.redis_url, ep.origin) == ("127.0.0.1:9092", "redis://127.0.0.1:6379", "defaults")


def test_stack_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stack(tmp_path, bootstrap="127.0.0.1:1111", redis_url="redis://127.0.0.1:2222", redis_replaces=None)
    assert resolve().bootstrap == "127.0.0.1:1111" and resolve().redis_url == "redis://127.0.0.1:2222"
    monkeypatch.setenv("PEDSTREAM_BOOTSTRAP", "127.0.0.1:3333")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:4444")
    assert (resolve().bootstrap, resolve().redis_url) == ("127.0.0.1:3333", "redis://127.0.0.1:4444")
    assert resolve("127.0.0.1:5555", "redis://127.0.0.1:6666").redis_url == "redis://127.0.0.1:6666"


def test_redis_started_by_the_stack_stands_in_for_the_dead_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1")
    _stack(tmp_path, bootstrap="127.0.0.1:1111", redis_url="redis://127.0.0.1:2222", redis_replaces="redis://127.0.0.1:1")
    assert resolve().redis_url == "redis://127.0.0.1:2222"
