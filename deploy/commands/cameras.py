"""``pedstream camera`` (camera ingestion agents), ``frames watch`` (live per-camera flow) and
``dead-letters`` (what was refused, and why)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from deploy.commands.common import Flags, live, log, print_json, stop_on_signals
from streams.bus import read_dead_letters
from streams.cameras.agent import CameraFleet
from streams.cameras.config import CameraConfig, load_cameras, parse_cameras
from streams.cameras.sources import missing_file
from streams.endpoints import resolve
from streams.errors import ConfigError, PedstreamError
from streams.metrics import CAMERA_METRICS, register_cameras, serve_metrics
from streams.monitor import FlowMonitor, render_table
from streams.topics import Topics


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
    missing = {cam.id: why for cam in cameras if (why := missing_file(cam.source))}
    if missing and len(missing) == len(cameras) and not args.validate_config:  # nothing could ever be published: say so now
        for camera, why in missing.items():
            print(f"pedstream: error: camera {camera} failed: {why}", file=sys.stderr)
        return 1
    if args.validate_config:
        if missing:
            raise ConfigError("; ".join(f"camera {camera}: {why}" for camera, why in missing.items()))
        for cam in cameras:
            print(
                f"{cam.id}: {cam.source} fps<={cam.option('fps')} max_width={cam.option('max_width')} "
                f"look={cam.look.model_dump(exclude_defaults=True)}"
            )
        print(f"configuration valid: {len(cameras)} camera(s)")
        return 0
    endpoints = resolve(args.bootstrap, args.redis)
    fleet = CameraFleet(cameras, endpoints.bootstrap, Topics.from_env(args.topic_prefix))
    stop_on_signals(fleet.stop_event.set)
    if args.metrics_port is not None:
        register_cameras(fleet.stats)
        serve_metrics(args.metrics_port, CAMERA_METRICS, args.metrics_host)
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
    stats = fleet.stats()
    if args.json:
        print_json(stats)
    failed = [s for s in stats if s["state"] == "failed"]
    for s in failed:
        print(f"pedstream: error: camera {s['camera_id']} failed: {s['last_error']}", file=sys.stderr)
    return 1 if failed else 0


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
    stop_on_signals(lambda: stopping.update(now=True))
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    try:
        while not stopping["now"] and (deadline is None or time.monotonic() < deadline):
            time.sleep(1.0)
            if not args.json:
                live(f"frames on {endpoints.bootstrap} ({endpoints.origin})\n" + render_table(monitor.snapshot()))
    finally:
        monitor.stop()
    if args.json:
        print_json({"cameras": monitor.snapshot(), "dead_lettered": monitor.dead_lettered})
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
            "group": d.group,
        }
        for d in letters
    ]
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            where = f"{r['topic']}[{r['partition']}]@{r['offset']} key={r['key']} ({r['bytes']} B)"
            print(f"{where} refused by {r['group'] or '-'}: {r['reason']}")
        records = {(r["topic"], r["partition"], r["offset"]) for r in rows}
        groups = {r["group"] for r in rows}
        print(f"{len(rows)} dead letter(s): {len(records)} record(s), {len(groups)} consumer group(s), one entry per record per group")
    return 0


def register(sub: Any, flags: Flags) -> None:
    p = sub.add_parser("camera", parents=[flags.conn, flags.metrics], help="run camera ingestion agents (many cameras in one process)")
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

    p = sub.add_parser("frames", parents=[flags.conn], help="subscribe to frames")
    frames_sub = p.add_subparsers(dest="frames_command", required=True)
    w = frames_sub.add_parser("watch", parents=[flags.conn], help="live per-camera fps, gaps and lag")
    w.add_argument("--seconds", type=float)
    w.add_argument("--camera")
    w.add_argument("--from-beginning", action="store_true")
    w.add_argument("--json", action="store_true", help="print a JSON summary at the end instead of a live table")
    w.set_defaults(func=cmd_frames_watch)

    p = sub.add_parser("dead-letters", parents=[flags.conn], help="list messages rejected into the dead-letter topic")
    p.add_argument("--timeout", type=float, default=3.0, help="stop after this many quiet seconds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dead_letters)
