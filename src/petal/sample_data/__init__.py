"""A 300-photo sample of flower_photos (CC-BY 2.0, photographers credited in CREDITS.txt), for the demo."""

from importlib.resources import files
from pathlib import Path


def sample_folder() -> Path:
    return Path(str(files(__name__) / "flower_photos_sample"))
