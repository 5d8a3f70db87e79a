"""`petal data` on a folder holding every kind of mess a real photo folder has."""

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import PETAL, make_folder
from PIL import Image

from petal.data.doctor import examine
from petal.data.index import index_folder
from petal.data.split import split_folder
from petal.errors import ConfigError


def noisy(size=(48, 40), seed=0, mode="RGB"):
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    root = make_folder(tmp_path / "messy", per_class=6)
    red, green, blue = root / "red", root / "green", root / "blue"
    buffer = io.BytesIO()
    noisy((200, 200), 1).save(buffer, "JPEG")
    (red / "truncated.jpg").write_bytes(buffer.getvalue()[:500])
    (red / "empty.jpg").write_bytes(b"")
    (red / "text.jpg").write_text("404 Not Found")
    noisy(seed=2).save(green / "really_png.jpg", "PNG")
    noisy(seed=3).save(green / "icon.png", "ICO")
    noisy((12, 12), 4).save(green / "tiny.png")
    noisy((300, 300), 5).save(blue / "huge.png")
    frames = [noisy(seed=s) for s in (6, 7, 8)]
    frames[0].save(blue / "animated.gif", save_all=True, append_images=frames[1:])
    noisy(seed=9).save(blue / ".hidden.jpg")
    noisy(seed=10, mode="CMYK").save(blue / "cmyk.jpg")
    noisy(seed=11, mode="L").save(blue / "grey.png")
    noisy(seed=12).convert("P").save(blue / "palette.png")
    noisy(seed=13, mode="RGBA").save(blue / "alpha.png")
    Image.fromarray(np.full((40, 48), 40000, np.uint16)).save(blue / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    noisy(seed=14).save(red / "rotated.jpg", exif=exif.tobytes())
    (red / "copy_of_000.jpg").write_bytes((red / "img_000.jpg").read_bytes())
    (green / "same_as_red_001.png").write_bytes((red / "img_001.png").read_bytes())
    noisy((96, 80), 15).save(blue / "big_version.png")
    noisy((96, 80), 15).resize((48, 40), Image.Resampling.LANCZOS).save(blue / "small_version.jpg", quality=90)
    return root


def findings_by_kind(report):
    found = {}
    for f in report.findings:
        found.setdefault(f.kind, set()).add(f.path)
    return found


def test_doctor_names_every_problem_by_path(messy_folder):
    split = split_folder(index_folder(messy_folder), 0.2, 123)
    report = examine(split, max_pixels=300 * 300 - 1)
    found = findings_by_kind(report)

    assert found["corrupt"] == {"red/truncated.jpg"}
    assert found["empty"] == {"red/empty.jpg"}
    assert found["not-an-image"] == {"red/text.jpg"}
    assert found["unsupported-format"] == {"green/icon.png"}
    assert found["extension-mismatch"] == {"green/really_png.jpg", "green/icon.png"}
    assert found["too-small"] == {"green/tiny.png"}
    assert found["too-large"] == {"blue/huge.png"}
    assert found["animated"] == {"blue/animated.gif"}
    assert found["hidden"] == {"blue/.hidden.jpg"}
    assert found["rotated"] == {"red/rotated.jpg"}
    assert found["duplicate-within-class"] == {"red/img_000.jpg"}  # the later of red/copy_of_000.jpg, red/img_000.jpg
    assert found["duplicate-across-classes"] == {"red/img_001.png", "green/same_as_red_001.png"}
    assert found["near-duplicate-within-class"] == {"blue/small_version.jpg"}  # resized copy of big_version.png
    # P: palette.png and the animated GIF; I;16: the 16-bit PNG.
    assert report.conversions == {"CMYK -> RGB": 1, "L -> RGB": 1, "P -> RGB": 2, "RGBA -> RGB": 1, "I;16 -> RGB": 1}
    assert set(report.unusable) == {"red/truncated.jpg", "red/empty.jpg", "red/text.jpg", "green/icon.png", "blue/huge.png"}


def test_duplicates_across_the_split_are_reported(tmp_path):
    root = make_folder(tmp_path / "photos", per_class=10)
    split = split_folder(index_folder(root), 0.2, 123)
    train_path, val_path = split.train.paths[0], split.validation.paths[0]
    (root / val_path).write_bytes((root / train_path).read_bytes())

    found = findings_by_kind(examine(split_folder(index_folder(root), 0.2, 123)))

    assert val_path in found["duplicate-across-split"]


def test_data_command_prints_a_table_and_json(messy_folder, tmp_path):
    table = subprocess.run([PETAL, "data", str(messy_folder), "--grid", str(tmp_path / "g.png")], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert "not-an-image" in table.stdout and "red/text.jpg" in table.stdout
    assert "Converted to RGB: " in table.stdout
    as_json = subprocess.run([PETAL, "data", str(messy_folder), "--json"], capture_output=True, text=True)
    report = json.loads(as_json.stdout)
    assert {"path": "red/empty.jpg", "kind": "empty", "detail": "", "severity": "error"} in report["findings"]
    assert report["class_counts"] == {"blue": 16, "green": 10, "red": 11}


def test_training_on_the_messy_folder_leaves_out_exactly_the_unreadable_files(messy_folder, tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([PETAL, "train", str(messy_folder), "--model", "tutorial", "--epochs", "1", "--out", str(run),
                             "--image-size", "24", "24"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    skipped = {line.split(",")[0] for line in (run / "skipped.csv").read_text().splitlines()[1:]}
    assert skipped == {"red/truncated.jpg", "red/empty.jpg", "red/text.jpg", "green/icon.png"}
    assert "left out 4 files that could not be decoded" in result.stderr


@pytest.mark.parametrize("max_pixels", [0, 178_956_971])  # past Pillow's own refusal (2 x MAX_IMAGE_PIXELS): never in effect
def test_a_pixel_limit_that_cannot_take_effect_is_refused_before_any_file_is_read(tmp_path, max_pixels):
    make_folder(tmp_path, per_class=2)
    split = split_folder(index_folder(tmp_path), 0.5, 123)
    with pytest.raises(ConfigError, match=r"max_pixels must be from 1 to 178,956,970 \(the most Pillow opens\)"):
        examine(split, max_pixels=max_pixels)
