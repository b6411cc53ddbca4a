"""Prometheus metrics of the training side: parameter-server updates, their rate, staleness and loss,
held-out evaluation results, retraining cycles and the hard-example store.

All in ``TRAINER_METRICS``, the trainer role's registry (with the dead letters of ``streams.metrics``),
served by ``streams.metrics.serve_metrics`` (``pedstream trainer --metrics-port``).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from streams.metrics import DEAD_LETTERS, RateMeter, role_registry

TRAINER_METRICS = role_registry(DEAD_LETTERS)

UPDATES = Counter("pedstream_trainer_updates", "Gradients applied by the parameter server", registry=TRAINER_METRICS)
DROPPED_STALE = Counter(
    "pedstream_trainer_dropped_stale_gradients", "Gradients dropped for exceeding the staleness bound", registry=TRAINER_METRICS
)
STALENESS = Histogram(
    "pedstream_trainer_staleness",
    "Versions a gradient lagged behind the parameter server",
    buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16),
    registry=TRAINER_METRICS,
)
LOSS = Gauge("pedstream_trainer_loss", "Smoothed training loss of the running job", registry=TRAINER_METRICS)
UPDATES_PER_S = Gauge("pedstream_trainer_updates_per_second", "Updates applied per second over the last 10 s", registry=TRAINER_METRICS)
SAMPLES = Counter("pedstream_trainer_samples", "Training samples the gradients were computed on", registry=TRAINER_METRICS)
HELD_OUT_AP50 = Gauge(
    "pedstream_trainer_held_out_ap50",
    "AP50 on held-out frames at the latest evaluation, per camera and model "
    "(model: current or candidate in a retraining gate, job for a training job's own held-out set)",
    ["camera", "model"],
    registry=TRAINER_METRICS,
)
CYCLES = Counter("pedstream_trainer_cycles", "Retraining cycles by outcome", ["outcome"], registry=TRAINER_METRICS)
STORED = Gauge(
    "pedstream_trainer_hard_examples",
    "Hard examples in the store, per camera and state (new, held_out, used)",
    ["camera", "state"],
    registry=TRAINER_METRICS,
)

_rate = RateMeter(10.0)


def observe_gradient(loss: float | None, samples: int, staleness: int, applied: bool) -> None:
    SAMPLES.inc(samples)
    STALENESS.observe(staleness)
    if not applied:
        DROPPED_STALE.inc()
        return
    UPDATES.inc()
    _rate.tick("updates")
    UPDATES_PER_S.set(_rate.rates().get("updates", 0.0))
    if loss is not None:
        LOSS.set(loss)


def observe_store(counts: dict[str, dict[str, int]]) -> None:
    for camera, c in counts.items():
        for state in ("new", "held_out", "used"):
            STORED.labels(camera, state).set(c.get(state, 0))
