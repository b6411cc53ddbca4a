"""``pedstream bench``: benchmarks that print JSON. This module owns ``ingest``, ``detector`` and
``pipeline``; ``loop`` and ``train`` come from the loop and training command groups."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deploy.commands import loop, training
from deploy.commands.common import Flags, data_dir, find_model, models_dir, print_json, say_to_stderr
from detectors.backends.selection import BACKEND_CHOICES
from streams.errors import PedstreamError
from streams.topics import Topics
from trainer.cluster import DEFAULT_BASE_PORT


def bench_model(args: argparse.Namespace) -> Path:
    """The model a benchmark uses: --model, else the fast pedestrian SSDLite from the models folder."""
    from detectors.detector import model_path

    path = model_path(find_model(args.model)) if args.model else models_dir(args.data) / "ssdlite_pedestrian.onnx"
    if not path.is_file():
        raise PedstreamError(f"model {path} not found")
    return path


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    from deploy.bench import ingest
    from deploy.stack import endpoints_or_temporary_stack

    source = args.source or str(data_dir(args.data) / "PETS09-S2L1" / "vtest.avi")
    topics = Topics.from_env(args.topic_prefix)

    def progress(elapsed: float, stats: list[dict[str, object]]) -> None:
        published = sum(int(s["published"]) for s in stats)  # type: ignore[call-overload]
        print(f"[bench ingest] {elapsed:5.1f}s / {args.seconds}s  published {published}", file=sys.stderr, flush=True)

    with endpoints_or_temporary_stack(args.bootstrap, args.redis, topics, announce=lambda m: print(m, file=sys.stderr)) as ep:
        result = ingest.run(ep.bootstrap, topics, source, args.cameras, args.fps, args.seconds, progress)
    if args.json:
        print_json(result)
    else:
        print(
            f"offered {result['offered_fps']} fps, achieved {result['achieved_fps']} fps, "
            f"{result['bytes_per_s'] / 1e6:.2f} MB/s, publish latency p50 {result['publish_latency_ms']['p50']} ms "
            f"p99 {result['publish_latency_ms']['p99']} ms"
        )
    return 0


def cmd_bench_tvm_levers(args: argparse.Namespace) -> int:
    from deploy.bench import tvm_levers
    from detectors.detector import read_model

    path = bench_model(args)
    threads = [int(t) for t in args.threads.split(",")]
    trials = [int(t) for t in args.trials.split(",") if t.strip()]
    result = tvm_levers.run(read_model(path), path.stem, threads, trials, args.seconds, say_to_stderr("bench tvm-levers"))
    if args.json:
        print_json(result)
    else:
        for row in result["rows"]:
            tuned = "" if row["tune_s"] is None else f", tuned {row['tune_s']} s"
            print(
                f"{row['lever']:20s} {row['threads']} thr  {row['p50_ms']:7.2f} ms  x{row['speed_vs_ort']:.2f} of ORT  "
                f"(built {row['build_s']} s{tuned})  {row['settings']}"
            )
    return 0


def cmd_bench_detector(args: argparse.Namespace) -> int:
    from deploy.bench import detector as bench_detector

    model = bench_model(args)
    result = bench_detector.run(
        model.read_bytes(),
        model.stem,
        data_dir(args.data) / "PETS09-S2L1",
        args.backends.split(","),
        [int(b) for b in args.batch.split(",")],
        seconds=args.seconds,
        threads=args.threads,
        progress=say_to_stderr("bench detector"),
    )
    print_json(result) if args.json else print(json.dumps(result))
    return 0


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from deploy.bench import pipeline as bench_pipeline

    data = data_dir(args.data)
    with _bench_stack(args) as (bootstrap, topics, home):
        result = bench_pipeline.run(
            bootstrap,
            topics,
            bench_model(args),
            str(data / "PETS09-S2L1" / "vtest.avi"),
            data / "PETS09-S2L1",
            args.cameras,
            args.fps,
            args.seconds,
            args.threads,
            args.batch,
            home,
            progress=say_to_stderr("bench pipeline"),
            backend=args.backend,
            background_load=args.background_load,
            load_generator=args.load_generator,
        )
    print_json(result) if args.json else print(json.dumps(result))
    return 0


def cmd_bench_faults(args: argparse.Namespace) -> int:
    from deploy.bench import faults

    data = data_dir(args.data)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in faults.SCENARIOS]
    if unknown:
        raise PedstreamError(f"--scenarios: unknown {', '.join(unknown)}; choose from {', '.join(faults.SCENARIOS)}")
    with _bench_stack(args) as (bootstrap, _topics, home):
        rig = faults.FaultRig(
            bootstrap,
            args.model or "student",
            str(data / "PETS09-S2L1" / "vtest.avi"),
            home,
            models_dir=models_dir(args.data),
            cameras=args.cameras,
            fps=args.fps,
            seconds=args.seconds,
            ray_port=args.ray_port,
            logs_dir=Path(args.logs).resolve() if args.logs else None,
            broker_signal=signal.SIGTERM if args.broker_stop == "term" else signal.SIGKILL,
        )
        with contextlib.redirect_stdout(sys.stderr):  # Ray prints "a worker died" to stdout: keep stdout the JSON alone
            result = faults.run(rig, scenarios, progress=say_to_stderr("bench faults"))
    print_json(result) if args.json else print(json.dumps(result))
    return 0 if all(s["lost"] == 0 and all(s["checks"].values()) for s in result["scenarios"]) else 1


def cmd_bench_capacity(args: argparse.Namespace) -> int:
    from deploy.bench import pipeline as bench_pipeline

    data = data_dir(args.data)
    with _bench_stack(args) as (bootstrap, topics, home):
        result = bench_pipeline.capacity(
            bootstrap,
            topics,
            bench_model(args),
            str(data / "PETS09-S2L1" / "vtest.avi"),
            home,
            args.threads,
            args.batch,
            fps=args.fps,
            seconds=args.seconds,
            p99_ms=args.p99_ms,
            max_cameras=args.max_cameras,
            backend=args.backend,
            progress=say_to_stderr("bench capacity"),
            load_generator=args.load_generator,
        )
    print_json(result) if args.json else print(json.dumps(result))
    return 0


@contextmanager
def _bench_stack(args: argparse.Namespace) -> Iterator[tuple[str, Topics, Path]]:
    """The broker to measure on (a temporary embedded stack when none was named), fresh topics, a home folder."""
    from deploy.stack import endpoints_or_temporary_stack

    topics = Topics.from_env(args.topic_prefix or f"bench{os.getpid()}")
    with (
        endpoints_or_temporary_stack(args.bootstrap, args.redis, topics, announce=lambda m: print(m, file=sys.stderr)) as ep,
        tempfile.TemporaryDirectory(prefix="pedstream-bench-") as home,
    ):
        yield ep.bootstrap, topics, Path(home)


def _agent_flags(b: argparse.ArgumentParser) -> None:
    b.add_argument(
        "--load-generator",
        choices=("cameras", "replay"),
        default="cameras",
        help="cameras: camera agents decoding and encoding video here (they share the cores); replay: pre-encoded "
        "frames published from one thread, as if the cameras ran on other hosts",
    )
    b.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the agent")
    b.add_argument("--batch", type=int, default=4, help="the agent's largest micro-batch")
    b.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="the agent's --backend (default auto, as detect)")


def register(sub: Any, flags: Flags) -> None:
    p = sub.add_parser("bench", help="benchmarks that print JSON")
    bench_sub = p.add_subparsers(dest="bench_command", required=True)
    b = bench_sub.add_parser("ingest", parents=[flags.conn], help="virtual cameras publishing to Kafka")
    b.add_argument("--cameras", type=int, default=8)
    b.add_argument("--fps", type=float, default=5.0)
    b.add_argument("--seconds", type=float, default=20.0)
    b.add_argument("--source", help="video to derive cameras from (default: $PEDSTREAM_DATA/PETS09-S2L1/vtest.avi)")
    flags.data(b)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_ingest)

    bench_model = argparse.ArgumentParser(add_help=False)
    bench_model.add_argument("--model", help="ONNX model (default: $PEDSTREAM_MODELS/ssdlite_pedestrian.onnx)")
    flags.data(bench_model)
    bench_model.add_argument("--json", action="store_true")

    b = bench_sub.add_parser("detector", parents=[bench_model], help="fps and latency per backend and batch size")
    b.add_argument("--backends", default="ort,tvm")
    b.add_argument("--batch", default="1,4")
    b.add_argument("--seconds", type=float, default=6.0, help="measuring time per (backend, batch)")
    b.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    b.set_defaults(func=cmd_bench_detector)

    b = bench_sub.add_parser(
        "tvm-levers", parents=[bench_model], help="TVM's layout, schedule, tuning and thread levers against ONNX Runtime"
    )
    b.add_argument("--threads", default="1,2", help="thread counts, each lever timed at each")
    b.add_argument("--trials", default="", help="MetaSchedule budgets to tune for, e.g. 32,128 (minutes each; default none)")
    b.add_argument("--seconds", type=float, default=3.0, help="measuring time per (lever, threads)")
    b.set_defaults(func=cmd_bench_tvm_levers)

    b = bench_sub.add_parser("pipeline", parents=[flags.conn, bench_model], help="cameras -> Kafka -> detector agent, end to end")
    b.add_argument("--cameras", type=int, default=8)
    b.add_argument("--fps", type=float, default=5.0)
    b.add_argument("--seconds", type=float, default=30.0)
    b.add_argument("--background-load", action="store_true", help="keep one core busy with another process during the run")
    _agent_flags(b)
    b.set_defaults(func=cmd_bench_pipeline)

    b = bench_sub.add_parser(
        "capacity", parents=[flags.conn, bench_model], help="the most cameras one agent keeps at p99 <= 150 ms with nothing shed"
    )
    b.add_argument("--fps", type=float, default=5.0, help="frames per second of each camera")
    b.add_argument("--seconds", type=float, default=20.0, help="measuring window per camera count")
    b.add_argument("--p99-ms", type=float, default=150.0, help="capture -> detection p99 a camera count must keep")
    b.add_argument("--max-cameras", type=int, default=64, help="stop searching above this many cameras")
    _agent_flags(b)
    b.set_defaults(func=cmd_bench_capacity)

    b = bench_sub.add_parser(
        "faults", parents=[flags.conn], help="live cameras through real agents, one fault per scenario: frames lost, duplicates, recovery"
    )
    b.add_argument(
        "--scenarios",
        default=",".join(("detector-killed", "redis-restart", "broker-restart", "bad-input", "bad-models", "trainer-killed")),
        help="comma-separated, from the default list (broker-restart needs s3rver: make venv installs it where npm exists)",
    )
    b.add_argument("--ray-port", type=int, default=DEFAULT_BASE_PORT, help="trainer-killed: base of the pinned Ray port range")
    b.add_argument("--model", help="model the agents serve (default: the bundled student)")
    b.add_argument("--logs", metavar="DIR", help="keep each scenario's process logs (agents, broker, store) in DIR/SCENARIO/")
    b.add_argument(
        "--broker-stop", choices=("kill", "term"), default="kill",
        help="broker-restart: stop the broker with SIGKILL (a crash) or SIGTERM (an orderly stop)",
    )  # fmt: skip
    b.add_argument("--cameras", type=int, default=4)
    b.add_argument("--fps", type=float, default=5.0)
    b.add_argument("--seconds", type=float, default=20.0, help="stream length per scenario")
    b.add_argument("--json", action="store_true")
    flags.data(b)
    b.set_defaults(func=cmd_bench_faults)

    loop.register_bench(bench_sub, flags)
    training.register_bench(bench_sub, flags)
