"""``pedstream stack up|down|status``: the embedded Kafka-compatible broker (tansu) and Redis."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from deploy.commands.common import Flags, print_json


def cmd_stack(args: argparse.Namespace) -> int:
    from deploy import stack
    from streams.topics import Topics

    home = Path(args.home).expanduser() if args.home else None
    if args.action == "up":
        state, started = stack.up(home, args.redis, Topics.from_env(args.topic_prefix), durable=args.durable)
        if not started and args.durable and not state.store_url:
            print("the running stack keeps the broker's data in memory: `pedstream stack down` first, then `stack up --durable`")
            return 2
        info = {"started": started, **stack.status(home)}
        if args.json:
            print_json(info)
        else:
            verb = "started" if started else "already up"
            redis_note = " (started by the stack)" if state.redis_pid else ""
            storage = f", its data in {state.store_url} (durable)" if state.store_url else ""
            print(f"stack {verb}: kafka {state.bootstrap} (tansu{storage}), redis {state.redis_url}{redis_note}")
        return 0
    if args.action == "down":
        stopped = stack.down(home)
        if args.json:
            print_json({"stopped": stopped is not None})
        else:
            print("stack stopped" if stopped else "no stack was running")
        return 0
    info = stack.status(home)
    if args.json:
        print_json(info)
    elif not info.get("up") and "kafka" not in info:
        print(f"stack down: {info['reason']}")
    else:
        kafka, redis_info = info["kafka"], info["redis"]
        assert isinstance(kafka, dict) and isinstance(redis_info, dict)
        print(f"stack {'up' if info['up'] else 'DEGRADED'} for {info['uptime_s']}s")
        print(f"  kafka  {kafka['bootstrap']:<28} pid {kafka['pid']}  {'ok' if kafka['answers'] else 'NOT ANSWERING'}  {kafka['storage']}")
        print(f"  redis  {redis_info['url']:<28} pid {redis_info['pid'] or '-'}  {'ok' if redis_info['answers'] else 'NOT ANSWERING'}")
    return 0 if info.get("up") else 1


def register(sub: Any, flags: Flags) -> None:
    p = sub.add_parser("stack", parents=[flags.conn], help="start, stop or inspect the embedded Kafka (tansu) + Redis stack")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--durable",
        action="store_true",
        help="up: keep the broker's data across broker restarts (tansu's S3 engine on a local s3rver under the stack's home)",
    )
    p.add_argument("--home", help="folder for the stack's state and logs (default: $PEDSTREAM_HOME or ~/.pedstream)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stack)
