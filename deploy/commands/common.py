"""What every command group shares: the connection, metrics and data flags, where the data and model
folders are, and the small helpers commands print and stop with.

Nothing here imports torch, ray or faust: every edge command (camera, detect, alerts, dashboard)
must start where only ``pedstream[edge]`` is installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.errors import PedstreamError

DATA_ENV = "PEDSTREAM_DATA"
MODELS_ENV = "PEDSTREAM_MODELS"

log = logging.getLogger("pedstream")


@dataclass(frozen=True)
class Flags:
    """Parent parsers that command groups build their subcommands from."""

    conn: argparse.ArgumentParser
    metrics: argparse.ArgumentParser

    @staticmethod
    def build() -> Flags:
        return Flags(connection_flags(), metrics_flags())

    @staticmethod
    def data(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data", help=f"data folder (default: ${DATA_ENV})")


def metrics_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("metrics")
    group.add_argument("--metrics-port", type=int, help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)")
    group.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address to serve metrics on (default 127.0.0.1; 0.0.0.0 for a Prometheus on another machine)",
    )
    return parent


def connection_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connections")
    group.add_argument(
        "--bootstrap",
        help="Kafka bootstrap servers host:port[,...] (default: $PEDSTREAM_BOOTSTRAP, then the embedded stack, then 127.0.0.1:9092)",
    )
    group.add_argument("--redis", help="Redis URL (default: $REDIS_URL, then the embedded stack, then redis://127.0.0.1:6379)")
    group.add_argument("--topic-prefix", help="prefix of every topic name (default: $PEDSTREAM_TOPIC_PREFIX or 'pedstream')")
    return parent


def data_dir(value: str | None) -> Path:
    """--data, else $PEDSTREAM_DATA: the folder holding PETS09-S2L1/, TUD-Campus/."""
    raw = value or os.environ.get(DATA_ENV)
    if not raw:
        raise PedstreamError(f"no data folder: pass --data DIR or set {DATA_ENV} (the folder holding PETS09-S2L1/, TUD-Campus/)")
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        raise PedstreamError(f"data folder {path} does not exist")
    return path


def find_model(value: str) -> str:
    """``--model``: the bundled ``student`` (or ``student-float``), a path, or a file name in
    $PEDSTREAM_MODELS (``--model nanodet.onnx`` works from any folder once the variable is set)."""
    from detectors.detector import BUNDLED_NAMES

    return value if value in BUNDLED_NAMES else _find(value, MODELS_ENV)


def find_sequence(value: str) -> str:
    """``--sequence``: a path, or a folder name in $PEDSTREAM_DATA (``--sequence PETS09-S2L1``)."""
    return _find(value, DATA_ENV)


def _find(value: str, env: str) -> str:
    path = Path(value).expanduser()
    base = os.environ.get(env)
    if path.exists() or path.is_absolute() or not base:
        return str(path)
    candidate = Path(base).expanduser() / value
    return str(candidate) if candidate.exists() else str(path)  # not found: the error names what was asked


def models_dir(data: str | None) -> Path:
    """$PEDSTREAM_MODELS, else the ``models`` folder beside the data folder."""
    raw = os.environ.get(MODELS_ENV)
    path = Path(raw).expanduser().resolve() if raw else data_dir(data).parent / "models"
    if not path.is_dir():
        raise PedstreamError(f"models folder {path} does not exist: set {MODELS_ENV}")
    return path


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def say_to_stderr(tag: str) -> Callable[[str], None]:
    """A progress printer: ``[tag] message`` lines on stderr, so stdout stays for results."""
    return lambda message: print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def live(text: str) -> None:
    """Redraw in place on a terminal; print plain blocks otherwise (logs, CI)."""
    if sys.stdout.isatty():
        sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
    else:
        sys.stdout.write(text + "\n\n")
    sys.stdout.flush()


def stop_on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class ProgressBar:
    """One line on stderr, redrawn in place on a terminal; every ~10% otherwise (logs, CI)."""

    def __init__(self, label: str, stream: Any = sys.stderr) -> None:
        self.label = label
        self.stream = stream
        self.tty = stream.isatty()
        self.last_decile = -1

    def update(self, done: int, total: int, text: str = "") -> None:
        decile = done * 10 // max(total, 1)
        if not self.tty and decile == self.last_decile and done != total:
            return
        self.last_decile = decile
        filled = done * 24 // max(total, 1)
        line = f"[{self.label}] {'#' * filled}{'.' * (24 - filled)} {done}/{total} {text}"
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        if self.tty and done == total:
            self.stream.write("\n")
        self.stream.flush()
