"""Shared fixtures: the shared data folder, a real tansu broker, the real Redis, unique topic names."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.stack import _terminate, redis_answers, start_tansu
from streams.topics import Topics

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only data folder (``$PEDSTREAM_DATA`` or ``../shared/data`` beside the repo)."""
    path = Path(os.environ.get("PEDSTREAM_DATA") or REPO.parent / "shared" / "data")
    if not (path / "PETS09-S2L1" / "vtest.avi").is_file():
        pytest.fail(f"shared data not found at {path}; set PEDSTREAM_DATA")
    return path


@pytest.fixture(scope="session")
def vtest(shared_data: Path) -> str:
    return str(shared_data / "PETS09-S2L1" / "vtest.avi")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tansu broker on a free loopback port, for the whole test session."""
    proc, bootstrap = start_tansu(tmp_path_factory.mktemp("tansu"))
    yield bootstrap
    _terminate(proc.pid)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis (``$REDIS_URL`` or 127.0.0.1:6379); the tests need it running."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    if not redis_answers(url):
        pytest.fail(f"Redis at {url} does not answer; start it (see README, 'Running the tests')")
    return url


@pytest.fixture
def topics() -> Topics:
    """A fresh topic prefix per test: the embedded broker keeps everything, so tests never share topics."""
    return Topics(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
def shared_models(shared_data: Path) -> Path:
    path = Path(os.environ.get("PEDSTREAM_MODELS") or shared_data.parent / "models")
    if not (path / "ssdlite_pedestrian.onnx").is_file():
        pytest.fail(f"shared models not found at {path}; set PEDSTREAM_MODELS")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration/ carries the integration marker (so `-m "not integration"`
    really runs only the tests that start nothing)."""
    unmarked = [item.nodeid for item in items if "/integration/" in item.nodeid and item.get_closest_marker("integration") is None]
    if unmarked:
        raise pytest.UsageError(f"integration tests without the integration marker: {unmarked[:5]}")
