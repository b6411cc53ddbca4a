"""A cheaper stem for the student's pretrained trunk, distilled from the trunk's own first blocks.

MobileNetV2's blocks 0-2 (strides 2 and 4: a 3x3 conv, then depthwise convs over 32-144 channels at
160x120 and 80x60 for a 320x240 input) cost about half of the int8 student's time on a CPU edge,
though they make only the trunk's stride-4 features (24 channels). The distilled stem makes the same
features with two plain 3x3 convs (stride 2 to 16 channels, stride 2 to 32), one depthwise 3x3 conv
at stride 4 and a 1x1 projection to 24: int8 inference 3.7 -> 2.3 ms per 320x240 frame on one core.
It is trained, with no labels, to reproduce the trunk's stride-4 features and, through the unchanged blocks after them, its stride-8
features, on images that are never scored (COCO photos and the unlabelled clips), so a student
built on it is still honest on every left-out camera. The result is cached, keyed by its inputs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from trainer.data import Augment, Example, prepare
from trainer.pretrained import SSDLITE_STRIDE4, SSDLITE_STRIDE8, FrozenTrunk, OnnxTrunk, cut_onnx, to_trunk_input

STEM_CHANNELS = (16, 32)  # after the first and the second stride-2 conv
STEM_OUTPUT_CHANNELS = 24  # the trunk's stride-4 features
STEM_VERSION = 2  # of the stem's layers: part of the cache key


class DistilledStem(nn.Module):
    """[-1, 1] RGB (N, 3, H, W) in, the trunk's stride-4 features (N, 24, H/4, W/4) out: 3x3 conv
    (stride 2), 3x3 conv (stride 2), 3x3 depthwise conv (a receptive field of 15 px, near the 19 of
    the blocks it stands for), each with ReLU6, and a linear 1x1 projection. Distillation trains it
    with batch normalisation after each conv (``batchnorm=True``); ``fused()`` folds that into the
    convs, the form the student carries."""

    def __init__(self, batchnorm: bool = False) -> None:
        super().__init__()
        c1, c2 = STEM_CHANNELS
        convs = [nn.Conv2d(3, c1, 3, 2, 1), nn.Conv2d(c1, c2, 3, 2, 1), nn.Conv2d(c2, c2, 3, 1, 1, groups=c2)]
        layers: list[nn.Module] = []
        for conv in convs:
            layers += [conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU6()] if batchnorm else [conv, nn.ReLU6()]
        layers.append(nn.Conv2d(c2, STEM_OUTPUT_CHANNELS, 1))  # linear, as the trunk's block outputs are
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)  # type: ignore[no-any-return]

    def fused(self) -> DistilledStem:
        """The same function without batch normalisation (running statistics folded into the convs)."""
        plain = DistilledStem(batchnorm=False)
        modules = list(self.layers)
        convs = [m for m in plain.layers if isinstance(m, nn.Conv2d)]
        sources: list[nn.Conv2d] = []
        for i, module in enumerate(modules):
            if isinstance(module, nn.Conv2d):
                following = modules[i + 1] if i + 1 < len(modules) else None
                sources.append(fuse_conv_bn_eval(module, following) if isinstance(following, nn.BatchNorm2d) else module)
        with torch.no_grad():
            for target, source in zip(convs, sources, strict=True):
                target.weight.copy_(source.weight)
                assert target.bias is not None and source.bias is not None
                target.bias.copy_(source.bias)
        return plain


class StemTrunk(nn.Module):
    """The distilled stem, then the pretrained trunk from its stride-4 features on; returns the
    requested outputs in order, as ``OnnxTrunk`` does."""

    def __init__(self, model_path: Path, outputs: Sequence[str]) -> None:
        super().__init__()
        self.stem = DistilledStem()
        cut = cut_onnx(model_path, [SSDLITE_STRIDE4], list(outputs))
        self.rest = OnnxTrunk(cut.graph, list(outputs))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.rest(self.stem(images))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DistillSettings:
    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-2
    input_width: int = 320  # images are rendered as the student sees them at this input size,
    input_height: int = 240
    crop_width: int = 160  # then a random crop of this size is distilled (4x cheaper; convs do not mind)
    crop_height: int = 120
    seed: int = 0


@dataclass(frozen=True)
class DistilledStemResult:
    weights: dict[str, np.ndarray]  # DistilledStem's state dict
    seconds: float  # spent distilling (0 when cached)
    # mean squared error over the teacher features' variance at the end (0: identical features)
    relative_error_stride4: float
    relative_error_stride8: float
    cached: bool


def _crop(image: np.ndarray, settings: DistillSettings, rng: np.random.Generator) -> np.ndarray:
    """A random ``crop_width`` x ``crop_height`` part of a CHW image."""
    top = int(rng.integers(0, image.shape[1] - settings.crop_height + 1))
    left = int(rng.integers(0, image.shape[2] - settings.crop_width + 1))
    return image[:, top : top + settings.crop_height, left : left + settings.crop_width]


def _cache_key(trunk_file: Path, refs: Sequence[str], settings: DistillSettings) -> str:
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(trunk_file.read_bytes()).digest())
    digest.update(repr((STEM_VERSION, STEM_CHANNELS, STEM_OUTPUT_CHANNELS, settings)).encode())
    for ref in sorted(refs):
        digest.update(ref.encode())
    return digest.hexdigest()[:16]


def distill_stem(
    trunk_file: Path,
    examples: Sequence[Example],
    settings: DistillSettings = DistillSettings(),
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> DistilledStemResult:
    """Train a ``DistilledStem`` to reproduce ``trunk_file``'s stride-4 and stride-8 features on the
    images of ``examples`` (their boxes are not used), augmented as the student's training is."""
    if not examples:
        raise ValueError("distill_stem needs at least one image")
    key = _cache_key(trunk_file, [e.ref for e in examples], settings)
    cached = cache_dir / f"distilled-stem-{key}.npz" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        with np.load(cached) as saved:
            weights = {name: saved[name] for name in saved.files if not name.startswith("_")}
            errors = saved["_relative_errors"]
        if progress:
            progress(f"distilled stem: cached ({cached.name})")
        return DistilledStemResult(weights, 0.0, float(errors[0]), float(errors[1]), True)

    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    teacher = FrozenTrunk(trunk_file, (SSDLITE_STRIDE4, SSDLITE_STRIDE8))  # never trained: ONNX Runtime runs it
    rest = OnnxTrunk(cut_onnx(trunk_file, [SSDLITE_STRIDE4], [SSDLITE_STRIDE8]).graph, [SSDLITE_STRIDE8]).eval()
    for parameter in rest.parameters():
        parameter.requires_grad_(False)
    stem = DistilledStem(batchnorm=True)
    optimizer = torch.optim.Adam(stem.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.05)
    augment = Augment.strong()
    err4 = err8 = float("nan")
    for step in range(1, settings.steps + 1):
        picks = rng.integers(0, len(examples), settings.batch_size)
        rendered = (prepare(examples[i], settings.input_width, settings.input_height, augment, rng)[0] for i in picks)
        batch = np.stack([_crop(image, settings, rng) for image in rendered])
        images = to_trunk_input(torch.from_numpy(batch))
        want4, want8 = teacher(images)
        got4 = stem(images)
        [got8] = rest(got4)
        rel4 = F.mse_loss(got4, want4) / want4.var().clamp(min=1e-6)
        rel8 = F.mse_loss(got8, want8) / want8.var().clamp(min=1e-6)
        loss = rel4 + rel8
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        schedule.step()
        err4 = 0.9 * err4 + 0.1 * rel4.item() if step > 1 else rel4.item()
        err8 = 0.9 * err8 + 0.1 * rel8.item() if step > 1 else rel8.item()
        if progress and (step % 100 == 0 or step == settings.steps):
            progress(f"distilled stem: step {step}/{settings.steps}, relative error stride 4 {err4:.3f}, "
                     f"stride 8 {err8:.3f}, {time.perf_counter() - started:.0f} s")  # fmt: skip
    weights = {name: value.detach().numpy().copy() for name, value in stem.eval().fused().state_dict().items()}
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial.npz")
        np.savez(partial, _relative_errors=np.array([err4, err8]), **weights)
        partial.replace(cached)
    return DistilledStemResult(weights, time.perf_counter() - started, err4, err8, False)
