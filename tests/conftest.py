import fcntl
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The `petal` command of this environment, for tests that run the CLI in a new process as a user would.
PETAL = str(Path(sys.executable).parent / "petal")

# Colour-coded classes: easy enough that a CNN learns them in an epoch or two.
CLASS_COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (210, 40, 40)}


def make_image(path: Path, colour, size=(40, 52), seed=0, fmt=None) -> Path:
    """A noisy image of one dominant colour, written in the format the suffix (or `fmt`) names."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-40, 40, size=(size[1], size[0], 3))
    pixels = np.clip(np.asarray(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_folder(root: Path, per_class: int = 10, suffixes=(".jpg", ".png")) -> Path:
    for c, (name, colour) in enumerate(CLASS_COLOURS.items()):
        for i in range(per_class):
            make_image(root / name / f"img_{i:03d}{suffixes[i % len(suffixes)]}", colour, seed=100 * c + i)
    return root


def exported_tiny_run(root: Path, export_config=None) -> Path:
    """The `tutorial` model trained for 2 epochs at 32x32 on generated colour photos and exported
    (float32 unless `export_config` says otherwise); returns the run folder."""
    from petal.config import ExportConfig, TrainConfig
    from petal.training.export import export_litert
    from petal.training.loop import train

    data = make_folder(root / "photos", per_class=12)
    config = TrainConfig(str(data), model="tutorial", epochs=2, batch_size=8, image_size=(32, 32), cache_dir=str(root / "cache"))
    run = train(config, root / "run", verbose=0).run.path
    export_litert(run, export_config or ExportConfig(variants=("float32",)))
    return run


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "photos")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own decode cache, never the user's."""
    monkeypatch.setenv("PETAL_CACHE_DIR", str(tmp_path / "decode-cache"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")


# Files whose tests start local Ray clusters: they check and clean the sessions folder petal's clusters share
# (petal.scale.cluster.SESSIONS_ROOT), so under pytest-xdist (Makefile) one such file runs at a time.
RAY_FILES = {"test_batch.py", "test_cluster.py", "test_distributed.py", "test_json_output.py"}


@pytest.fixture(scope="module", autouse=True)
def one_ray_file_at_a_time(request, tmp_path_factory):
    if request.path.name not in RAY_FILES:
        yield
        return
    lock = tmp_path_factory.getbasetemp().parent / "ray-files.lock"  # shared by the xdist workers of one run
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CI") == "true" and os.environ.get("PETAL_SLOW_TESTS") != "1":
        skip = pytest.mark.skip(reason="slow; set PETAL_SLOW_TESTS=1 to run under CI")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
