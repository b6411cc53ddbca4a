"""``pedstream train``: label a sequence's frames, run a training job on Ray, write the model and metrics.

Imports torch and Ray only when a training command runs (edge images have neither).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from deploy.commands.common import Flags, ProgressBar, data_dir, find_sequence, models_dir
from streams.errors import PedstreamError
from streams.mot import MotSequence
from trainer.choices import DISTILLED_STEM, MOBILENETV2_STEM, RECIPE_NECK, STEMS, TRAINING_MODES, WARMUP_UPDATES
from trainer.cluster import DEFAULT_BASE_PORT

AVERAGE_DECAY_HELP = "ship a moving average of the weights, updated after each applied gradient with this decay (0: the last weights)"
TRUNK_LR_SCALE_HELP = "learning-rate multiplier of the pretrained trunk's weights (1: as fast as the head; 0: frozen)"
TEACHERS_HELP = (
    "the teacher ensemble that labels frames (teacher labels and videos), comma-separated, boxes fused, the best two "
    "voting (from the models folder: nanodet, centernet, ssdlite = the stock SSDLite)"
)


def teacher_ensemble(text: str) -> tuple[str, ...]:
    """``--teachers``: the ensemble's model names (refused with the flag named)."""
    from trainer.labels import parse_teachers

    try:
        return parse_teachers(text)
    except ValueError as error:
        raise PedstreamError(f"--{error}") from None


def _input_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise PedstreamError(f"--input-size {text!r}: use WIDTHxHEIGHT, e.g. 384x288") from None
    if w % 16 or h % 16:
        raise PedstreamError(f"--input-size {text!r}: width and height must be multiples of 16")
    return w, h


def student_config(args: argparse.Namespace) -> Any:
    from trainer.student import StudentConfig

    width, height = _input_size(args.input_size)
    extra: dict[str, Any] = {}
    if args.widths:
        widths = _int_list(args.widths, "--widths")
        if len(widths) != 4:
            raise PedstreamError(f"--widths {args.widths!r}: give four channel widths, e.g. 24,48,96,160")
        extra["widths"] = tuple(widths)
    if args.neck:
        extra["neck"] = args.neck
    if tall_from := _tall_from(args):
        extra["tall_from"] = tall_from
    if args.trunk:
        trunk = models_dir(args.data) / "ssdlite_pedestrian.onnx" if args.trunk == "ssdlite" else Path(args.trunk).expanduser()
        if not trunk.is_file():
            raise PedstreamError(f"--trunk {trunk}: no such ONNX file")
        extra["trunk"] = str(trunk)
    if args.trunk_stride == 32 and not args.trunk:
        raise PedstreamError("--trunk-stride 32 needs a pretrained trunk (--trunk ssdlite)")
    if args.stem == DISTILLED_STEM and not args.trunk:
        raise PedstreamError("--stem distilled needs a pretrained trunk (--trunk ssdlite)")
    return StudentConfig(
        input_width=width, input_height=height, head_stride=args.head_stride, trunk_stride=args.trunk_stride, stem=args.stem, **extra
    )


def add_tall_head_flag(parser: Any) -> None:
    parser.add_argument("--tall-head", type=int, metavar="PX", default=0,
                        help="experimental: a second head at stride 16 that learns the people at least PX input px tall "
                        "(0, the default: one head; not better on TUD-Campus in three runs: docs/training.md, sessions 22-23)")  # fmt: skip


def _tall_from(args: argparse.Namespace) -> int:
    """``--tall-head``, checked: 0 (one head) or a height in input pixels."""
    if args.tall_head < 0:
        raise PedstreamError(f"--tall-head {args.tall_head}: give a height in input pixels, or 0 for one head")
    return int(args.tall_head)


def trunk_lr_scale(scale: float) -> tuple[tuple[str, float], ...]:
    """The policy's learning-rate multipliers for ``--trunk-lr-scale``: the pretrained trunk's weights
    are named ``trunk.*`` (its frozen stem gets no gradients at all)."""
    if not 0.0 <= scale <= 1.0:
        raise PedstreamError(f"--trunk-lr-scale must be in [0, 1], not {scale}")
    return () if scale == 1.0 else (("trunk.", scale),)


def job_settings(args: argparse.Namespace, **overrides: Any) -> Any:
    from trainer.data import Augment
    from trainer.job import JobSettings
    from trainer.ps import StalenessPolicy

    policy = StalenessPolicy(lr=args.lr, optimizer=args.optimizer, staleness_bound=args.staleness_bound, average_decay=args.average_decay,
                             lr_scale_by_prefix=trunk_lr_scale(args.trunk_lr_scale))  # fmt: skip
    values: dict[str, Any] = dict(
        policy=policy,
        augment=Augment(enabled=False) if args.no_augment else (Augment.strong() if args.augment == "strong" else Augment()),
        seed=args.seed,
        batch_size=args.batch_size,
        updates=args.updates,
        target_loss=args.target_loss,
    )
    for name in ("mode", "workers", "ps_shards", "eval_every", "join_after"):  # train has them; bench train overrides them
        if name not in overrides:
            values[name] = getattr(args, name)
    values.update(overrides)
    return JobSettings(**values)


def load_training_data(args: argparse.Namespace, teachers: Path | None) -> tuple[list[Any], Any, list[dict[str, Any]]]:
    """(labelled examples, held-out frames, what each source gave and who labelled it) as the arguments
    describe (the split is trainer.sources'), with the --dataset and --teacher-video examples added."""
    from trainer.sources import dataset_examples, default_label_cache, training_split, video_examples

    ensemble = teacher_ensemble(args.teachers)
    bar = ProgressBar(f"label {args.labels}")
    sequence = MotSequence.load(find_sequence(args.sequence))
    examples, held_out = training_split(
        sequence,
        args.frames,
        args.every,
        args.labels,
        teachers,
        default_label_cache(),
        MotSequence.load(find_sequence(args.holdout_sequence)) if args.holdout_sequence else None,
        args.holdout_frames,
        args.holdout_every,
        lambda done, total: bar.update(done, total),
        ensemble,
    )
    kind = {"oracle": "human", "teacher": "teacher"}[args.labels]
    data_summary: list[dict[str, Any]] = [{"name": sequence.name, "labels": kind, "frames": args.frames, "images": len(examples)}]
    if args.labels == "teacher":
        data_summary[0]["teachers"] = list(ensemble)
    for path in args.dataset or []:
        extra, summary = dataset_examples(Path(path))
        examples += extra
        data_summary.append(summary)
    for spec in args.teacher_video or []:
        path, _, every_text = spec.partition(":")
        every = int(every_text or 10)
        if teachers is None:
            teachers = models_dir(args.data)
        clip = Path(path).expanduser()
        video_bar = ProgressBar(f"label {clip.name}")
        extra = video_examples(clip, every, teachers, default_label_cache(), video_bar.update, ensemble)
        examples += extra
        data_summary.append({"name": clip.name, "labels": "teacher", "teachers": list(ensemble), "every": every, "images": len(extra)})
    return examples, held_out, data_summary


def cmd_train(args: argparse.Namespace) -> int:
    teachers = _prepare(args)
    from detectors.detector import TRAINED_ON_METADATA_KEY, with_metadata
    from trainer.cluster import RayPorts, ray_session
    from trainer.job import TrainingJob, with_distilled_stem
    from trainer.report import read_weights, write_outputs
    from trainer.sources import default_label_cache
    from trainer.student import Student, count_parameters, gflops

    config = student_config(args)
    settings = job_settings(args)
    if not args.ray_address:
        RayPorts(args.ray_port).check_free()  # before the labelling work, not after it
    examples, held_out, data_summary = load_training_data(args, teachers)
    init = read_weights(Path(args.init)) if args.init else None
    if init is None and config.stem == DISTILLED_STEM:  # student_config refuses it without a trunk
        init = with_distilled_stem(config, examples, default_label_cache(), lambda m: print(f"[train] {m}", file=sys.stderr, flush=True))
    bar = ProgressBar(f"train {settings.mode} x{settings.workers}")
    last_ap: list[float] = []

    def on_progress(p: Any) -> None:
        if p.ap50 is not None:
            last_ap.append(p.ap50)
        ap = f" AP50 {last_ap[-1]:.3f}" if last_ap else ""
        bar.update(
            p.update,
            p.total,
            f"loss {p.loss:.3f}{ap} {p.update / max(p.elapsed_s, 1e-9):.1f} upd/s trainers {p.workers} restarts {p.restarts}",
        )

    started = time.perf_counter()
    with ray_session(args.ray_address, RayPorts(args.ray_port), num_cpus=max(os.cpu_count() or 1, settings.workers)):
        job = TrainingJob(
            examples, settings, config, held_out, Path(args.out) / "checkpoints", init, on_progress, model_version=args.version
        )
        result = job.run()
    if result.model_onnx:  # the model says what it was trained on (`pedstream demo` and bench loop report it)
        result.model_onnx = with_metadata(result.model_onnx, **{TRAINED_ON_METADATA_KEY: json.dumps(data_summary)})
    paths = write_outputs(result, Path(args.out))
    model = Student(config)
    summary = {
        "student": {
            "input_size": [config.input_width, config.input_height],
            "widths": list(config.widths),
            "neck": config.neck,
            "trunk": config.trunk,
        },
        "model": paths.get("model"),
        "version": job.model_version,
        "metrics": paths["metrics"],
        "curves": paths["curves"],
        "mode": settings.mode,
        "workers": settings.workers,
        "ps_shards": settings.ps_shards,
        "updates": result.updates,
        "updates_per_s": result.updates_per_s,
        "samples_per_s": result.samples_per_s,
        "final_loss": result.final_loss,
        "ap50": result.ap50,
        "recall": result.recall,
        "held_out": held_out.name,
        "examples": len(examples),
        "labels": args.labels,
        "data": data_summary,
        "trainer_restarts": result.trainer_restarts,
        "parameters": count_parameters(model),
        "gflops": round(gflops(model), 3),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"trained {job.model_version}: AP50 {result.ap50:.3f} on {held_out.name}; {result.updates_per_s:.2f} updates/s; "
            f"model {paths.get('model')}, metrics {paths['metrics']}, curves {paths['curves']}"
        )
    return 0


def add_job_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``train`` and ``bench train``."""
    p.add_argument("--sequence", help="MOT-style sequence folder to train on (default: PETS09-S2L1 in the data folder)")
    p.add_argument("--frames", default="1:397", help="training frames A:B, 1-based inclusive")
    p.add_argument("--every", type=int, default=1, help="train on every K-th of those frames")
    p.add_argument(
        "--labels",
        choices=("teacher", "oracle"),
        default="teacher",
        help="teacher: NanoDet + CenterNet fused; oracle: MOT ground truth standing in for human annotators",
    )
    p.add_argument("--holdout-sequence", help="sequence of the held-out frames (default: the training sequence)")
    p.add_argument("--holdout-frames", default="398:795", help="held-out frames A:B, never trained on")
    p.add_argument("--holdout-every", type=int, default=8, help="score every K-th held-out frame during training")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--average-decay", type=float, default=0.0, help=AVERAGE_DECAY_HELP)
    p.add_argument("--trunk-lr-scale", type=float, default=1.0, help=TRUNK_LR_SCALE_HELP)
    p.add_argument("--staleness-bound", type=int, default=8, help="drop gradients staler than this many versions")
    p.add_argument("--no-augment", action="store_true", help="no flips, crops or photometric jitter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-size", default="384x288", help="student input WIDTHxHEIGHT")
    p.add_argument("--head-stride", type=int, choices=(4, 8), default=4, help="student head stride (8: lighter, for larger people)")
    p.add_argument(
        "--trunk-stride", type=int, choices=(16, 32), default=16, help="with --trunk: 32 adds the trunk's stride-32 features (large people)"
    )
    p.add_argument("--stem", choices=STEMS, default=MOBILENETV2_STEM,
                   help="with --trunk: distilled replaces the trunk's first blocks with a cheaper stem distilled from them "
                   "on the training images (trainer/stem.py; cached)")  # fmt: skip
    p.add_argument("--widths", help="student backbone channel widths W1,W2,W3,W4 (default: the student's)")
    p.add_argument("--neck", type=int, help="student neck/head channels (default: the student's)")
    add_tall_head_flag(p)
    p.add_argument(
        "--trunk",
        help="start from pretrained features: 'ssdlite' (the MobileNetV2 trunk of $PEDSTREAM_MODELS/ssdlite_pedestrian.onnx) "
        "or another such ONNX file (default: the small backbone from scratch)",
    )
    p.add_argument(
        "--dataset",
        action="append",
        help="add human-labelled images: a YOLO folder (data.yaml), a COCO JSON or a MOT-style folder with gt (repeatable)",
    )
    p.add_argument("--teacher-video", action="append", metavar="VIDEO[:EVERY]",
                   help="add every EVERY-th frame (default 10) of a video, labelled by the teachers (repeatable)")  # fmt: skip
    p.add_argument("--teachers", default="nanodet,centernet", help=TEACHERS_HELP)
    p.add_argument("--augment", choices=("default", "strong"), default="default",
                   help="strong: zoom in and out without stretching, night, blur, noise, JPEG (for unseen cameras)")  # fmt: skip
    p.add_argument("--ray-address", help="join this Ray cluster (127.0.0.1:PORT) instead of starting one")
    p.add_argument("--ray-port", type=int, default=DEFAULT_BASE_PORT, help="base of the pinned Ray port range (base .. base+119)")
    p.add_argument("--json", action="store_true")


def _prepare(args: argparse.Namespace) -> Path | None:
    """Fills in the default sequence (PETS09-S2L1 of the data folder); the models folder teachers need."""
    args.sequence = args.sequence or str(data_dir(args.data) / "PETS09-S2L1")
    return models_dir(args.data) if args.labels == "teacher" else None


def register(sub: Any, flags: Flags) -> None:
    p = sub.add_parser("train", help="train the student on labelled frames with an async (or sync) parameter server on Ray")
    add_job_flags(p)
    p.add_argument("--mode", choices=TRAINING_MODES, default="async")
    p.add_argument("--workers", type=int, default=2, help="trainer actors (data-parallel)")
    p.add_argument("--ps-shards", type=int, default=1, help="parameter-server actors, each holding a share of the parameters")
    p.add_argument("--updates", type=int, default=3000, help="parameter-server updates in all")
    p.add_argument("--eval-every", type=int, default=250, help="updates between held-out evaluations")
    p.add_argument("--join-after", type=int, help="add one more trainer after this many updates")
    p.add_argument("--target-loss", type=float, help="report the seconds until the smoothed loss reaches this")
    p.add_argument("--init", help="start from these weights (weights.npz of an earlier run)")
    p.add_argument("--version", help="model version name (default student-<date>-<time>)")
    p.add_argument("--out", default="runs/student", help="output folder: student.onnx, weights.npz, metrics.json, curves.png")
    flags.data(p)
    p.set_defaults(func=cmd_train)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PedstreamError(f"{flag} {text!r}: use comma-separated integers, e.g. 1,2") from None
    if not values or min(values) < 1:
        raise PedstreamError(f"{flag} {text!r}: need integers >= 1")
    return values


def cmd_bench_train(args: argparse.Namespace) -> int:
    teachers = _prepare(args)
    from deploy.bench import train as bench_train
    from trainer.cluster import RayPorts, ray_session

    workers = _int_list(args.workers, "--workers")
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    bad = [m for m in modes if m not in TRAINING_MODES]
    if bad or not modes:
        raise PedstreamError(f"--mode {args.mode!r}: use async, sync or async,sync")
    config = student_config(args)
    base = job_settings(args, mode=modes[0], workers=workers[0], ps_shards=1, eval_every=0, join_after=None)
    examples, held_out, _ = load_training_data(args, teachers)
    cpus = max(os.cpu_count() or 1, max(workers), args.processes)
    with ray_session(args.ray_address, RayPorts(args.ray_port), num_cpus=cpus):
        result = bench_train.run(
            examples,
            held_out,
            base,
            config,
            modes,
            workers,
            args.processes,
            args.allocation_updates,
            progress=lambda m: print(f"[bench train] {m}", file=sys.stderr, flush=True),
        )
    print(json.dumps(result, indent=2))
    return 0


def cmd_bench_generalize(args: argparse.Namespace) -> int:
    import tempfile

    from deploy.bench import generalize
    from trainer.sources import default_label_cache

    threads = _thread_settings(args.threads)
    teachers = teacher_ensemble(args.teachers)
    if args.warmup < 0:
        raise PedstreamError(f"--warmup {args.warmup}: give a number of updates >= 0")
    tall_from = _tall_from(args)
    with tempfile.TemporaryDirectory(prefix="pedstream-generalize-") as work:
        result = generalize.run(
            data_dir(args.data), models_dir(args.data), default_label_cache(), Path(work), updates=args.updates,
            threads=threads, ray_port=args.ray_port,
            progress=lambda m: print(f"[bench generalize] {m}", file=sys.stderr, flush=True),
            input_size=_input_size(args.input_size), head_stride=args.head_stride, trunk_stride=args.trunk_stride,
            cameras=_left_out(args.left_out), keep=Path(args.keep) if args.keep else None, stem=args.stem,
            average_decay=args.average_decay, trunk_lr_scale=trunk_lr_scale(args.trunk_lr_scale),
            teachers=teachers, lr=args.lr, photo_repeats=args.photo_repeats, mode=args.mode,
            warmup=args.warmup, neck=args.neck, tall_from=tall_from,
        )  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


def _thread_settings(text: str) -> tuple[int, ...]:
    try:
        settings = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        settings = ()
    if not settings or min(settings) < 1:
        raise PedstreamError(f"--threads {text!r}: give thread counts >= 1, comma-separated (for example 1,2)")
    return settings


def _left_out(text: str) -> tuple[str, ...]:
    from deploy.bench.generalize import CAMERAS

    known = [c.sequence for c in CAMERAS]
    wanted = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        raise PedstreamError(f"--left-out {text!r}: choose from {', '.join(known)}")
    return wanted


def register_bench(bench_sub: Any, flags: Flags) -> None:
    g = bench_sub.add_parser(
        "generalize", help="leave one labelled camera out, train the student on the rest, score it beside the stock models there"
    )
    g.add_argument("--updates", type=int, default=2000, help="parameter-server updates per left-out camera (v1 has 2500)")
    g.add_argument("--threads", default="1", help="ONNX Runtime thread settings to time every model at, the same for all, "
                   "comma-separated (the first is each model's fps; 1, the default, is the detector agent's; "
                   "1,2 adds a second timing at 2 threads, about a minute more)")  # fmt: skip
    g.add_argument("--ray-port", type=int, default=DEFAULT_BASE_PORT, help="base of the pinned Ray port range (base .. base+119)")
    g.add_argument("--input-size", default="320x240", help="student input WIDTHxHEIGHT (the bundled v1's by default)")
    g.add_argument("--head-stride", type=int, choices=(4, 8), default=8, help="student head stride (8: v1's; 4 for small people)")
    g.add_argument("--trunk-stride", type=int, choices=(16, 32), default=16, help="32: the trunk's stride-32 features in the neck too")
    g.add_argument("--stem", choices=STEMS, default=DISTILLED_STEM,
                   help="distilled (v1.1's): a cheaper stem distilled from the trunk's first blocks (trainer/stem.py); "
                   "mobilenetv2: those blocks themselves")  # fmt: skip
    g.add_argument("--average-decay", type=float, default=0.995, help=AVERAGE_DECAY_HELP + "; v1.2's 0.995 by default")
    g.add_argument("--trunk-lr-scale", type=float, default=1.0, help=TRUNK_LR_SCALE_HELP)
    g.add_argument("--teachers", default="nanodet,centernet", help=TEACHERS_HELP)
    g.add_argument("--photo-repeats", type=int, choices=range(1, 11), default=1, metavar="N",
                   help="list coco128-person's human-labelled photos N times (1-10), so trainers draw them N times as often")  # fmt: skip
    g.add_argument("--lr", type=float, default=0.002, help="peak learning rate (Adam; warm-up, then cosine decay to 5%%)")
    g.add_argument("--warmup", type=int, default=WARMUP_UPDATES, metavar="N",
                   help=f"updates of linear learning-rate warm-up before the cosine decay (v1.2: {WARMUP_UPDATES})")  # fmt: skip
    g.add_argument("--mode", choices=TRAINING_MODES, default="async",
                   help="async: each trainer's gradient applied as it arrives; sync: the two trainers' gradients averaged into one "
                   "update (a batch of 16; take half the --updates for the same images seen)")  # fmt: skip
    g.add_argument("--neck", type=int, metavar="C", default=RECIPE_NECK,
                   help=f"channels of the student's neck and head (v1.3's {RECIPE_NECK} by default; v1.2 had 32)")  # fmt: skip
    add_tall_head_flag(g)
    g.add_argument("--left-out", default="PETS09-S2L1,TUD-Campus", help="which labelled cameras to leave out, one at a time")
    g.add_argument("--keep", metavar="DIR", help="also write each left-out camera's student there "
                   "(student-without-CAMERA.onnx + .weights.npz: a start model for `bench loop` on that camera)")  # fmt: skip
    g.add_argument("--json", action="store_true", help="print JSON (the only output format)")
    flags.data(g)
    g.set_defaults(func=cmd_bench_generalize)

    b = bench_sub.add_parser("train", help="sync vs async updates/s, samples/s, time to a loss and AP; PS shards vs trainers")
    add_job_flags(b)
    b.set_defaults(every=4, holdout_every=8)
    b.add_argument("--mode", default="async,sync", help="modes to compare, e.g. async,sync")
    b.add_argument("--workers", default="1,2", help="trainer counts to compare, e.g. 1,2")
    b.add_argument("--updates", type=int, default=150, help="updates per run")
    b.add_argument("--target-loss", type=float, default=2.5, help="seconds_to_loss: until the smoothed loss reaches this")
    b.add_argument("--processes", type=int, default=3, help="allocation: PS shards + trainers in all")
    b.add_argument("--allocation-updates", type=int, default=60, help="updates per allocation run")
    flags.data(b)
    b.set_defaults(func=cmd_bench_train)
