"""``pedstream keys`` and ``pedstream models``: the signing key pair and the model registry in Redis."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from deploy.commands.common import Flags
from detectors.detector import read_model
from streams.errors import PedstreamError
from streams.signing import PRIVATE_NAME, PUBLIC_NAME, Signer, default_keys_dir, init_keys


def keys_dir(args: argparse.Namespace) -> Path:
    return Path(args.keys).expanduser() if getattr(args, "keys", None) else default_keys_dir()


def default_public_key(explicit: str | None) -> Path | None:
    """--public-key, else the key pair folder's public key if there is one."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise PedstreamError(f"--public-key {path}: no such file")
        return path
    path = default_keys_dir() / PUBLIC_NAME
    return path if path.is_file() else None


def cmd_keys_init(args: argparse.Namespace) -> int:
    paths = init_keys(keys_dir(args), overwrite=args.force)
    print(
        json.dumps(
            {"private": str(paths.private), "public": str(paths.public), "note": "give edge agents only the public key (--public-key)"},
            indent=2,
        )
    )
    return 0


def _registry(args: argparse.Namespace, need_signer: bool = False) -> Any:
    from streams.endpoints import resolve
    from streams.model_channel import ModelKeys, connect_redis
    from trainer.registry import Registry

    endpoints = resolve(getattr(args, "bootstrap", None), args.redis)
    signer = Signer.load(keys_dir(args) / PRIVATE_NAME) if need_signer else None
    publisher = None
    if need_signer and endpoints.bootstrap:
        from streams.bus import ModelAnnouncementPublisher, ensure_topics, make_producer
        from streams.topics import Topics

        topics = Topics.from_env(args.topic_prefix)
        try:
            ensure_topics(endpoints.bootstrap, [topics.models])
            publisher = ModelAnnouncementPublisher(make_producer(endpoints.bootstrap), topics.models)
        except Exception as exc:  # noqa: BLE001 - Kafka is optional for the registry; Redis announces
            print(f"[models] no Kafka at {endpoints.bootstrap} ({exc}); announcing on Redis only")
    return Registry(connect_redis(endpoints.redis_url), ModelKeys.for_topics(args.topic_prefix), signer, publisher)


def _show(obj: Any, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2) if as_json else text)


def _cameras_table(registry: Any) -> list[dict[str, Any]]:
    """Scope -> the order in force, its version's gate result and lineage (for `models list`)."""
    rows = []
    for scope, order in registry.orders().items():
        entry = registry.entry(order.version)
        gate = entry.get("gate") or {}
        rows.append(
            {
                "camera": scope,
                "version": order.version,
                "order": order.order,
                "serial": order.serial,
                "gate": gate.get("verdict", "-" if not gate else "?"),
                "gate_reason": gate.get("reason"),
                "parent": (entry.get("lineage") or {}).get("parent"),
                "ordered_ts": order.published_ts,
            }
        )
    return rows


def _lines(versions: list[dict[str, Any]], cameras: list[dict[str, Any]]) -> str:
    out = ["cameras (* = the general model, served by every camera without a model of its own):"]
    out += [
        f"  {c['camera']:<20} {c['version']:<32} {c['order']:<8} gate {c['gate']:<6} parent {c['parent'] or '-'}"
        + (f"  ({c['gate_reason']})" if c["gate_reason"] else "")
        for c in cameras
    ] or ["  none: publish a model (pedstream models publish)"]
    out.append("versions:")
    out += [
        f"  {v['version']:<32} {v['state']:<8} for {', '.join(v['scope']) or 'all cameras':<20} parent {v['parent'] or '-':<28} "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(v['published_ts']))} {json.dumps(v['metrics'])}"
        + (f" ({v['reason']})" if v["reason"] else "")
        for v in versions
    ] or ["  no versions yet"]
    return "\n".join(out)


def _compile_targets(names: list[str] | None) -> dict[str, str] | None:
    """--target values: ``host`` (this machine's CPU) or a target's JSON; none: declared ones and the host."""
    if not names:
        return None
    from detectors.backends import tvm_artifacts

    targets = {}
    for name in names:
        target = tvm_artifacts.target_from_json(name)
        targets[tvm_artifacts.target_id(target)] = str(target)
    return targets


def cmd_models(args: argparse.Namespace) -> int:
    action = args.models_command
    if action == "list":
        registry = _registry(args)
        versions, table = registry.versions(), _cameras_table(registry)
        _show(
            {"current": registry.current_version(), "cameras": table, "versions": versions, "agents": registry.agents()},
            args.json,
            _lines(versions, table),
        )
    elif action == "show":
        registry = _registry(args)
        entry = registry.entry(args.version)
        _show(entry, args.json, json.dumps(entry, indent=2))
    elif action == "publish":
        from trainer.registry import Lineage

        registry = _registry(args, need_signer=True)
        from detectors.detector import weights_path
        from trainer.report import read_weights

        onnx = read_model(args.model)
        metrics = json.loads(args.metrics) if args.metrics else {}
        cameras = args.camera or []
        lineage = Lineage(parent=args.parent or (registry.serving(cameras[0]) if cameras else registry.current_version()), notes=args.notes)
        weights_file = Path(args.weights) if args.weights else weights_path(args.model)  # NAME.weights.npz beside NAME.onnx
        weights = read_weights(weights_file) if weights_file else None
        a = registry.store(onnx, lineage, metrics, weights=weights, scope=cameras)
        if not args.no_promote:
            registry.assign(a.version, cameras)
        where = f"on {', '.join(cameras)}" if cameras else "as the general model"
        _show(
            json.loads(a.model_dump_json()),
            args.json,
            f"published {a.version} (sha256 {a.sha256[:12]}...)" + ("" if args.no_promote else f", now served {where}"),
        )
    elif action == "promote":
        cameras = args.camera or []
        a = _registry(args, need_signer=True).assign(args.version, cameras)
        _show(
            json.loads(a.model_dump_json()),
            args.json,
            f"{a.version} is served {'on ' + ', '.join(cameras) if cameras else 'as the general model'}",
        )
    elif action == "compile":
        from trainer.compiling import compile_version

        registry = _registry(args, need_signer=True)
        targets = _compile_targets(args.target)
        result = compile_version(registry, args.version, targets, args.trials)
        lines = [
            f"{args.version}: TVM library for target {p['target_id']} published ({p['size_bytes']} bytes, compiled in {p['compile_s']} s)"
            for p in result["published"]
        ] + [f"{args.version}: target {t} skipped: {why}" for t, why in result["skipped"].items()]
        _show(result, args.json, "\n".join(lines) or f"{args.version}: no targets (no agent declared one; try --target host)")
    elif action == "rollback":
        a = _registry(args, need_signer=True).rollback(args.camera, args.to)
        where = f"camera {args.camera}" if args.camera else "the general model"
        _show(json.loads(a.model_dump_json()), args.json, f"rolled back: {where} serves {a.version} (signed rollback order #{a.serial})")
    return 0


def register(sub: Any, flags: Flags) -> None:
    p = sub.add_parser("keys", help="the Ed25519 key pair that signs models")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    k = keys_sub.add_parser("init", help="make a new key pair (private key mode 0600)")
    k.add_argument("--keys", help="folder for the key pair (default $PEDSTREAM_KEYS or ~/.pedstream/keys)")
    k.add_argument("--force", action="store_true", help="replace an existing key pair")
    k.set_defaults(func=cmd_keys_init)

    p = sub.add_parser("models", help="the model registry in Redis: list, show, publish, promote, rollback")
    models_sub = p.add_subparsers(dest="models_command", required=True)
    for name, help_text in (
        ("list", "camera -> version served (with its gate result and lineage), every version, and what each agent serves"),
        ("show", "one version's record"),
        ("publish", "approve, sign and store an ONNX model, and serve it (as the general model, or on --camera)"),
        ("promote", "serve a stored, approved version as the general model, or on --camera (never an older one: see rollback)"),
        ("rollback", "sign a rollback order: the general model (or --camera) goes back to what it served before (or --to)"),
        ("compile", "compile an approved version with TVM for device targets and publish the signed libraries"),
    ):
        m = models_sub.add_parser(name, parents=[flags.conn], help=help_text)
        m.add_argument("--json", action="store_true")
        m.add_argument("--keys", help="key pair folder (default $PEDSTREAM_KEYS or ~/.pedstream/keys)")
        if name in ("show", "promote", "compile"):
            m.add_argument("version")
        if name == "compile":
            m.add_argument(
                "--target", action="append", help="`host` (this machine's CPU) or a target's JSON; default: those agents declare, and host"
            )
            m.add_argument("--trials", type=int, default=0, help="MetaSchedule trials to tune with first (0: the rule-based schedule)")
        if name in ("publish", "promote"):
            m.add_argument("--camera", action="append", help="serve it on this camera only (repeat for a group); default: every camera")
        if name == "rollback":
            m.add_argument("--camera", help="roll back this camera's own model (default: the general model)")
            m.add_argument("--to", help="the version to go back to (default: the one served before)")
        if name == "publish":
            m.add_argument("model", help="ONNX file with pedstream_version in its metadata")
            m.add_argument("--parent", help="lineage: the version it was trained from (default: the current one)")
            m.add_argument("--metrics", help='JSON object of metrics, e.g. {"ap50": 0.86}')
            m.add_argument("--notes")
            m.add_argument("--weights", help="the run's weights.npz, so the trainer can fine-tune this version")
            m.add_argument("--no-promote", action="store_true", help="store only; do not make it current")
        m.set_defaults(func=cmd_models)
