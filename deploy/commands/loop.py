"""``pedstream trainer`` (the continual-training service) and ``pedstream retrain`` (ask it for a
cycle, or show its status). Both reach the service through Redis."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from deploy.commands.common import Flags, data_dir, models_dir
from streams.errors import PedstreamError
from trainer.choices import PERSON_PX
from trainer.cluster import DEFAULT_BASE_PORT

STORE_ENV = "PEDSTREAM_STORE"
PERSON_PX_HELP = (
    "a camera's own model gets a larger input (up to --max-input-width wide) until the median person the teacher "
    f"labelled on that camera is this many pixels tall at it (default {PERSON_PX:g}; 0: keep the served model's size)"
)
START_MODEL_HELP = "the student the loop starts from (its NAME.weights.npz beside NAME.onnx); default the bundled one"


def _keys(args: argparse.Namespace) -> Any:
    from streams.model_channel import ModelKeys
    from trainer.service import RetrainKeys

    return RetrainKeys(ModelKeys.for_topics(args.topic_prefix))


def cmd_trainer(args: argparse.Namespace) -> int:
    teachers = models_dir(args.data)
    from deploy.commands.registry import _registry
    from streams.endpoints import resolve
    from streams.metrics import serve_metrics
    from streams.model_channel import connect_redis
    from streams.topics import Topics
    from trainer.cluster import RayPorts, ray_session
    from trainer.data import LabelCache
    from trainer.gate import GatePolicy
    from trainer.labels import TeacherLabeler
    from trainer.metrics import TRAINER_METRICS
    from trainer.retrain import Retrainer, RetrainPolicy, fine_tune_settings
    from trainer.service import TrainerService
    from trainer.sources import default_label_cache
    from trainer.store import HardExampleStore

    endpoints = resolve(args.bootstrap, args.redis)
    store_dir = Path(args.store or os.environ.get(STORE_ENV) or Path.home() / ".pedstream" / "hard-examples").expanduser()
    store = HardExampleStore(store_dir)
    registry = _registry(args, need_signer=True)
    teacher = TeacherLabeler(teachers)
    policy = RetrainPolicy(
        min_new_examples=args.min_examples,
        min_agreement=args.min_agreement,
        gate=GatePolicy(min_frames=args.gate_frames, margin=args.gate_margin, confidence=args.gate_confidence),
        job=fine_tune_settings(args.updates, args.workers, args.lr),
        person_px=args.person_px or None,
        max_input_width=args.max_input_width,
    )
    say = lambda m: print(f"[trainer] {m}", file=sys.stderr, flush=True)  # noqa: E731
    retrainer = Retrainer(
        store,
        registry,
        teacher,
        LabelCache(default_label_cache()),
        policy,
        base_examples=_replay_set(args, teachers, say),
        progress=say,
        models_dir=teachers,
    )
    with ray_session(args.ray_address, RayPorts(args.ray_port), num_cpus=max(os.cpu_count() or 1, args.workers)):
        service = TrainerService(
            endpoints.bootstrap,
            Topics.from_env(args.topic_prefix),
            connect_redis(endpoints.redis_url),
            store,
            retrainer,
            auto=not args.no_auto,
            on_cycle=(lambda result: print(json.dumps(result), flush=True)) if args.json else None,
            compile_tvm=args.compile_tvm,
            tvm_trials=args.tvm_trials,
        )
        import signal

        signal.signal(signal.SIGTERM, lambda *_: service.stop())
        signal.signal(signal.SIGINT, lambda *_: service.stop())
        if serve_metrics(args.metrics_port, TRAINER_METRICS, args.metrics_host):
            print(f"[trainer] metrics on http://{args.metrics_host}:{args.metrics_port}/metrics", file=sys.stderr, flush=True)
        print(
            f"[trainer] store {store_dir}; registry current {registry.current_version()}; "
            f"{'automatic triggers on' if service.auto else 'manual cycles only'}",
            file=sys.stderr,
            flush=True,
        )
        service.run()
    return 0


def _replay_set(args: argparse.Namespace, teachers: Path, say: Any) -> list[Any]:
    """--replay-sequence: its teacher-labelled frames join every cycle's replay pool (trainer.sources.ReplaySet)."""
    if not args.replay_sequence:
        return []
    from streams.mot import MotSequence
    from trainer.sources import ReplaySet, default_label_cache

    replay = ReplaySet.of(MotSequence.load(Path(args.replay_sequence)), args.replay_frames, args.replay_every)
    say(f"replay set: {replay.describe()}")
    return replay.examples(teachers, default_label_cache())


def cmd_retrain(args: argparse.Namespace) -> int:
    from streams.endpoints import resolve
    from streams.model_channel import connect_redis, get_bytes
    from trainer.service import request_retrain, wait_for_result

    client = connect_redis(resolve(getattr(args, "bootstrap", None), args.redis).redis_url)
    keys = _keys(args)
    if args.action == "status":
        raw = get_bytes(client, keys.status)
        if raw is None:
            raise PedstreamError("no trainer service has reported: start one with `pedstream trainer`")
        status = json.loads(raw)
        if args.json:
            print(json.dumps(status, indent=2))
        else:
            print(f"trainer: {status['state']}; current model {status['current']}; auto {status['auto']}")
            for cam, c in sorted(status["counts"].items()):
                print(
                    f"  {cam:<20} new {c['new']:>4}  held-out {c['held_out']:>4}  trained-on {c['used']:>4}"
                    + (f"  due: {status['due'][cam]}" if cam in status["due"] else "")
                )
            for agent, cameras in (status.get("rollbacks") or {}).items():
                for camera, why in cameras.items():
                    print(f"  rolled back by {agent} on {camera}: {why}")
            for cycle in status["cycles"]:
                print(
                    f"  cycle {cycle.get('version') or '-'} for {', '.join(cycle.get('cameras') or ['-'])}: "
                    f"{cycle.get('outcome') or 'failed'} ({cycle.get('reason') or cycle.get('error')})"
                )
        return 0
    request_id = request_retrain(client, keys, args.camera, args.min_examples)
    if not args.wait:
        print(json.dumps({"request_id": request_id}) if args.json else f"retraining requested ({request_id})")
        return 0
    print(f"[retrain] waiting for the trainer service (request {request_id})", file=sys.stderr, flush=True)
    result = wait_for_result(client, keys, request_id, args.timeout)
    if result is None:
        raise PedstreamError(f"no result within {args.timeout:.0f} s: is `pedstream trainer` running? (pedstream retrain status)")
    if args.json:
        print(json.dumps(result, indent=2))
    elif "error" in result:
        print(f"retraining failed: {result['error']}")
    elif result.get("outcome") == "waiting":
        print(f"not trained: {result['reason']}")
    else:
        verdict = f"shipped to {', '.join(result['cameras'])}" if result["shipped"] else "rejected"
        print(f"{result['version']}: {verdict} ({result['reason']})")
    return 0 if result.get("shipped") else 1


def register(sub: Any, flags: Flags) -> None:
    p = sub.add_parser(
        "trainer", parents=[flags.conn, flags.metrics], help="the continual-training service: hard examples -> retraining -> registry"
    )
    p.add_argument("--store", help=f"hard-example store folder (default ${STORE_ENV} or ~/.pedstream/hard-examples)")
    p.add_argument("--keys", help="key pair folder (default $PEDSTREAM_KEYS or ~/.pedstream/keys)")
    p.add_argument("--no-auto", action="store_true", help="retrain only when asked (pedstream retrain)")
    p.add_argument(
        "--compile-tvm",
        choices=("off", "declared", "host"),
        default="declared",
        help="after shipping a version, compile it with TVM for the targets edge agents declare (declared), those and this "
        "machine's CPU (host), or not at all (off); agents load the library and never compile while serving",
    )
    p.add_argument("--tvm-trials", type=int, default=0, help="MetaSchedule trials before compiling (0: the rule-based schedule)")
    p.add_argument("--min-examples", type=int, default=40, help="trigger: new hard examples of one camera")
    p.add_argument("--min-agreement", type=float, default=0.5, help="trigger: estimated accuracy (edge vs teacher AP50) below this")
    p.add_argument(
        "--gate-margin",
        type=float,
        default=0.0,
        help="gate: the lower end of the AP50 gain's confidence interval must be above this (0.01 = one point)",
    )
    p.add_argument("--gate-confidence", type=float, default=0.9, help="gate: the bootstrap interval's confidence (two-sided)")
    p.add_argument("--gate-frames", type=int, default=30, help="gate: held-out frames a camera needs before a candidate is judged")
    p.add_argument("--updates", type=int, default=300, help="parameter-server updates per cycle")
    p.add_argument("--workers", type=int, default=2, help="Ray trainers per cycle")
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate (Adam)")
    p.add_argument("--person-px", type=float, default=PERSON_PX, help=PERSON_PX_HELP)
    p.add_argument("--max-input-width", type=int, default=640, help="the widest input a camera's own model may get")
    p.add_argument(
        "--replay-sequence",
        help="MOT-style folder the current model was trained on: its teacher-labelled "
        "frames join every cycle's replay set (against forgetting)",
    )
    p.add_argument("--replay-frames", help="A:B frames of --replay-sequence (default: its first half)")
    p.add_argument("--replay-every", type=int, default=2, help="every K-th of those frames")
    p.add_argument("--ray-address")
    p.add_argument("--ray-port", type=int, default=DEFAULT_BASE_PORT)
    p.add_argument("--json", action="store_true", help="print each cycle's result as one JSON line on stdout (logs stay on stderr)")
    flags.data(p)
    p.set_defaults(func=cmd_trainer)

    p = sub.add_parser("retrain", parents=[flags.conn], help="ask the trainer service for a retraining cycle, or show its status")
    p.add_argument("action", nargs="?", choices=["status"], help="status: counts, triggers and recent cycles")
    p.add_argument(
        "--camera",
        action="append",
        help="train a model for this camera from its new hard examples (repeat for a group of cameras sharing a scene; "
        "default: every camera with new examples, as one group)",
    )
    p.add_argument("--min-examples", type=int, help="refuse to train on fewer new examples than this")
    p.add_argument("--wait", action="store_true", help="wait for the cycle's result (exit 1 if it was not shipped)")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_retrain)


def cmd_bench_loop(args: argparse.Namespace) -> int:
    data, teachers = data_dir(args.data), models_dir(args.data)
    from deploy.bench import loop as bench_loop
    from deploy.stack import endpoints_or_temporary_stack
    from streams.topics import Topics
    from trainer.cluster import RayPorts, ray_session
    from trainer.sources import default_label_cache

    topics = Topics(args.topic_prefix or f"loop{os.getpid()}")
    sequence = Path(args.sequence) if args.sequence else data / "PETS09-S2L1"
    # the trainer's defaults unless given (they live with torch, which this module must not import)
    cycle_overrides: dict[str, Any] = {
        name: value for name, value in (("replay_per_new", args.replay_per_new), ("lr", args.lr)) if value is not None
    }
    if args.person_px is not None:
        cycle_overrides["person_px"] = args.person_px or None  # 0: keep the start model's input size
    say = lambda m: print(f"[bench loop] {m}", file=sys.stderr, flush=True)  # noqa: E731
    with (
        endpoints_or_temporary_stack(args.bootstrap, args.redis, topics, announce=say) as endpoints,
        ray_session(args.ray_address, RayPorts(args.ray_port)),
    ):
        result = bench_loop.run(
            endpoints.bootstrap,
            endpoints.redis_url,
            topics,
            sequence,
            data,
            teachers,
            args.drift,
            default_label_cache(),
            updates=args.updates,
            every=args.every,
            progress=say,
            start_model=args.start_model,
            adapt_batchnorm=args.adapt_batchnorm,
            **cycle_overrides,
        )
    print(json.dumps(result, indent=2))
    return 0


def register_bench(bench_sub: Any, flags: Flags) -> None:
    b = bench_sub.add_parser("loop", parents=[flags.conn], help="one turn of the closed loop: swap time, dropped frames, AP before/after")
    b.add_argument("--sequence", help="MOT-style folder standing for the camera to adapt (default PETS09-S2L1)")
    b.add_argument("--drift", choices=("night", "none"), default="night", help="make the adapted camera night-dark and noisy")
    b.add_argument("--updates", type=int, default=300, help="parameter-server updates of the retraining cycle")
    b.add_argument("--every", type=int, default=4, help="score every K-th held-out frame")
    b.add_argument("--start-model", default="student", help=START_MODEL_HELP)
    b.add_argument("--replay-per-new", type=float,
                   help="replay examples (what the start model was trained on) per new hard example in the cycle (default 2)")  # fmt: skip
    b.add_argument("--lr", type=float, help="the cycle's learning rate (Adam; default the trainer's, 0.0005)")
    b.add_argument("--adapt-batchnorm", action="store_true",
                   help="let batch-norm statistics follow the cycle's examples (default: keep the start model's)")  # fmt: skip
    b.add_argument("--person-px", type=float, help=PERSON_PX_HELP)
    b.add_argument("--json", action="store_true", help="print JSON (the only output format)")
    b.add_argument("--ray-address")
    b.add_argument("--ray-port", type=int, default=DEFAULT_BASE_PORT)
    flags.data(b)
    b.set_defaults(func=cmd_bench_loop)
