"""``pedstream detect`` (an edge detector agent), ``alerts tail``, ``eval`` (AP50 of a model on a
MOT-style sequence) and ``tune`` (TVM MetaSchedule)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from deploy.commands.common import MODELS_ENV, Flags, find_model, find_sequence, print_json, stop_on_signals
from deploy.commands.registry import default_public_key
from detectors.backends.selection import BACKEND_CHOICES
from detectors.results import PUBLISH_THRESHOLD
from streams.cameras.config import Tiling
from streams.endpoints import resolve
from streams.errors import PedstreamError
from streams.mot import MotSequence, parse_frame_range
from streams.topics import Topics

if TYPE_CHECKING:
    from detectors.detector import Detector


def model_flags(backend_default: str = "ort") -> argparse.ArgumentParser:
    """--model, --format, --backend, --threads: how a command loads a detector. Each command that
    wants another default builds its own parent (argparse parents share their option objects, so
    ``set_defaults`` on one command would change the default of every command built from it)."""
    model = argparse.ArgumentParser(add_help=False)
    group = model.add_argument_group("model")
    group.add_argument(
        "--model", required=True, help="ONNX model file (a bare name is looked up in $PEDSTREAM_MODELS), or 'student' for the bundled one"
    )
    group.add_argument("--format", help="model family if it cannot be told from the ONNX signature")
    group.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=backend_default,
        help=f"ort, tvm (falls back to ort with the reason), or auto (measure both here, serve the faster); default: {backend_default}",
    )
    group.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    return model


def _load_detector(args: argparse.Namespace) -> Detector:
    """The --model detector; an error names the file (and where a bare name was looked for)."""
    from detectors.backends.base import BackendError
    from detectors.detector import Detector, model_path, read_model

    path = model_path(find_model(args.model))
    try:
        return Detector.from_bytes(read_model(path), backend=args.backend, fmt=args.format, name=path.stem, threads=args.threads)
    except BackendError as exc:
        message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        if not path.exists() and not Path(args.model).is_absolute() and os.sep not in args.model:
            message += f" (a bare name is looked for here and in ${MODELS_ENV}={os.environ.get(MODELS_ENV) or 'unset'})"
        raise BackendError(message) from None


def cmd_detect(args: argparse.Namespace) -> int:
    from detectors.agent import AgentSettings, DetectorAgent
    from detectors.agreement import AgreementPolicy
    from streams.cameras.config import load_cameras
    from streams.redis_roles import redacted

    cameras = load_cameras(args.cameras) if args.cameras else []
    detector = _load_detector(args)
    endpoints = resolve(args.bootstrap, args.redis, role="edge")
    public_key = None if args.no_registry else default_public_key(args.public_key)
    settings = AgentSettings(
        bootstrap=endpoints.bootstrap,
        topics=Topics.from_env(args.topic_prefix),
        group=args.group,
        **({"agent_id": args.agent_id} if args.agent_id else {}),
        max_batch=args.batch,
        max_wait_ms=args.batch_wait_ms,
        catch_up_s=args.catch_up_s or None,
        republish_window_s=max(0.0, args.republish_window_s),
        publish_threshold=args.publish_threshold,
        track_threshold=args.score_threshold,
        redis_url=None if args.no_registry else endpoints.redis_url,
        public_key=public_key,
        serve_backend=args.backend,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        teacher_model=Path(find_model(args.teacher_model)) if args.teacher_model else None,
        agreement=AgreementPolicy(every_s=args.agreement_every_s, max_drop=args.rollback_drop),
    )
    print(
        f"detector agent {settings.agent_id}: model {detector.version} ({detector.info.format}) on "
        f"{detector.backend.name}: {detector.backend_reason}",
        file=sys.stderr,
        flush=True,
    )
    if settings.redis_url and public_key:
        print(
            f"following the model registry at {redacted(endpoints.redis_url)} (models signed for {public_key})", file=sys.stderr, flush=True
        )
        if settings.teacher_model:
            print(
                f"automatic rollback: every {args.agreement_every_s:g} s a frame per camera is checked against "
                f"{settings.teacher_model.name}; a camera whose agreement falls by more than {args.rollback_drop:g} after a swap goes back",
                file=sys.stderr,
                flush=True,
            )
    elif not args.no_registry:
        print("not following the model registry: no public key (pedstream keys init, or --public-key)", file=sys.stderr, flush=True)

    def report(summary: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(summary), flush=True)  # one line: easy to pick out of a log
        else:
            frames = ", ".join(f"{camera} {n}" for camera, n in summary["cameras"].items()) or "none"
            print(f"detector agent {settings.agent_id} stopped: frames detected per camera: {frames}", file=sys.stderr, flush=True)

    DetectorAgent(settings, detector, cameras).run(on_stop=report)
    return 0


def cmd_alerts_tail(args: argparse.Namespace) -> int:
    from streams.bus import RecordSubscriber
    from streams.records import Alert

    endpoints = resolve(args.bootstrap, args.redis)
    topics = Topics.from_env(args.topic_prefix)
    subscriber = RecordSubscriber(endpoints.bootstrap, topics, topics.alerts, Alert, f"pedstream-alerts-{os.getpid()}")
    since = 0.0 if args.from_beginning else time.time() - 1.0
    stopping = {"now": False}
    stop_on_signals(lambda: stopping.update(now=True))
    which = f"camera {args.camera}" if args.camera else "every camera"
    print(f"alerts of {which} on {endpoints.bootstrap} (topic {topics.alerts.name}); Ctrl-C stops", file=sys.stderr, flush=True)
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


def _tiling(text: str | None, overlap: int, full_frame: bool) -> Tiling | None:
    if not text:
        return None
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
        return Tiling(rows=rows, cols=cols, overlap=overlap, include_full_frame=full_frame)
    except (ValueError, PydanticValidationError) as exc:
        raise PedstreamError(f"--tiles {text!r}: use ROWSxCOLS, e.g. 2x2 ({exc})") from None


def cmd_quantize(args: argparse.Namespace) -> int:
    from detectors.detector import model_path, read_model
    from detectors.quantize import calibration_picks, quantize_int8, with_int8_version

    sequence = MotSequence.load(find_sequence(args.calibration))
    start, stop = parse_frame_range(args.frames, sequence.length)
    picked = [start + i for i in calibration_picks(stop - start + 1, args.count)]  # spread as the trainer spreads its own
    images = [image for _, image in sequence.picked_frames(picked)]
    print(f"[quantize] calibrating on {len(images)} frames of {sequence.name} {start}-{stop}", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.write_bytes(with_int8_version(quantize_int8(read_model(find_model(args.model)), images)))
    print_json(
        {
            "model": str(model_path(find_model(args.model))),
            "int8": str(out),
            "calibration": f"{sequence.name} {start}-{stop}",
            "frames": len(images),
        }
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from detectors.evaluation import evaluate_sequence
    from detectors.tiling import tiled

    detector = _load_detector(args)
    tiling = _tiling(args.tiles, args.overlap, args.full_frame)
    sequence = MotSequence.load(find_sequence(args.sequence))
    start, stop = parse_frame_range(args.frames, sequence.length)
    total = len(range(start, stop + 1, args.every))

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
        "frame_range": [start, stop],
        "every": args.every,
    }
    if args.json:
        print_json(out)
    else:
        print(
            f"{sequence.name} frames {start}-{stop} every {args.every}: AP50 {result.ap50:.3f} "
            f"({result.ap50_labelled_sizes:.3f} at labelled sizes), best recall {result.recall:.3f}, "
            f"{result.fps:.1f} fps ({detector.backend.name})"
        )
        e = result.errors
        print(
            f"  at score >= {e.min_score}: {e.hits} people found, {e.missed} missed; false boxes: {e.misplaced} misplaced "
            f"(part of a person or beside one), {e.duplicate} duplicates, {e.background} on no labelled person"
        )
        if result.by_height:
            print(
                "  by height: "
                + "; ".join(
                    f"{r.low:.0f}{'-' + format(r.high, '.0f') if r.high is not None else '+'} px: {r.found} of {r.people} found, "
                    f"median best score {r.median_best_score:.2f}"
                    for r in result.by_height
                )
            )
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """TVM takes seconds to import and only `tune` needs its tuning module: imported here."""
    from detectors.backends import tvm, tvm_tuning
    from detectors.detector import model_path, read_model

    model = model_path(find_model(args.model))
    work_dir = Path(args.work_dir) if args.work_dir else Path.home() / ".cache" / "pedstream" / "tuning" / model.stem
    print(f"[tune] MetaSchedule, {args.trials} trials, database in {work_dir} (this takes minutes)", file=sys.stderr, flush=True)
    result = tvm_tuning.tune(read_model(model), work_dir, args.trials, args.trials_per_task)
    backend = tvm.TvmBackend(read_model(model), tuning_dir=work_dir)
    result["compiled"] = backend.describe()
    if args.json:
        print_json(result)
    else:
        print(
            f"tuned {model.name}: {args.trials} trials in {result['seconds']} s for {result['target']}; database {result['database']} "
            f"in {work_dir}; `pedstream detect --backend tvm` compiles with it"
        )
    return 0


def register(sub: Any, flags: Flags) -> None:
    model = model_flags()
    # an agent measures both backends on its device and serves the faster
    p = sub.add_parser("detect", parents=[flags.conn, model_flags("auto"), flags.metrics], help="run an edge detector agent (faust)")
    p.add_argument("--cameras", help="cameras.yaml with per-camera alert rules, tiling and mining budget")
    p.add_argument("--group", default="pedstream-detectors", help="agents in one group split the cameras")
    p.add_argument("--agent-id")
    p.add_argument("--batch", type=int, default=4, help="micro-batch up to this many images")
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="wait this long for more frames to fill a batch (default 0: batch only what is already queued, which "
        "adds no latency; batches still grow when inference falls behind)",
    )
    p.add_argument(
        "--catch-up-s",
        type=float,
        default=60.0,
        help="at start, a group whose position is older than this skips to newer frames (0: replay everything)",
    )
    p.add_argument(
        "--republish-window-s",
        type=float,
        default=10.0,
        help="after a rebalance (a broker restart causes one), publish the detections of the last this-many seconds "
        "again, in case the broker lost writes it had acknowledged (0: off; consumers keep one per camera and seq)",
    )
    p.add_argument("--publish-threshold", type=float, default=PUBLISH_THRESHOLD, help="publish boxes at or above this score")
    p.add_argument("--score-threshold", type=float, default=0.5, help="boxes that count for tracking and alerts")
    p.add_argument(
        "--public-key",
        help="follow the model registry, serving only models signed for this Ed25519 public key "
        "(default: $PEDSTREAM_KEYS/model-signing.pub when it exists)",
    )
    p.add_argument("--no-registry", action="store_true", help="serve --model only; ignore the model registry")
    p.add_argument("--json", action="store_true", help="when stopped, print a JSON summary (counters, frames per camera, model per scope)")
    p.add_argument(
        "--teacher-model",
        help="automatic rollback: a teacher ONNX model (e.g. nanodet.onnx, looked up in $PEDSTREAM_MODELS) whose agreement with "
        "the served model is measured on sampled frames; a camera whose agreement falls after a swap goes back to its previous model",
    )
    p.add_argument("--agreement-every-s", type=float, default=5.0, help="automatic rollback: seconds between sampled frames per camera")
    p.add_argument(
        "--rollback-drop", type=float, default=0.15, help="automatic rollback: the fall in agreement (AP50 vs the teacher) that rolls back"
    )
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("alerts", help="subscribe to alerts")
    alerts_sub = p.add_subparsers(dest="alerts_command", required=True)
    a = alerts_sub.add_parser("tail", parents=[flags.conn], help="print alerts as they fire")
    a.add_argument("--camera")
    a.add_argument("--json", action="store_true", help="one JSON record per line")
    a.add_argument("--from-beginning", action="store_true")
    a.add_argument("--seconds", type=float)
    a.set_defaults(func=cmd_alerts_tail)

    p = sub.add_parser("eval", parents=[model], help="AP50 of a model on a MOT-style sequence")
    p.add_argument("--sequence", required=True, help="MOT-style sequence folder (a bare name is looked up in $PEDSTREAM_DATA)")
    p.add_argument("--tiles", help="run the model on ROWSxCOLS overlapping tiles, e.g. 2x2")
    p.add_argument("--overlap", type=int, default=96, help="tile overlap in pixels (at least the tallest person)")
    p.add_argument("--full-frame", action="store_true", help="with --tiles: also run the whole frame")
    p.add_argument("--frames", help="A:B, 1-based inclusive (default: all)")
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quantize", help="an int8 copy of a model for the CPU edge, calibrated on a camera's frames")
    p.add_argument("--model", required=True, help="ONNX model file, or 'student' for the bundled student")
    p.add_argument("--calibration", required=True, help="MOT-style sequence folder of the cameras the model will serve")
    p.add_argument("--frames", help="A:B of the calibration sequence, 1-based inclusive (default: all)")
    p.add_argument("--count", type=int, default=20, help="calibration frames, spread over the range (default 20)")
    p.add_argument("--out", required=True, help="where to write the int8 ONNX model")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("tune", help="tune a model with TVM MetaSchedule for this device type (a job)")
    p.add_argument("--model", required=True)
    p.add_argument("--trials", type=int, default=256, help="measurements in all (more: faster code, longer job)")
    p.add_argument("--trials-per-task", type=int)
    p.add_argument("--work-dir", help="tuning database folder (default ~/.cache/pedstream/tuning/<model>)")
    p.add_argument("--json", action="store_true", help="print the tuning report as JSON")
    p.set_defaults(func=cmd_tune)
