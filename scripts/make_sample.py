"""Build the flower sample that petal ships (src/petal/sample_data/flower_photos_sample).

    python scripts/make_sample.py ../shared/datasets/flower_photos

Takes PER_CLASS photos of each class at random (seed 0), scales each so its longer side is at most
MAX_SIDE pixels, re-encodes it as JPEG and copies its photographer's credit line from LICENSE.txt.
Every photo is CC-BY 2.0; the credit file lists what was changed (scaled and re-encoded).
"""

import random
import sys
from pathlib import Path

from PIL import Image, ImageOps

PER_CLASS = 60
MAX_SIDE = 200
QUALITY = 85

source = Path(sys.argv[1])
target = Path(__file__).resolve().parents[1] / "src" / "petal" / "sample_data" / "flower_photos_sample"
credits = {}
license_lines = (source / "LICENSE.txt").read_text(encoding="utf-8").splitlines()
for line in license_lines:
    if " CC-BY by " in line:
        credits[line.split(" ", 1)[0]] = line
rng = random.Random(0)
chosen = []
for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
    files = [f for f in sorted(class_dir.glob("*.jpg")) if f"{class_dir.name}/{f.name}" in credits]  # credited only
    chosen += [f"{class_dir.name}/{f.name}" for f in rng.sample(files, PER_CLASS)]
for rel in chosen:
    img = ImageOps.exif_transpose(Image.open(source / rel)).convert("RGB")
    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    out = target / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, "JPEG", quality=QUALITY)
header = license_lines[:3] + [
    "",
    f"A sample of {len(chosen)} photos from TensorFlow's flower_photos archive, {PER_CLASS} per class.",
    f"Each photo was scaled to at most {MAX_SIDE} pixels on its longer side and re-encoded as JPEG (quality {QUALITY}).",
    "",
]
(target.parent / "CREDITS.txt").write_text("\n".join(header + [credits[rel] for rel in chosen]) + "\n", encoding="utf-8")
print(f"wrote {len(chosen)} photos to {target}")
