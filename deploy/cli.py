"""The ``pedstream`` command line: assembles the parser from the command groups in
``deploy.commands``, sets up logging and turns pedstream's errors into one line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import redis
from kafka.errors import KafkaError

from deploy.commands import bench, cameras, dashboard, demo, detection, loop, registry, stack, training
from deploy.commands.common import Flags
from streams.errors import PedstreamError
from streams.outage import quiet_client_logs

# In the order `pedstream --help` lists them.
COMMAND_GROUPS = (stack, cameras, detection, bench, registry, loop, training, dashboard, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pedstream", description="Multi-camera pedestrian detection as a stream.")
    parser.add_argument("--log-level", default=os.environ.get("PEDSTREAM_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    flags = Flags.build()
    for group in COMMAND_GROUPS:
        group.register(sub, flags)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    quiet_client_logs()  # kafka-python logs every failed connection attempt while a broker is down
    try:
        return int(args.func(args) or 0)
    except PedstreamError as exc:
        print(f"pedstream: error: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:  # a dependency that is down is one line, not a traceback
        print(
            f"pedstream: error: the Kafka broker did not answer ({type(exc).__name__}: {exc}); is it up? `pedstream stack status`",
            file=sys.stderr,
        )
        return 2
    except redis.ConnectionError as exc:
        print(f"pedstream: error: Redis did not answer ({exc}); is it up? `pedstream stack status`", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a service installed its own handlers (which stop it cleanly, exit 0)
        print("pedstream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
