"""``pedstream bench train``: sync vs async scaling and accuracy, and PS shards vs trainers, in one run.

Every run trains the same student from the same start on the same labelled frames, one after the
other on one loopback Ray cluster, so the ratios compare like with like on this machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from trainer.job import HeldOut, JobSettings, TrainingJob
from trainer.student import StudentConfig


def _run(examples: list[Any], settings: JobSettings, config: StudentConfig, held_out: HeldOut | None) -> Any:
    return TrainingJob(examples, settings, config, held_out, model_version="bench").run()


def run(
    examples: list[Any],
    held_out: HeldOut,
    base: JobSettings,
    config: StudentConfig,
    modes: list[str],
    workers: list[int],
    processes: int,
    allocation_updates: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Train once per (mode, workers); then, for ``processes`` actors in all, once per split into
    PS shards and trainers (async), and recommend the split with the most updates/s."""
    say = progress or (lambda _m: None)
    runs = []
    for mode in modes:
        for k in workers:
            say(f"{mode} with {k} trainer(s), {base.updates} updates")
            r = _run(examples, replace(base, mode=mode, workers=k), config, held_out)
            runs.append(
                {
                    "mode": mode,
                    "workers": k,
                    "updates_per_s": r.updates_per_s,
                    "samples_per_s": r.samples_per_s,
                    "seconds_to_loss": r.seconds_to_loss,
                    "ap50": None if r.ap50 is None else round(r.ap50, 4),
                    "final_loss": r.final_loss,
                    "seconds": r.seconds,
                    "staleness_mean": r.staleness["mean"],
                    "dropped_stale": r.dropped_stale,
                }
            )
    measured = []
    for shards in range(1, processes):
        trainers = processes - shards
        say(f"allocation: {shards} PS shard(s) + {trainers} trainer(s), {allocation_updates} updates")
        settings = replace(base, mode="async", workers=trainers, ps_shards=shards, updates=allocation_updates, eval_every=0)
        r = _run(examples, settings, config, None)
        measured.append({"ps_shards": shards, "trainers": trainers, "updates_per_s": r.updates_per_s, "samples_per_s": r.samples_per_s})
    best = max(measured, key=lambda m: m["updates_per_s"]) if measured else None

    def ups(mode: str, k: int) -> float | None:
        return next((r["updates_per_s"] for r in runs if r["mode"] == mode and r["workers"] == k), None)

    scaling = {}
    for mode in modes:
        lo, hi = min(workers), max(workers)
        low, high = ups(mode, lo), ups(mode, hi)
        if lo != hi and low and high:
            scaling[mode] = round(high / low, 3)
    return {
        "runs": runs,
        "scaling": {f"{m}_{min(workers)}_to_{max(workers)}": v for m, v in scaling.items()},
        "allocation": {
            "processes": processes,
            "best": best,
            "measured": measured,
            "recommendation": (
                f"{best['ps_shards']} PS shard(s) + {best['trainers']} trainer(s) for {processes} processes" if best else None
            ),
        },
        "settings": {
            "updates": base.updates,
            "batch_size": base.batch_size,
            "target_loss": base.target_loss,
            "examples": len(examples),
            "held_out": held_out.name,
            "input_size": [config.input_width, config.input_height],
        },
    }
