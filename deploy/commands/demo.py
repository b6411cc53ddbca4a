"""``pedstream demo``: the whole closed loop on embedded defaults, with progress and a summary.

The site: PETS09-S2L1 as it is (``pets-day``), the same view night-darkened and noisy
(``pets-night``, the drifted camera the loop retrains for) and TUD-Campus (``tud-campus``, a camera
the bundled student never saw, with people far larger than it learned; it shows, with
``pets-day``, what a cycle for one camera does to the rest of the site). One detector agent serves
them; the trainer runs one cycle with 2 Ray trainers on a loopback Ray head; the new version is
pushed while a camera streams.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.commands.common import DATA_ENV, Flags, data_dir, live, models_dir, say_to_stderr, stop_on_signals
from deploy.commands.loop import START_MODEL_HELP
from streams.errors import PedstreamError
from streams.mot import MotSequence
from streams.topics import Topics
from trainer.cluster import DEFAULT_BASE_PORT

if TYPE_CHECKING:
    from deploy.closed_loop import LoopOutcome, SiteCamera

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "demo" / "cameras.yaml"


def site(data: Path) -> list[SiteCamera]:
    from deploy.closed_loop import NIGHT, SiteCamera

    folders = {name: data / name for name in ("PETS09-S2L1", "TUD-Campus")}
    missing = [str(p) for p in folders.values() if not p.is_dir()]
    if missing:
        raise PedstreamError(f"the demo needs {', '.join(missing)} (set PEDSTREAM_DATA or --data)")
    pets = MotSequence.load(folders["PETS09-S2L1"])
    return [
        SiteCamera("pets-day", pets),
        SiteCamera("pets-night", pets, NIGHT, adapt=True),
        SiteCamera("tud-campus", MotSequence.load(folders["TUD-Campus"])),
    ]


def summary(out: LoopOutcome, cameras: list[SiteCamera]) -> str:
    cycle = out.cycle
    lines = [
        f"\npedstream demo: one turn of the closed loop in {out.seconds:.0f} s",
        "",
        f"  {'camera':<12} {'frames':>6} {'hard ex.':>8} {'AP50 before':>11} {'AP50 after':>10} {'change':>7}",
    ]
    for c in cameras:
        hard = out.hard_examples.get(c.camera_id, {})
        before, after = out.ap50_before[c.camera_id], out.ap50_after[c.camera_id]
        lines.append(
            f"  {c.camera_id:<12} {out.frames_published.get(c.camera_id, 0):>6} "
            f"{hard.get('total', 0):>8} {before:>11.3f} {after:>10.3f} "
            f"{after - before:>+7.3f}"
            + ("   <- its own model" if c.adapt and cycle.shipped else "   <- retrained for (not shipped)" if c.adapt else "")
            + ("   * start model trained on these frames" if c.camera_id in out.start_trained_on_scored else "")
        )
    lines += [
        "",
        f"  detections {out.detections}, alerts {out.alerts}",
        f"  retraining: {cycle.new_examples} hard examples + {cycle.replay_examples} replay, "
        f"{cycle.train.get('updates', '?')} updates in {float(cycle.train.get('seconds', 0)):.0f} s on Ray -> {cycle.version or '-'} "
        f"{cycle.outcome}",
        f"  gate: {cycle.reason}",
        f"  ordered on {', '.join(c.camera_id for c in cameras if c.adapt)} only: {out.start_version} -> {out.served_version}"
        f"{'' if cycle.shipped else ' (the start model again: timing only)'}; the other cameras keep {out.start_version}; "
        f"order to serving {out.publish_to_serving_s:.2f} s; live frames {out.live_with_detections}/{out.live_frames} "
        f"with detections ({', '.join(out.live_versions)})",
        "  AP50 is scored on the second half of each sequence, which the loop never trains on"
        + (" (* the start model's own training did)." if out.start_trained_on_scored else "."),
    ]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    """`pedstream demo`: one turn of the closed loop (or, with --cameras-only, just the cameras)."""
    if args.cameras_only:
        return cmd_demo_cameras(args)
    from deploy.closed_loop import ClosedLoop
    from deploy.stack import endpoints_or_temporary_stack
    from trainer.cluster import RayPorts, ray_session
    from trainer.sources import ReplaySet, default_label_cache

    data, teachers = data_dir(args.data), models_dir(args.data)

    cameras = site(data)
    pets = cameras[0].sequence
    topics = Topics(args.topic_prefix or f"demo{os.getpid()}")
    say = say_to_stderr("demo")
    with endpoints_or_temporary_stack(args.bootstrap, args.redis, topics, announce=say) as endpoints:
        say(f"Ray head on 127.0.0.1:{args.ray_port} with {args.workers} trainers")
        with ray_session(None, RayPorts(args.ray_port)):
            loop = ClosedLoop(
                endpoints.bootstrap,
                endpoints.redis_url,
                topics,
                cameras,
                teachers,
                default_label_cache(),
                # frames the start model was trained on (first halves: the loop scores the second halves)
                replay=[ReplaySet.of(pets), ReplaySet.of(cameras[2].sequence, every=1)],
                updates=args.updates,
                workers=args.workers,
                every=args.every,
                alert_people=args.alert_people,
                progress=say,
                start_model=args.start_model,
            )
            out = loop.run()
    if args.json:
        print(json.dumps({**asdict(out), "frames_dropped": out.frames_dropped}, indent=2, default=str))
    else:
        print(summary(out, cameras))
    return 0 if out.frames_dropped == 0 else 1


def register(sub: Any, flags: Flags) -> None:
    p = sub.add_parser(
        "demo",
        parents=[flags.conn],
        help="the whole loop on embedded defaults: cameras, detector agent, hard "
        "examples, retraining on Ray, signed model pushed and hot-swapped",
    )
    p.add_argument("--updates", type=int, default=300, help="parameter-server updates of the retraining cycle")
    p.add_argument("--workers", type=int, default=2, help="Ray trainers")
    p.add_argument("--every", type=int, default=4, help="score every K-th frame of the second halves")
    p.add_argument("--alert-people", type=int, default=4, help="each camera alerts when this many people are in view")
    p.add_argument("--ray-port", type=int, default=DEFAULT_BASE_PORT)
    p.add_argument("--start-model", default="student", help=START_MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print the outcome as JSON instead of the summary")
    p.add_argument(
        "--cameras-only",
        action="store_true",
        help="only the stack, the bundled virtual cameras and a live consumer (no detection, no training)",
    )
    p.add_argument("--seconds", type=float, default=30.0, help="--cameras-only: how long to run")
    p.add_argument("--config", help="--cameras-only: cameras.yaml to use instead of the bundled one")
    flags.data(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo_cameras(args: argparse.Namespace) -> int:
    """`pedstream demo --cameras-only`: the stack, the bundled virtual cameras and a live consumer."""
    from deploy.stack import endpoints_or_temporary_stack
    from streams.cameras.agent import CameraFleet
    from streams.cameras.config import load_cameras
    from streams.monitor import FlowMonitor, render_table

    os.environ[DATA_ENV] = str(data_dir(args.data))
    cameras = load_cameras(args.config or DEMO_CONFIG)
    topics = Topics.from_env(args.topic_prefix)
    with endpoints_or_temporary_stack(args.bootstrap, args.redis, topics) as ep:
        monitor = FlowMonitor(ep.bootstrap, topics, f"pedstream-demo-{os.getpid()}").start()
        fleet = CameraFleet(cameras, ep.bootstrap, topics)
        stop_on_signals(fleet.stop_event.set)
        fleet.start()
        started = time.monotonic()

        def show() -> None:
            live(
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
        f"{sum(int(f['missing']) for f in snapshot.values())} missing"  # type: ignore[call-overload]
    )
    return 0 if received > 0 else 1
