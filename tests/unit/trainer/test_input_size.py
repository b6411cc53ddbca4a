"""The input size a camera's own model gets from its people's heights (trainer.input_size)."""

from __future__ import annotations

import numpy as np

from trainer.data import Example
from trainer.input_size import fitted_config, person_heights
from trainer.student import StudentConfig

GENERAL = StudentConfig(input_width=320, input_height=240, head_stride=8)


def frame_with_people(heights_px: list[float], frame_height: int = 576) -> Example:
    boxes = np.array([[10.0, 20.0, 30.0, 20.0 + h] for h in heights_px]).reshape(-1, 4)
    return Example(np.zeros((frame_height, frame_height * 4 // 3, 3), np.uint8), boxes, np.ones(len(boxes)), "teacher", "x")


def test_people_as_small_as_pets09s_get_the_smallest_input_that_shows_them_tall_enough() -> None:
    # PETS09-S2L1: median 81 px in 576-px-high frames, 34 px at 320x240
    examples = [frame_with_people([70.0, 81.0, 95.0]), frame_with_people([81.0])]
    assert np.median(person_heights(examples)) * 576 == 81.0
    fitted = fitted_config(GENERAL, examples, person_px=48, max_width=640)
    assert (fitted.input_width, fitted.input_height) == (512, 384)  # 54 px there; 47 px at 448x336
    assert fitted.head_stride == GENERAL.head_stride and fitted.trunk == GENERAL.trunk  # the same network


def test_a_camera_whose_people_are_large_keeps_the_general_size_and_nothing_exceeds_the_cap() -> None:
    large = [frame_with_people([184.0], frame_height=480)]  # TUD-Campus's median
    assert fitted_config(GENERAL, large, person_px=48, max_width=640) == GENERAL
    tiny = [frame_with_people([10.0])]
    assert fitted_config(GENERAL, tiny, person_px=48, max_width=448).input_width == 448
    assert fitted_config(GENERAL, [frame_with_people([])], person_px=48, max_width=640) == GENERAL  # nobody labelled


def test_the_input_keeps_the_models_aspect_ratio() -> None:
    wide = StudentConfig(input_width=384, input_height=216)
    fitted = fitted_config(wide, [frame_with_people([30.0], frame_height=576)], person_px=48, max_width=1024)
    assert fitted.input_width > 384 and abs(fitted.input_width / fitted.input_height - 384 / 216) < 0.05
    assert fitted.input_height % 16 == 0
