"""Pixel operations for camera frames: the looks of virtual cameras and downscaling to a maximum width."""

from __future__ import annotations

import cv2
import numpy as np

from streams.cameras.config import Look


def crop_and_flip(image: np.ndarray, look: Look) -> np.ndarray:
    """The geometric part of a look: crop (fractions of the frame) and left-right mirror."""
    if look.crop is not None:
        h, w = image.shape[:2]
        x, y, cw, ch = look.crop
        x0, y0 = int(round(x * w)), int(round(y * h))
        x1, y1 = min(w, x0 + max(1, int(round(cw * w)))), min(h, y0 + max(1, int(round(ch * h))))
        image = image[y0:y1, x0:x1]
    if look.flip:
        image = cv2.flip(image, 1)
    return image


def shade(image: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """The photometric part of a look: brightness, blur, then sensor noise."""
    if look.brightness != 1.0:
        image = cv2.convertScaleAbs(image, alpha=look.brightness, beta=0)
    if look.blur:
        image = cv2.GaussianBlur(image, (look.blur, look.blur), 0)
    if look.noise > 0:
        noise = rng.normal(0.0, look.noise, size=image.shape).astype(np.float32)
        image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return image


def fit_width(image: np.ndarray, max_width: int | None) -> np.ndarray:
    """Downscale (keeping the aspect ratio) so the image is at most ``max_width`` pixels wide."""
    h, w = image.shape[:2]
    if max_width is None or w <= max_width:
        return image
    new_h = max(1, int(round(h * max_width / w)))
    return cv2.resize(image, (max_width, new_h), interpolation=cv2.INTER_AREA)


def render(image: np.ndarray, look: Look, max_width: int | None, rng: np.random.Generator) -> np.ndarray:
    """Crop/flip, downscale, then shade: shading after downscaling costs less and keeps noise visible."""
    return shade(fit_width(crop_and_flip(image, look), max_width), look, rng)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
