"""Download TensorFlow's flower_photos archive (about 220 MB) and check what was extracted.

    python scripts/fetch_flower_photos.py [TARGET_DIR]     # default: ./flower_photos

Needs internet access; petal's tests and demo never do. After extracting it checks the class
names and the number of photos per class against the counts the tutorial reports (3,670 in all).
"""

import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
EXPECTED = {"daisy": 633, "dandelion": 898, "roses": 641, "sunflowers": 699, "tulips": 799}


def check(folder: Path) -> list[str]:
    """Problems with an extracted flower_photos folder; empty when it is complete."""
    found = {p.name: sum(1 for _ in p.glob("*.jpg")) for p in folder.iterdir() if p.is_dir()}
    problems = [f"missing class folder {name}" for name in EXPECTED if name not in found]
    problems += [f"unexpected folder {name}" for name in found if name not in EXPECTED]
    problems += [f"{name}: {found[name]} photos, expected {n}" for name, n in EXPECTED.items() if found.get(name, n) != n]
    return problems


def main():
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "flower_photos").resolve()
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            archive = Path(tmp) / "flower_photos.tgz"
            print(f"downloading {URL}")
            urllib.request.urlretrieve(URL, archive)
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            (Path(tmp) / "flower_photos").rename(target)  # appears whole, or not at all
    problems = check(target)
    if problems:
        raise SystemExit(f"{target}: not the flower_photos archive as expected: " + "; ".join(problems))
    print(f"{target}: 3,670 photos in 5 classes, as expected")


if __name__ == "__main__":
    main()
