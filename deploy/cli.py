"""The ``pedstream`` command line: parses arguments, loads configuration, hands over to the parts."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from deploy import demo_loop, loop_cmds, registry_cmds, stack, training
from deploy.bench import detector as bench_detector
from deploy.bench import ingest
from deploy.bench import pipeline as bench_pipeline
from deploy.stack import endpoints_or_temporary_stack
from detectors.agent import AgentSettings, DetectorAgent
from detectors.backends.selection import BACKEND_CHOICES
from detectors.detector import Detector, model_path, read_model
from detectors.evaluation import evaluate_sequence
from detectors.tiling import tiled
from streams.bus import RecordSubscriber, read_dead_letters
from streams.cameras.agent import CameraFleet
from streams.cameras.config import CameraConfig, Tiling, load_cameras, parse_cameras
from streams.endpoints import resolve
from streams.errors import PedstreamError
from streams.metrics import register_cameras, serve_metrics
from streams.monitor import FlowMonitor, render_table
from streams.mot import MotSequence
from streams.records import Alert
from streams.topics import Topics

DATA_ENV = "PEDSTREAM_DATA"
MODELS_ENV = "PEDSTREAM_MODELS"
DEMO_CONFIG = Path(__file__).parent / "demo" / "cameras.yaml"

log = logging.getLogger("pedstream")


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


def _connection_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connections")
    group.add_argument("--bootstrap", help="Kafka bootstrap servers host:port[,...] (default: embedded stack, then $PEDSTREAM_BOOTSTRAP)")
    group.add_argument("--redis", help="Redis URL (default: $REDIS_URL, then the embedded stack, then redis://127.0.0.1:6379)")
    group.add_argument("--topic-prefix", help="prefix of every topic name (default: $PEDSTREAM_TOPIC_PREFIX or 'pedstream')")
    return parent


def _data_dir(value: str | None) -> Path:
    raw = value or os.environ.get(DATA_ENV)
    if not raw:
        raise PedstreamError(f"no data folder: pass --data DIR or set {DATA_ENV} (the folder holding PETS09-S2L1/, TUD-Campus/)")
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        raise PedstreamError(f"data folder {path} does not exist")
    return path


def _models_dir(data: str | None) -> Path:
    raw = os.environ.get(MODELS_ENV)
    path = Path(raw).expanduser().resolve() if raw else _data_dir(data).parent / "models"
    if not path.is_dir():
        raise PedstreamError(f"models folder {path} does not exist: set {MODELS_ENV}")
    return path


def _bench_model(args: argparse.Namespace) -> Path:
    """The model a benchmark uses: --model, else the fast pedestrian SSDLite from the models folder."""
    path = model_path(args.model) if args.model else _models_dir(args.data) / "ssdlite_pedestrian.onnx"
    if not path.is_file():
        raise PedstreamError(f"model {path} not found")
    return path


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _live(text: str) -> None:
    """Redraw in place on a terminal; print plain blocks otherwise (logs, CI)."""
    if sys.stdout.isatty():
        sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
    else:
        sys.stdout.write(text + "\n\n")
    sys.stdout.flush()


def _stop_on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# --- stack -------------------------------------------------------------------------------------


def cmd_stack(args: argparse.Namespace) -> int:

    home = Path(args.home).expanduser() if args.home else None
    if args.action == "up":
        state, started = stack.up(home, args.redis, Topics.from_env(args.topic_prefix))
        info = {"started": started, **stack.status(home)}
        if args.json:
            _print_json(info)
        else:
            verb = "started" if started else "already up"
            redis_note = " (started by the stack)" if state.redis_pid else ""
            print(f"stack {verb}: kafka {state.bootstrap} (tansu), redis {state.redis_url}{redis_note}")
        return 0
    if args.action == "down":
        state = stack.down(home)
        if args.json:
            _print_json({"stopped": state is not None})
        else:
            print("stack stopped" if state else "no stack was running")
        return 0
    info = stack.status(home)
    if args.json:
        _print_json(info)
    elif not info.get("up") and "kafka" not in info:
        print(f"stack down: {info['reason']}")
    else:
        kafka, redis_info = info["kafka"], info["redis"]
        assert isinstance(kafka, dict) and isinstance(redis_info, dict)
        print(f"stack {'up' if info['up'] else 'DEGRADED'} for {info['uptime_s']}s")
        print(f"  kafka  {kafka['bootstrap']:<28} pid {kafka['pid']}  {'ok' if kafka['answers'] else 'NOT ANSWERING'}")
        print(f"  redis  {redis_info['url']:<28} pid {redis_info['pid'] or '-'}  {'ok' if redis_info['answers'] else 'NOT ANSWERING'}")
    return 0 if info.get("up") else 1


# --- cameras -----------------------------------------------------------------------------------


def _cameras_from_args(args: argparse.Namespace) -> list[CameraConfig]:

    if args.config:
        if args.source or args.id:
            raise PedstreamError("give either --config FILE or --source/--id, not both")
        return load_cameras(args.config)
    if not args.source:
        raise PedstreamError("give --config cameras.yaml, or --source URI with --id NAME (or --virtual N)")
    options: dict[str, Any] = {
        "fps": args.fps,
        "max_width": args.max_width,
        "jpeg_quality": args.jpeg_quality,
        "loop": not args.once,
        "realtime": not args.fast,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if args.virtual:
        group = {"id_prefix": args.id or "virtual", "source": args.source, "count": args.virtual, **options}
        return parse_cameras({"virtual": [group]}, base_dir=Path.cwd(), origin="command line")
    if not args.id:
        raise PedstreamError("--source needs --id NAME (or --virtual N to derive N cameras)")
    camera = {"id": args.id, "source": int(args.source) if args.source.isdigit() else args.source, **options}
    if args.max_frames:
        camera["max_frames"] = args.max_frames
    return parse_cameras({"cameras": [camera]}, base_dir=Path.cwd(), origin="command line")


def cmd_camera(args: argparse.Namespace) -> int:

    cameras = _cameras_from_args(args)
    if args.validate_config:
        for cam in cameras:
            print(
                f"{cam.id}: {cam.source} fps<={cam.option('fps')} max_width={cam.option('max_width')} look={cam.look.model_dump(exclude_defaults=True)}"
            )
        print(f"configuration valid: {len(cameras)} camera(s)")
        return 0
    endpoints = resolve(args.bootstrap, args.redis)
    fleet = CameraFleet(cameras, endpoints.bootstrap, Topics.from_env(args.topic_prefix))
    _stop_on_signals(fleet.stop_event.set)
    if args.metrics_port is not None:
        register_cameras(fleet.stats)
        serve_metrics(args.metrics_port, args.metrics_host)
        print(f"[camera] metrics on http://{args.metrics_host}:{args.metrics_port}/metrics", file=sys.stderr, flush=True)
    log.info("publishing %d camera(s) to %s", len(cameras), endpoints.bootstrap)
    fleet.start()
    started = time.monotonic()

    def report() -> None:
        if time.monotonic() - started >= args.report_every:
            rows = [
                f"{s['camera_id']}: {s['state']} published={s['published']} dropped={s['dropped']}"
                + (f" error={s['last_error']}" if s["last_error"] else "")
                for s in fleet.stats()
            ]
            log.info("cameras: %s", "; ".join(rows))

    fleet.wait(args.seconds, on_tick=report, tick_s=args.report_every)
    fleet.stop()
    if args.json:
        _print_json(fleet.stats())
    return 0


def cmd_frames_watch(args: argparse.Namespace) -> int:

    endpoints = resolve(args.bootstrap, args.redis)
    monitor = FlowMonitor(
        endpoints.bootstrap,
        Topics.from_env(args.topic_prefix),
        f"pedstream-watch-{os.getpid()}",
        from_beginning=args.from_beginning,
        camera=args.camera,
    ).start()
    stopping = {"now": False}
    _stop_on_signals(lambda: stopping.update(now=True))
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    try:
        while not stopping["now"] and (deadline is None or time.monotonic() < deadline):
            time.sleep(1.0)
            if not args.json:
                _live(f"frames on {endpoints.bootstrap} ({endpoints.origin})\n" + render_table(monitor.snapshot()))
    finally:
        monitor.stop()
    if args.json:
        _print_json({"cameras": monitor.snapshot(), "dead_lettered": monitor.dead_lettered})
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:

    endpoints = resolve(args.bootstrap, args.redis)
    letters = read_dead_letters(endpoints.bootstrap, Topics.from_env(args.topic_prefix), timeout_s=args.timeout)
    rows = [
        {
            "reason": d.reason,
            "topic": d.source_topic,
            "partition": d.source_partition,
            "offset": d.source_offset,
            "key": d.key.decode(errors="replace") if d.key else None,
            "bytes": len(d.value or b""),
            "at": d.dead_lettered_ts,
        }
        for d in letters
    ]
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['topic']}[{r['partition']}]@{r['offset']} key={r['key']} ({r['bytes']} B): {r['reason']}")
        print(f"{len(rows)} dead letter(s)")
    return 0


# --- detection -------------------------------------------------------------------------------


def _load_detector(args: argparse.Namespace) -> Detector:
    path = model_path(args.model)
    return Detector.from_bytes(read_model(path), backend=args.backend, fmt=args.format, name=path.stem, threads=args.threads)


def cmd_detect(args: argparse.Namespace) -> int:
    cameras = load_cameras(args.cameras) if args.cameras else []
    detector = _load_detector(args)
    endpoints = resolve(args.bootstrap, args.redis)
    public_key = None if args.no_registry else registry_cmds.default_public_key(args.public_key)
    settings = AgentSettings(
        bootstrap=endpoints.bootstrap,
        topics=Topics.from_env(args.topic_prefix),
        group=args.group,
        **({"agent_id": args.agent_id} if args.agent_id else {}),
        max_batch=args.batch,
        max_wait_ms=args.batch_wait_ms,
        publish_threshold=args.publish_threshold,
        track_threshold=args.score_threshold,
        redis_url=None if args.no_registry else endpoints.redis_url,
        public_key=public_key,
        serve_backend=args.backend,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )
    print(
        f"detector agent {settings.agent_id}: model {detector.version} ({detector.info.format}) on "
        f"{detector.backend.name}: {detector.backend_reason}",
        file=sys.stderr,
        flush=True,
    )
    if settings.redis_url and public_key:
        print(f"following the model registry at {endpoints.redis_url} (models signed for {public_key})", file=sys.stderr, flush=True)
    elif not args.no_registry:
        print("not following the model registry: no public key (pedstream keys init, or --public-key)", file=sys.stderr, flush=True)
    DetectorAgent(settings, detector, cameras).run()
    return 0


def cmd_alerts_tail(args: argparse.Namespace) -> int:
    endpoints = resolve(args.bootstrap, args.redis)
    topics = Topics.from_env(args.topic_prefix)
    subscriber = RecordSubscriber(endpoints.bootstrap, topics, topics.alerts, Alert, f"pedstream-alerts-{os.getpid()}")
    since = 0.0 if args.from_beginning else time.time() - 1.0
    stopping = {"now": False}
    _stop_on_signals(lambda: stopping.update(now=True))
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    try:
        while not stopping["now"] and (deadline is None or time.monotonic() < deadline):
            for item in subscriber.poll(0.5):
                alert = item.record
                if alert.capture_ts < since or (args.camera and alert.camera_id != args.camera):
                    continue
                if args.json:
                    print(alert.model_dump_json(), flush=True)
                else:
                    stamp = time.strftime("%H:%M:%S", time.localtime(alert.capture_ts))
                    print(f"{stamp} {alert.camera_id:<14} {alert.rule:<16} {alert.message} tracks={alert.track_ids}", flush=True)
    finally:
        subscriber.close()
    return 0


def _frame_range(text: str | None) -> tuple[int, int | None]:
    if not text:
        return 1, None
    try:
        first, _, last = text.partition(":")
        return int(first or 1), int(last) if last else None
    except ValueError:
        raise PedstreamError(f"--frames {text!r}: use A:B (1-based, inclusive), A: or :B") from None


def _tiling(text: str | None, overlap: int, full_frame: bool) -> Tiling | None:
    if not text:
        return None
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
        return Tiling(rows=rows, cols=cols, overlap=overlap, include_full_frame=full_frame)
    except (ValueError, PydanticValidationError) as exc:
        raise PedstreamError(f"--tiles {text!r}: use ROWSxCOLS, e.g. 2x2 ({exc})") from None


def cmd_eval(args: argparse.Namespace) -> int:
    detector = _load_detector(args)
    tiling = _tiling(args.tiles, args.overlap, args.full_frame)
    sequence = MotSequence.load(args.sequence)
    start, stop = _frame_range(args.frames)
    total = len(range(start, (stop or sequence.length) + 1, args.every))

    def progress(done: int) -> None:
        if done % 25 == 0 or done == total:
            print(f"[eval] {done}/{total} frames", file=sys.stderr, flush=True)

    detect = tiled(detector.detect, tiling) if tiling else detector.detect
    result = evaluate_sequence(detect, sequence, start, stop, args.every, progress)
    out = {
        **result.as_dict(),
        "model": detector.version,
        "tiling": tiling.model_dump() if tiling else None,
        "format": detector.info.format,
        "backend": detector.backend.name,
        "backend_reason": detector.backend_reason,
        "sequence": sequence.name,
        "frame_range": [start, stop or sequence.length],
        "every": args.every,
    }
    if args.json:
        _print_json(out)
    else:
        print(
            f"{sequence.name} frames {start}-{stop or sequence.length} every {args.every}: AP50 {result.ap50:.3f}, "
            f"best recall {result.recall:.3f}, {result.fps:.1f} fps ({detector.backend.name})"
        )
    return 0


# --- bench and demo ----------------------------------------------------------------------------


def cmd_bench_ingest(args: argparse.Namespace) -> int:

    source = args.source or str(_data_dir(args.data) / "PETS09-S2L1" / "vtest.avi")
    topics = Topics.from_env(args.topic_prefix)

    def progress(elapsed: float, stats: list[dict[str, object]]) -> None:
        published = sum(int(s["published"]) for s in stats)  # type: ignore[call-overload]
        print(f"[bench ingest] {elapsed:5.1f}s / {args.seconds}s  published {published}", file=sys.stderr, flush=True)

    with endpoints_or_temporary_stack(args.bootstrap, args.redis, topics, announce=lambda m: print(m, file=sys.stderr)) as ep:
        result = ingest.run(ep.bootstrap, topics, source, args.cameras, args.fps, args.seconds, progress)
    if args.json:
        _print_json(result)
    else:
        print(
            f"offered {result['offered_fps']} fps, achieved {result['achieved_fps']} fps, "
            f"{result['bytes_per_s'] / 1e6:.2f} MB/s, publish latency p50 {result['publish_latency_ms']['p50']} ms "
            f"p99 {result['publish_latency_ms']['p99']} ms"
        )
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    model = model_path(args.model)
    work_dir = Path(args.work_dir) if args.work_dir else Path.home() / ".cache" / "pedstream" / "tuning" / model.stem
    print(f"[tune] MetaSchedule, {args.trials} trials, database in {work_dir} (this takes minutes)", file=sys.stderr, flush=True)
    result = tvm_tuning().tune(read_model(model), work_dir, args.trials, args.trials_per_task)
    backend = tvm_backend().TvmBackend(read_model(model), tuning_dir=work_dir)
    result["compiled"] = backend.describe()
    _print_json(result)
    return 0


def tvm_tuning():  # type: ignore[no-untyped-def]
    """The tuning module: imported on demand, as TVM takes seconds to import and only `tune` needs it."""
    return importlib.import_module("detectors.backends.tvm_tuning")


def tvm_backend():  # type: ignore[no-untyped-def]
    return importlib.import_module("detectors.backends.tvm")


def cmd_bench_detector(args: argparse.Namespace) -> int:
    model = _bench_model(args)
    result = bench_detector.run(
        model.read_bytes(),
        model.stem,
        _data_dir(args.data) / "PETS09-S2L1",
        args.backends.split(","),
        [int(b) for b in args.batch.split(",")],
        seconds=args.seconds,
        threads=args.threads,
        progress=lambda m: print(f"[bench detector] {m}", file=sys.stderr, flush=True),
    )
    _print_json(result) if args.json else print(json.dumps(result))
    return 0


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    model = _bench_model(args)
    data = _data_dir(args.data)
    topics = Topics.from_env(args.topic_prefix or f"bench{os.getpid()}")
    with endpoints_or_temporary_stack(args.bootstrap, args.redis, topics, announce=lambda m: print(m, file=sys.stderr)) as ep:
        with tempfile.TemporaryDirectory(prefix="pedstream-bench-") as home:
            result = bench_pipeline.run(
                ep.bootstrap,
                topics,
                model,
                str(data / "PETS09-S2L1" / "vtest.avi"),
                data / "PETS09-S2L1",
                args.cameras,
                args.fps,
                args.seconds,
                args.threads,
                args.batch,
                Path(home),
                progress=lambda m: print(f"[bench pipeline] {m}", file=sys.stderr, flush=True),
            )
    _print_json(result) if args.json else print(json.dumps(result))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    args.sequence = args.sequence or str(_data_dir(args.data) / "PETS09-S2L1")
    models = _models_dir(args.data) if args.labels == "teacher" else None
    return training.cmd_train(args, models)


def cmd_bench_train(args: argparse.Namespace) -> int:
    args.sequence = args.sequence or str(_data_dir(args.data) / "PETS09-S2L1")
    models = _models_dir(args.data) if args.labels == "teacher" else None
    return training.cmd_bench_train(args, models)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from deploy.dashboard import Dashboard

    endpoints = resolve(args.bootstrap, args.redis)
    dashboard = Dashboard(endpoints.bootstrap, Topics.from_env(args.topic_prefix), args.host, args.port, args.from_start)
    _stop_on_signals(lambda: threading.Thread(target=dashboard.server.shutdown, daemon=True).start())
    print(f"pedstream dashboard on {dashboard.address} (kafka {endpoints.bootstrap})", file=sys.stderr, flush=True)
    dashboard.run()
    return 0


def cmd_demo_cameras(args: argparse.Namespace) -> int:
    """`pedstream demo --cameras-only`: the stack, the bundled virtual cameras and a live consumer."""
    os.environ[DATA_ENV] = str(_data_dir(args.data))
    cameras = load_cameras(args.config or DEMO_CONFIG)
    topics = Topics.from_env(args.topic_prefix)
    with endpoints_or_temporary_stack(args.bootstrap, args.redis, topics) as ep:
        monitor = FlowMonitor(ep.bootstrap, topics, f"pedstream-demo-{os.getpid()}").start()
        fleet = CameraFleet(cameras, ep.bootstrap, topics)
        _stop_on_signals(fleet.stop_event.set)
        fleet.start()
        started = time.monotonic()

        def show() -> None:
            _live(
                f"pedstream demo: {len(cameras)} virtual cameras -> kafka {ep.bootstrap} "
                f"[{time.monotonic() - started:4.0f}s / {args.seconds:.0f}s]\n" + render_table(monitor.snapshot())
            )

        try:
            fleet.wait(args.seconds, on_tick=show)
        finally:
            fleet.stop()
            time.sleep(1.0)
            snapshot = monitor.snapshot()
            monitor.stop()
    published = sum(int(s["published"]) for s in fleet.stats())  # type: ignore[call-overload]
    received = sum(int(f["frames"]) for f in snapshot.values())  # type: ignore[call-overload]
    print(
        f"\nsummary: {len(cameras)} cameras, {published} frames published, {received} received by the consumer, "
        f"{sum(int(f['missing']) for f in snapshot.values())} missing"
    )  # type: ignore[call-overload]
    return 0 if received > 0 else 1


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    conn = _connection_flags()
    parser = argparse.ArgumentParser(prog="pedstream", description="Multi-camera pedestrian detection as a stream.")
    parser.add_argument("--log-level", default=os.environ.get("PEDSTREAM_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", parents=[conn], help="start, stop or inspect the embedded Kafka (tansu) + Redis stack")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--home", help="folder for the stack's state and logs (default: $PEDSTREAM_HOME or ~/.pedstream)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("camera", parents=[conn, metrics_flags()], help="run camera ingestion agents (many cameras in one process)")
    p.add_argument("--config", help="cameras.yaml (see docs/cameras.md)")
    p.add_argument("--source", help="one source: video file, rtsp/http URL, USB index, or image/MOT folder")
    p.add_argument("--id", help="camera id for --source (with --virtual: the id prefix)")
    p.add_argument("--virtual", type=int, metavar="N", help="derive N virtual cameras from --source")
    p.add_argument("--fps", type=float, help="publish at most this many fps per camera (default 5)")
    p.add_argument("--max-width", type=int, help="downscale wider frames (default 1280)")
    p.add_argument("--jpeg-quality", type=int, help="1-100 (default 80)")
    p.add_argument("--once", action="store_true", help="play a file once instead of looping")
    p.add_argument("--fast", action="store_true", help="read files as fast as possible instead of in real time")
    p.add_argument("--max-frames", type=int, help="stop a --source camera after this many frames")
    p.add_argument("--seconds", type=float, help="stop after this long (default: run until stopped)")
    p.add_argument("--report-every", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--validate-config", action="store_true", help="check the configuration and exit")
    p.add_argument("--json", action="store_true", help="print per-camera counters as JSON at the end")
    p.set_defaults(func=cmd_camera)

    p = sub.add_parser("frames", parents=[conn], help="subscribe to frames")
    frames_sub = p.add_subparsers(dest="frames_command", required=True)
    w = frames_sub.add_parser("watch", parents=[conn], help="live per-camera fps, gaps and lag")
    w.add_argument("--seconds", type=float)
    w.add_argument("--camera")
    w.add_argument("--from-beginning", action="store_true")
    w.add_argument("--json", action="store_true", help="print a JSON summary at the end instead of a live table")
    w.set_defaults(func=cmd_frames_watch)

    p = sub.add_parser("dead-letters", parents=[conn], help="list messages rejected into the dead-letter topic")
    p.add_argument("--timeout", type=float, default=3.0, help="stop after this many quiet seconds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dead_letters)

    model = argparse.ArgumentParser(add_help=False)
    group = model.add_argument_group("model")
    group.add_argument("--model", required=True, help="ONNX model file, or 'student' for the bundled student")
    group.add_argument("--format", help="model family if it cannot be told from the ONNX signature")
    group.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="ort",
        help="ort, tvm (falls back to ort with the reason), or auto (measure both here, serve the faster); default: auto for detect, ort otherwise",
    )
    group.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")

    p = sub.add_parser("detect", parents=[conn, model, metrics_flags()], help="run an edge detector agent (faust)")
    p.set_defaults(backend="auto")  # an agent measures both backends on its device and serves the faster
    p.add_argument("--cameras", help="cameras.yaml with per-camera alert rules, tiling and mining budget")
    p.add_argument("--group", default="pedstream-detectors", help="agents in one group split the cameras")
    p.add_argument("--agent-id")
    p.add_argument("--batch", type=int, default=4, help="micro-batch up to this many images")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="...or until this long has passed")
    p.add_argument("--publish-threshold", type=float, default=0.3, help="publish boxes at or above this score")
    p.add_argument("--score-threshold", type=float, default=0.5, help="boxes that count for tracking and alerts")
    p.add_argument(
        "--public-key",
        help="follow the model registry, serving only models signed for this Ed25519 public key "
        "(default: $PEDSTREAM_KEYS/model-signing.pub when it exists)",
    )
    p.add_argument("--no-registry", action="store_true", help="serve --model only; ignore the model registry")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("alerts", help="subscribe to alerts")
    alerts_sub = p.add_subparsers(dest="alerts_command", required=True)
    a = alerts_sub.add_parser("tail", parents=[conn], help="print alerts as they fire")
    a.add_argument("--camera")
    a.add_argument("--json", action="store_true", help="one JSON record per line")
    a.add_argument("--from-beginning", action="store_true")
    a.add_argument("--seconds", type=float)
    a.set_defaults(func=cmd_alerts_tail)

    p = sub.add_parser("eval", parents=[model], help="AP50 of a model on a MOT-style sequence")
    p.add_argument("--sequence", required=True, help="MOT-style sequence folder")
    p.add_argument("--tiles", help="run the model on ROWSxCOLS overlapping tiles, e.g. 2x2")
    p.add_argument("--overlap", type=int, default=96, help="tile overlap in pixels (at least the tallest person)")
    p.add_argument("--full-frame", action="store_true", help="with --tiles: also run the whole frame")
    p.add_argument("--frames", help="A:B, 1-based inclusive (default: all)")
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("tune", help="tune a model with TVM MetaSchedule for this device type (a job)")
    p.add_argument("--model", required=True)
    p.add_argument("--trials", type=int, default=256, help="measurements in all (more: faster code, longer job)")
    p.add_argument("--trials-per-task", type=int)
    p.add_argument("--work-dir", help="tuning database folder (default ~/.cache/pedstream/tuning/<model>)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("bench", help="benchmarks that print JSON")
    bench_sub = p.add_subparsers(dest="bench_command", required=True)
    b = bench_sub.add_parser("ingest", parents=[conn], help="virtual cameras publishing to Kafka")
    b.add_argument("--cameras", type=int, default=8)
    b.add_argument("--fps", type=float, default=5.0)
    b.add_argument("--seconds", type=float, default=20.0)
    b.add_argument("--source", help="video to derive cameras from (default: $PEDSTREAM_DATA/PETS09-S2L1/vtest.avi)")
    b.add_argument("--data", help=f"data folder (default: ${DATA_ENV})")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_ingest)

    bench_model = argparse.ArgumentParser(add_help=False)
    bench_model.add_argument("--model", help="ONNX model (default: $PEDSTREAM_MODELS/ssdlite_pedestrian.onnx)")
    bench_model.add_argument("--data", help=f"data folder (default: ${DATA_ENV})")
    bench_model.add_argument("--json", action="store_true")

    b = bench_sub.add_parser("detector", parents=[bench_model], help="fps and latency per backend and batch size")
    b.add_argument("--backends", default="ort,tvm")
    b.add_argument("--batch", default="1,4")
    b.add_argument("--seconds", type=float, default=6.0, help="measuring time per (backend, batch)")
    b.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    b.set_defaults(func=cmd_bench_detector)

    b = bench_sub.add_parser("pipeline", parents=[conn, bench_model], help="cameras -> Kafka -> detector agent, end to end")
    b.add_argument("--cameras", type=int, default=8)
    b.add_argument("--fps", type=float, default=5.0)
    b.add_argument("--seconds", type=float, default=30.0)
    b.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the agent")
    b.add_argument("--batch", type=int, default=4)
    b.set_defaults(func=cmd_bench_pipeline)

    b = loop_cmds.add_bench_loop_parser(bench_sub, conn, lambda q: q.add_argument("--data", help=f"data folder (default: ${DATA_ENV})"))
    b.set_defaults(func=lambda a: loop_cmds.cmd_bench_loop(a, _data_dir(a.data), _models_dir(a.data)))

    b = training.add_bench_train_parser(bench_sub, lambda q: q.add_argument("--data", help=f"data folder (default: ${DATA_ENV})"))
    b.set_defaults(func=cmd_bench_train)

    registry_cmds.add_parsers(sub, conn)
    trainer_parser, _ = loop_cmds.add_parsers(
        sub, conn, lambda q: q.add_argument("--data", help=f"data folder (default: ${DATA_ENV})"), metrics_flags()
    )
    trainer_parser.set_defaults(func=lambda a: loop_cmds.cmd_trainer(a, _models_dir(a.data)))

    p = training.add_train_parser(sub, lambda q: q.add_argument("--data", help=f"data folder (default: ${DATA_ENV})"))
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("dashboard", parents=[conn], help="a live page: each camera's annotated frame, counts, alerts, model")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--from-start", action="store_true", help="read the topics from their start instead of from now")
    p.set_defaults(func=cmd_dashboard)

    p = demo_loop.add_parser(sub, conn, lambda q: q.add_argument("--data", help=f"data folder (default: ${DATA_ENV})"))
    p.set_defaults(func=lambda a: cmd_demo_cameras(a) if a.cameras_only else demo_loop.cmd_demo(a, _data_dir(a.data), _models_dir(a.data)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except PedstreamError as exc:
        print(f"pedstream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
