"""``pedstream dashboard``: a live page of every camera's state, annotated frame, counts, latency, alerts and model."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from deploy.commands.common import Flags, stop_on_signals


def cmd_dashboard(args: argparse.Namespace) -> int:
    from deploy.dashboard import Dashboard
    from streams.endpoints import resolve
    from streams.topics import Topics

    endpoints = resolve(args.bootstrap, args.redis)
    dashboard = Dashboard(endpoints.bootstrap, Topics.from_env(args.topic_prefix), args.host, args.port, args.from_start, args.stale_after)
    stop_on_signals(lambda: threading.Thread(target=dashboard.server.shutdown, daemon=True).start())
    if args.json:
        print(
            json.dumps({"url": dashboard.address, "metrics": dashboard.address + "metrics", "bootstrap": endpoints.bootstrap}), flush=True
        )
    else:
        print(f"pedstream dashboard on {dashboard.address} (kafka {endpoints.bootstrap})", file=sys.stderr, flush=True)
    dashboard.run()
    return 0


def register(sub: Any, flags: Flags) -> None:
    p = sub.add_parser(
        "dashboard",
        parents=[flags.conn],
        help="a live page: each camera's state, annotated frame, counts, latency, alerts, model; /metrics",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--from-start", action="store_true", help="read the topics from their start instead of from now")
    p.add_argument(
        "--stale-after",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a camera with no frame captured in this long shows as stale (default 10)",
    )
    p.add_argument("--json", action="store_true", help="print where it serves as one JSON line when ready (for scripts)")
    p.set_defaults(func=cmd_dashboard)
