"""cameras.yaml: defaults, virtual groups, variables, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.cameras.config import DEFAULT_VARIANTS, Look, load_cameras, parse_cameras
from streams.errors import ConfigError


def test_defaults_apply_and_cameras_override(tmp_path: Path) -> None:
    cams = parse_cameras(
        {
            "defaults": {"fps": 3, "jpeg_quality": 70},
            "cameras": [{"id": "a", "source": "a.mp4"}, {"id": "b", "source": "rtsp://127.0.0.1:8554/x", "fps": 10}],
        },
        base_dir=tmp_path,
    )
    assert [c.option("fps") for c in cams] == [3, 10]
    assert cams[0].option("jpeg_quality") == 70 and cams[1].option("max_width") == 1280
    assert cams[0].source == str(tmp_path / "a.mp4")
    assert cams[1].source == "rtsp://127.0.0.1:8554/x"


def test_usb_index_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEOS", "/data")
    cams = parse_cameras(
        {
            "cameras": [
                {"id": "usb", "source": 0},
                {"id": "v", "source": "${VIDEOS}/x.avi"},
                {"id": "w", "source": "${NOPE_UNSET:-/d}/y.avi"},
            ]
        }
    )
    assert [c.source for c in cams] == [0, "/data/x.avi", "/d/y.avi"]
    with pytest.raises(ConfigError, match=r"cameras\[0\].source: environment variable NOPE_UNSET"):
        parse_cameras({"cameras": [{"id": "v", "source": "${NOPE_UNSET}/x.avi"}]})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"cameras": [{"id": "a", "source": "x", "fps": -1}]}, r"cameras\[0\]\.fps"),
        ({"cameras": [{"id": "a", "source": "x", "fsp": 5}]}, r"cameras\[0\]\.fsp: Extra inputs"),
        ({"cameras": [{"id": "a b", "source": "x"}]}, r"cameras\[0\]\.id"),
        ({"cameras": [{"source": "x"}]}, r"cameras\[0\]\.id: Field required"),
        ({"cameras": [{"id": "a", "source": "x", "look": {"blur": 4}}]}, r"cameras\[0\]\.look\.blur"),
        ({"cameras": [{"id": "a", "source": "x", "look": {"crop": [0.5, 0, 0.9, 1]}}]}, r"cameras\[0\]\.look\.crop"),
        ({"virtual": [{"id_prefix": "v", "source": "x", "count": 0}]}, r"virtual\[0\]\.count"),
        ({"defaults": {"jpeg_quality": 101}}, r"defaults\.jpeg_quality"),
        ({"cameras": [{"id": "a", "source": "x"}, {"id": "a", "source": "y"}]}, "used twice"),
        ({}, "no cameras"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_config_names_the_field(data: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_cameras(data)


def test_virtual_group_spreads_offsets_over_the_video(vtest: str) -> None:
    cams = parse_cameras({"virtual": [{"id_prefix": "pets", "source": vtest, "count": 4}]})
    assert [c.id for c in cams] == ["pets-0", "pets-1", "pets-2", "pets-3"]
    starts = [c.start_s for c in cams]
    assert starts[0] == 0 and starts == sorted(starts)
    assert starts[3] == pytest.approx(795 / 7 * 3 / 4, rel=0.02)  # seqinfo.ini's 7 fps, not the header's 10
    assert [c.look for c in cams] == list(DEFAULT_VARIANTS[:4])


def test_load_file_reports_yaml_and_path_errors(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("cameras: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_cameras(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_cameras(tmp_path / "missing.yaml")
    good = tmp_path / "ok.yaml"
    good.write_text("cameras:\n  - {id: a, source: clip.mp4, look: {flip: true}}\n")
    [cam] = load_cameras(good)
    assert cam.look == Look(flip=True) and cam.source == str(tmp_path / "clip.mp4")


def test_bundled_demo_config_is_valid(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEDSTREAM_DATA", str(shared_data))
    cams = load_cameras(Path(__file__).resolve().parents[2] / "deploy" / "demo" / "cameras.yaml")
    assert len(cams) == 4 and all(Path(str(c.source)).is_file() for c in cams)
