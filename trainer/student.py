"""The student: a small single-class pedestrian detector in plain PyTorch, and its ONNX export.

A depthwise-separable backbone (MobileNet-style blocks) down to stride 16, a light upsampling neck
back to stride 4, and a CenterNet-style head: a person-centre heatmap (sigmoid), box size and
centre offset. The ONNX export's outputs and metadata are what ``detectors.adapters.student``
reads.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from detectors.adapters.registry import FORMAT_METADATA_KEY
from detectors.adapters.student import INPUT_NAME, OUTPUT_HEATMAP, OUTPUT_REGRESSION, StudentAdapter
from detectors.detector import VERSION_METADATA_KEY, onnx_metadata
from detectors.frame_input import with_frame_input
from streams.errors import PedstreamError
from trainer.choices import DISTILLED_STEM, MOBILENETV2_STEM
from trainer.pretrained import (
    SSDLITE_STRIDE4,
    SSDLITE_STRIDE8,
    SSDLITE_STRIDE16,
    SSDLITE_STRIDE32,
    OnnxTrunk,
    freeze_before,
    ssdlite_trunk,
    to_trunk_input,
)
from trainer.stem import StemTrunk
from trainer.targets import COARSE_STRIDE


@dataclass(frozen=True)
class StudentConfig:
    """Size of the student: input (width, height) and channel widths."""

    input_width: int = 384
    input_height: int = 288
    widths: tuple[int, int, int, int] = (24, 48, 96, 160)
    neck: int = 32
    # student v1: the stock SSDLite's pretrained MobileNetV2 trunk (this ONNX file) instead of the
    # small backbone trained from scratch; the convs before stride 8 stay frozen
    trunk: str | None = None
    head_stride: int = 4  # 8: the neck stops at stride 8 (a quarter of the head's work; for small people, 4)
    # pretrained trunk only: 32 also takes its stride-32 features (MobileNetV2 blocks 13-15) into the
    # neck, a larger view for people who fill much of the frame
    trunk_stride: int = 16
    # pretrained trunk only: "distilled" replaces MobileNetV2 blocks 0-2 (stride 2 and 4) with
    # ``trainer.stem``'s cheaper stem, distilled from them (about 40% less int8 inference time)
    stem: str = MOBILENETV2_STEM
    # 0: one head. N > 0 (experimental, session 22): a second head at stride 16 (``COARSE_STRIDE``)
    # learns the people at least N input px tall, beside the head at ``head_stride`` that learns every
    # person; the export merges the two into one map at ``head_stride`` (``merge_levels``)
    tall_from: int = 0


def _separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _centre_head(n: int) -> tuple[nn.Sequential, nn.Sequential]:
    """A CenterNet head over ``n`` channels: the centre heatmap's logits (bias at a 0.1 prior, a stable
    focal-loss start) and the 4-channel box regression."""
    heatmap = nn.Sequential(_separable(n, n, 1), nn.Conv2d(n, 1, 1))
    heatmap_out = heatmap[-1]
    assert isinstance(heatmap_out, nn.Conv2d) and heatmap_out.bias is not None
    nn.init.constant_(heatmap_out.bias, -2.19)
    return heatmap, nn.Sequential(_separable(n, n, 1), nn.Conv2d(n, 4, 1))


class Student(nn.Module):
    """Image (N, 3, H, W) RGB/255 in; heatmap (N, 1, H/4, W/4) and regression (N, 4, H/4, W/4) out.

    Regression channels: box width and height in input pixels / 16 (log scale), then the centre's
    sub-cell offset (0-1) in x and y.
    """

    def __init__(self, config: StudentConfig = StudentConfig()) -> None:
        super().__init__()
        self.config = config
        self.trunk: OnnxTrunk | StemTrunk | None = None
        if config.trunk_stride not in (16, 32) or (config.trunk_stride == 32 and config.trunk is None):
            raise ValueError(f"trunk_stride must be 16, or 32 with a pretrained trunk, not {config.trunk_stride}")
        if config.stem not in (MOBILENETV2_STEM, DISTILLED_STEM) or (config.stem == DISTILLED_STEM and config.trunk is None):
            raise ValueError(f"stem must be {MOBILENETV2_STEM!r}, or {DISTILLED_STEM!r} with a pretrained trunk, not {config.stem!r}")
        if config.tall_from < 0:
            raise ValueError(f"tall_from must be 0 (one head) or a height in input pixels, not {config.tall_from}")
        if config.trunk is not None:
            outputs = (SSDLITE_STRIDE4, SSDLITE_STRIDE8, SSDLITE_STRIDE16) + ((SSDLITE_STRIDE32,) if config.trunk_stride == 32 else ())
            if config.stem == DISTILLED_STEM:
                self.trunk = StemTrunk(Path(config.trunk), outputs)
                # the stem stays as distilled (generic features); the blocks after it, frozen on
                # MobileNetV2's own stem, train here: they adapt to the stem's close-but-not-equal features
                for parameter in self.trunk.stem.parameters():
                    parameter.requires_grad_(False)
            else:
                self.trunk = ssdlite_trunk(Path(config.trunk), outputs)
                freeze_before(self.trunk, SSDLITE_STRIDE8)
            self._build_head(24, 32, 96, 160 if config.trunk_stride == 32 else None)
            return
        w1, w2, w3, w4 = config.widths
        self.stem = nn.Sequential(nn.Conv2d(3, w1, 3, 2, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True))
        self.stage4 = nn.Sequential(_separable(w1, w2, 2), _separable(w2, w2, 1))  # stride 4
        self.stage8 = nn.Sequential(_separable(w2, w3, 2), _separable(w3, w3, 1))  # stride 8
        self.stage16 = nn.Sequential(_separable(w3, w4, 2), _separable(w4, w4, 1), _separable(w4, w4, 1))  # stride 16
        self._build_head(w2, w3, w4)

    def _build_head(self, c4: int, c8: int, c16: int, c32: int | None = None) -> None:
        """The neck ((stride 32 ->) 16 -> 8 -> 4, lateral 1x1 convs) and the CenterNet head, over
        features of ``c4``, ``c8``, ``c16`` (and ``c32``) channels."""
        w2, w3, w4 = c4, c8, c16
        n = self.config.neck
        self.lateral32 = nn.Conv2d(c32, n, 1) if c32 is not None else None
        self.lateral16 = nn.Conv2d(w4, n, 1)
        self.lateral8 = nn.Conv2d(w3, n, 1)
        self.lateral4 = nn.Conv2d(w2, n, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        if self.config.head_stride not in (4, 8):
            raise ValueError(f"head_stride must be 4 or 8, not {self.config.head_stride}")
        self.smooth = _separable(n, n, 1)
        self.heatmap, self.regression = _centre_head(n)
        self.coarse: nn.ModuleDict | None = None
        if self.config.tall_from:
            heatmap, regression = _centre_head(n)
            self.coarse = nn.ModuleDict({"smooth": _separable(n, n, 1), "heatmap": heatmap, "regression": regression})

    def load_stem(self, weights: dict[str, np.ndarray]) -> None:
        """Start from a distilled stem (``trainer.stem.distill_stem``'s weights)."""
        if not isinstance(self.trunk, StemTrunk):
            raise ValueError("this student has no distilled stem (StudentConfig.stem)")
        self.trunk.stem.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()})

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap and regression at ``head_stride`` (with a coarse head: both heads' merged)."""
        levels = self.levels(images)
        if len(levels) == 1:
            return levels[0]
        return merge_levels(levels[0], levels[1], COARSE_STRIDE // self.config.head_stride)

    def levels(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each head's (heatmap, regression): the one at ``head_stride``, then the coarse one if any."""
        x32: torch.Tensor | None = None
        if self.trunk is not None:
            features = self.trunk(to_trunk_input(images))
            x4, x8, x16 = features[:3]
            x32 = features[3] if len(features) > 3 else None
        else:
            x4 = self.stage4(self.stem(images))
            x8 = self.stage8(x4)
            x16 = self.stage16(x8)
        p16 = self.lateral16(x16)
        if self.lateral32 is not None and x32 is not None:
            # stride 32 of an odd stride-16 size is rounded up ("SAME"): upsample, then crop to it
            p16 = p16 + self.up(self.lateral32(x32))[..., : p16.shape[-2], : p16.shape[-1]]
        p = self.up(p16) + self.lateral8(x8)
        if self.config.head_stride == 4:
            p = self.up(p) + self.lateral4(x4)
        p = self.smooth(p)
        levels = [(torch.sigmoid(self.heatmap(p)), self.regression(p))]
        if self.coarse is not None:
            q = self.coarse["smooth"](p16)
            levels.append((torch.sigmoid(self.coarse["heatmap"](q)), self.coarse["regression"](q)))
        return levels


def merge_levels(
    fine: tuple[torch.Tensor, torch.Tensor], coarse: tuple[torch.Tensor, torch.Tensor], factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One (heatmap, regression) at the fine head's stride from both heads': each coarse cell lands on
    the top-left fine cell it covers (its centre offset scaled by ``factor``, the ratio of the strides),
    and each fine cell keeps whichever head scores it higher. The edge decodes it as any student."""
    heatmap, regression = fine
    height, width = heatmap.shape[-2:]
    coarse_heatmap = torch.repeat_interleave(torch.repeat_interleave(coarse[0], factor, dim=2), factor, dim=3)
    coarse_regression = torch.repeat_interleave(torch.repeat_interleave(coarse[1], factor, dim=2), factor, dim=3)
    coarse_heatmap, coarse_regression = coarse_heatmap[..., :height, :width], coarse_regression[..., :height, :width]
    top_left = torch.zeros(1, 1, height, width, dtype=heatmap.dtype)
    top_left[..., ::factor, ::factor] = 1.0
    coarse_heatmap = coarse_heatmap * top_left
    coarse_regression = torch.cat([coarse_regression[:, :2], coarse_regression[:, 2:] * factor], dim=1)
    from_coarse = coarse_heatmap > heatmap
    return torch.maximum(heatmap, coarse_heatmap), torch.where(from_coarse, coarse_regression, regression)


TRUNK_METADATA_KEY = "trunk_file"  # the pretrained trunk's ONNX file name, looked up in the models folder


def config_of(model_onnx: bytes, models_dir: Path) -> StudentConfig:
    """The configuration a student model was exported with, read from its ONNX metadata, so that
    fine-tuning rebuilds the same network (v0's small backbone or v1's pretrained trunk, found in
    ``models_dir``) before loading its weights."""
    metadata = onnx_metadata(model_onnx)
    if metadata.get(FORMAT_METADATA_KEY) != StudentAdapter.format:
        raise PedstreamError(f"model {metadata.get(VERSION_METADATA_KEY, '?')} is not a pedstream student: it cannot be fine-tuned")
    trunk: str | None = None
    trunk_file = metadata.get(TRUNK_METADATA_KEY) or _trunk_file_of(metadata.get("backbone", "scratch"))
    if trunk_file:
        trunk_path = Path(models_dir) / trunk_file
        if not trunk_path.is_file():
            raise PedstreamError(f"the student's pretrained trunk {trunk_file} is not in the models folder {models_dir}")
        trunk = str(trunk_path)
    defaults = StudentConfig()
    widths = metadata.get("widths")
    return StudentConfig(
        input_width=int(metadata.get("input_width", defaults.input_width)),
        input_height=int(metadata.get("input_height", defaults.input_height)),
        widths=tuple(int(w) for w in widths.split(",")) if widths else defaults.widths,  # type: ignore[arg-type]
        neck=int(metadata.get("neck", defaults.neck)),
        trunk=trunk,
        head_stride=int(metadata.get("stride", defaults.head_stride)),
        trunk_stride=int(metadata.get("trunk_stride", defaults.trunk_stride)),
        stem=metadata.get("stem", defaults.stem),
        tall_from=int(metadata.get("tall_from", defaults.tall_from)),
    )


def _trunk_file_of(backbone: str) -> str:
    """Models exported before ``trunk_file`` existed name it in ``backbone``: "mobilenetv2 from FILE (pretrained)"."""
    if backbone.startswith("mobilenetv2 from "):
        return backbone.removeprefix("mobilenetv2 from ").split(" ")[0]
    return ""


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops(model: Student) -> float:
    """Multiply-adds x 2 of one forward pass at the configured input size, in GFLOPs (convs only)."""
    total = 0

    def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * kernel * output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()
            model(torch.zeros(1, 3, model.config.input_height, model.config.input_width))
    finally:
        for h in handles:
            h.remove()
    return total / 1e9


def export_onnx(model: Student, version: str, extra_metadata: dict[str, str] | None = None) -> bytes:
    """The model as ONNX (dynamic batch) with pedstream's metadata: format, version, input size. It
    takes the frame as decoded (uint8 BGR NHWC, ``detectors.frame_input``); the torch model takes RGB / 255 NCHW."""
    model.eval()
    cfg = model.config
    dummy = torch.zeros(1, 3, cfg.input_height, cfg.input_width)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the exporter tells, three times per export, that it cannot constant-fold strided slices: nothing to act on
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            model,
            (dummy,),
            buffer,  # type: ignore[arg-type]  # a file-like object works and is documented
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_HEATMAP, OUTPUT_REGRESSION],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_HEATMAP: {0: "batch"}, OUTPUT_REGRESSION: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load_model_from_string(buffer.getvalue())
    metadata = {
        FORMAT_METADATA_KEY: StudentAdapter.format,
        VERSION_METADATA_KEY: version,
        "input_width": str(cfg.input_width),
        "input_height": str(cfg.input_height),
        "stride": str(cfg.head_stride),
        "widths": ",".join(map(str, cfg.widths)),
        "neck": str(cfg.neck),
        "trunk_stride": str(cfg.trunk_stride),
        "stem": cfg.stem,
        "tall_from": str(cfg.tall_from),
        "backbone": (f"mobilenetv2 from {Path(cfg.trunk).name} (pretrained)" + (", distilled stem" if cfg.stem == DISTILLED_STEM else ""))
        if cfg.trunk
        else "scratch",
        TRUNK_METADATA_KEY: Path(cfg.trunk).name if cfg.trunk else "",
        "exported_ts": f"{time.time():.0f}",
        **(extra_metadata or {}),
    }
    onnx.helper.set_model_props(proto, metadata)
    return with_frame_input(bytes(proto.SerializeToString()))
