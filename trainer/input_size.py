"""The input size a camera's own model gets: the smallest that shows the camera's people tall enough.

The student is fully convolutional, so the same weights run at any input size; what changes is how
many pixels a person covers. The general model runs small (fast) because most cameras see people
large enough; a camera that sees its people small (a high, wide view such as PETS09-S2L1's, median
81 px tall in 576-px-high frames, 34 px at 320x240) gets a larger input in its own model, where they
are big enough to find. Measured on PETS09-S2L1 frames 398-795 (every 4th) with the bundled v1's
weights, no retraining: AP50 0.790 at 320x240, 0.828 at 384x288, 0.864 at 512x384, 0.882 at 576x432.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from trainer.data import Example
from trainer.student import StudentConfig

WIDTH_STEP = 64  # candidate widths go up by this much (heights are rounded to a multiple of 16, the trunk's stride)


def person_heights(examples: Sequence[Example]) -> np.ndarray:
    """Each labelled person's height as a fraction of its frame's height."""
    parts = [(e.boxes[:, 3] - e.boxes[:, 1]) / e.image.shape[0] for e in examples if len(e.boxes)]
    return np.concatenate(parts) if parts else np.empty(0)


def fitted_config(config: StudentConfig, examples: Sequence[Example], person_px: float, max_width: int) -> StudentConfig:
    """``config`` at the smallest input (its aspect ratio, width up in steps of 64, at most
    ``max_width`` and never below its own) at which the examples' median person is at least
    ``person_px`` tall; ``config`` itself when it already is, or when nobody is labelled."""
    heights = person_heights(examples)
    if heights.size == 0:
        return config
    median = float(np.median(heights))
    aspect = config.input_width / config.input_height
    width = config.input_width
    while median * (width / aspect) < person_px and width + WIDTH_STEP <= max_width:
        width += WIDTH_STEP
    if width == config.input_width:
        return config
    height = int(round(width / aspect / 16)) * 16
    return replace(config, input_width=width, input_height=height)
