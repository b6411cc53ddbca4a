"""Virtual camera looks and downscaling."""

from __future__ import annotations

import numpy as np
import pytest

from streams.cameras.config import Look
from streams.cameras.looks import crop_and_flip, encode_jpeg, fit_width, render, shade

RNG = np.random.default_rng(0)
IMAGE = np.tile(np.arange(100, dtype=np.uint8)[None, :, None], (50, 1, 3))  # brightness rises left to right


@pytest.mark.parametrize(
    ("look", "shape"),
    [(Look(), (50, 100, 3)), (Look(crop=(0.5, 0.0, 0.5, 0.5)), (25, 50, 3)), (Look(flip=True), (50, 100, 3))],
)
def test_geometry(look: Look, shape: tuple[int, int, int]) -> None:
    assert crop_and_flip(IMAGE, look).shape == shape


def test_flip_mirrors_and_crop_takes_the_right_part() -> None:
    assert crop_and_flip(IMAGE, Look(flip=True))[0, 0, 0] == 99
    assert crop_and_flip(IMAGE, Look(crop=(0.5, 0.0, 0.5, 1.0)))[0, 0, 0] == 50


def test_night_is_darker_and_noise_changes_pixels() -> None:
    night = shade(IMAGE, Look(brightness=0.3), RNG)
    assert night.mean() == pytest.approx(IMAGE.mean() * 0.3, rel=0.05)
    noisy = shade(IMAGE, Look(noise=10), RNG)
    assert noisy.dtype == np.uint8 and 5 < np.abs(noisy.astype(int) - IMAGE).mean() < 12
    blurred = shade(np.pad(np.full((5, 5, 3), 255, np.uint8), ((10, 10), (10, 10), (0, 0))), Look(blur=5), RNG)
    assert 0 < blurred[9, 12, 0] < 255


def test_fit_width_keeps_aspect_and_never_upscales() -> None:
    assert fit_width(IMAGE, 50).shape == (25, 50, 3)
    assert fit_width(IMAGE, 500).shape == IMAGE.shape
    assert fit_width(IMAGE, None).shape == IMAGE.shape
    assert render(IMAGE, Look(flip=True, noise=2), 40, RNG).shape == (20, 40, 3)
    assert encode_jpeg(IMAGE, 80)[:3] == b"\xff\xd8\xff"
