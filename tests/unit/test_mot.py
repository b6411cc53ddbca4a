"""MOT-style sequence folders: metadata, ground truth and frames from a video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from streams.errors import SourceError
from streams.mot import MotSequence


def test_pets_sequence(shared_data: Path) -> None:
    seq = MotSequence.load(shared_data / "PETS09-S2L1")
    assert (seq.name, seq.length, seq.width, seq.height, seq.frame_rate) == ("PETS09-S2L1", 795, 768, 576, 7.0)
    assert seq.video is not None and seq.image_dir is None
    assert seq.gt_box_count == 4650
    gt = seq.gt(1)
    assert gt.xyxy.shape == (3, 4) and gt.consider.all()
    np.testing.assert_allclose(gt.xyxy[0], [499, 158, 499 + 31.03, 158 + 75.17], rtol=1e-5)
    assert seq.gt(10_000).xyxy.shape == (0, 4)


def test_tud_and_frames_iteration(shared_data: Path) -> None:
    seq = MotSequence.load(shared_data / "TUD-Campus")
    assert seq.gt_box_count == 359 and seq.length == 71
    frames = list(seq.frames(start=5, stop=20, every=5))
    assert [n for n, _ in frames] == [5, 10, 15, 20]
    assert frames[0][1].shape == (480, 640, 3)
    picked = list(seq.picked_frames([20, 5, 20, 500]))  # in order, each once, past the end skipped
    assert [n for n, _ in picked] == [5, 20]
    np.testing.assert_array_equal(picked[1][1], frames[-1][1])


def test_picked_frames_from_a_video_match_the_frames_read_in_order(shared_data: Path) -> None:
    seq = MotSequence.load(shared_data / "PETS09-S2L1")
    in_order = dict(seq.frames(1, 12))
    picked = list(seq.picked_frames([12, 3, 7]))
    assert [n for n, _ in picked] == [3, 7, 12]
    for number, image in picked:
        np.testing.assert_array_equal(image, in_order[number])


def test_image_folder_sequence(tmp_path: Path) -> None:
    (tmp_path / "img1").mkdir()
    for i in range(1, 4):
        cv2.imwrite(str(tmp_path / "img1" / f"{i:06d}.jpg"), np.full((20, 30, 3), i * 40, np.uint8))
    (tmp_path / "seqinfo.ini").write_text("[Sequence]\nname=tiny\nimDir=img1\nframeRate=5\nseqLength=3\nimWidth=30\nimHeight=20\n")
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "gt.txt").write_text("2,1,1,2,3,4,0,-1,-1,-1\n")
    seq = MotSequence.load(tmp_path)
    assert seq.image_dir is not None and [n for n, _ in seq.frames()] == [1, 2, 3]
    assert [int(image[0, 0, 0]) // 40 for _, image in seq.picked_frames([3, 1])] == [1, 3]  # read by number, not all
    assert not seq.gt(2).consider[0]


def test_not_a_sequence(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no seqinfo.ini"):
        MotSequence.load(tmp_path)
