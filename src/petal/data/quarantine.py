"""Acting on findings without deleting anything: move flagged files to a quarantine folder with a manifest
(`petal data --label-issues --move-to`), move them back (`--undo-move`), and read the list of files
`petal train --exclude` leaves out of the split. No TensorFlow: the light install can undo a move.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Sequence

from petal import atomic
from petal.data.doctor import KINDS, Finding
from petal.errors import ConfigError, PetalError

log = logging.getLogger(__name__)

EXCLUDE_KINDS = ("label-issue", "outlier")  # what --move-to moves and --exclude leaves out unless told otherwise
MANIFEST_FORMAT = 1


def move_flagged(findings: Iterable[Finding], root: str | os.PathLike, quarantine: str | os.PathLike,
                 kinds: Sequence[str] = EXCLUDE_KINDS) -> tuple[Path, int]:
    """Move (never delete) every file with a finding of `kinds` from `root` to `quarantine`, keeping its path
    relative to `root` (so its class folder); returns (manifest path, files moved). The manifest, written
    before the first move, is what `undo_move` reads.

    Raises:
        ConfigError: an unknown kind, or a quarantine folder inside `root` (it would be read as a class).
        PetalError: a file of that name is already in the quarantine (nothing is overwritten or moved).
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ConfigError(f"kinds must be among {', '.join(KINDS)}. Received: {', '.join(unknown)}")
    root, quarantine = Path(root).resolve(), Path(quarantine).resolve()
    if quarantine == root or root in quarantine.parents:
        raise ConfigError(f"{quarantine}: the quarantine folder must be outside the data folder {root} (inside it, it would be read as a class)")
    kinds_of: dict[str, list[str]] = {}
    for f in findings:
        if f.kind in kinds:
            kinds_of.setdefault(f.path, []).append(f.kind)
    entries = [{"path": p, "kinds": sorted(set(k))} for p, k in sorted(kinds_of.items()) if (root / p).is_file()]
    taken = [e["path"] for e in entries if (quarantine / e["path"]).exists()]
    if taken:
        raise PetalError(f"{quarantine}: already holds {', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}; choose another folder")
    manifest = quarantine / f"manifest-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    atomic.write_json(manifest, {"format": MANIFEST_FORMAT, "root": str(root), "quarantine": str(quarantine),
                                 "undo": f"petal data --undo-move {manifest}", "moved": entries})
    for entry in entries:
        target = quarantine / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(root / entry["path"], target)
    log.info("moved %d files to %s; undo: petal data --undo-move %s", len(entries), quarantine, manifest)
    return manifest, len(entries)


def undo_move(manifest: str | os.PathLike) -> tuple[int, list[str]]:
    """Move the files `move_flagged` recorded in `manifest` back where they were; returns (files restored,
    problems). A file whose old place is taken again is left in the quarantine and named in the problems;
    one already back (or never moved) is skipped.

    Raises:
        ConfigError: `manifest` is not a petal quarantine manifest.
    """
    try:
        record = json.loads(Path(manifest).read_text())
        root, quarantine, entries = Path(record["root"]), Path(record["quarantine"]), record["moved"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{manifest}: not a manifest written by petal data --move-to ({exc})") from None
    restored, problems = 0, []
    for entry in entries:
        source, target = quarantine / entry["path"], root / entry["path"]
        if not source.exists():
            if not target.exists():
                problems.append(f"{entry['path']}: in neither {quarantine} nor {root}")
            continue
        if target.exists():
            problems.append(f"{entry['path']}: {target} exists again; left in {quarantine}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
        restored += 1
    return restored, problems


def read_exclusion_list(source: str | os.PathLike, root: str | os.PathLike) -> tuple[str, ...]:
    """The paths (relative to `root`, sorted) that `source` lists for `petal train --exclude`: a `petal data
    --json` report (the paths of its EXCLUDE_KINDS findings), a JSON list of paths, or a text file with one
    path per line (blank lines and lines starting with # ignored). Absolute paths inside `root` are made relative.

    Raises:
        ConfigError: the file cannot be read or is JSON of another shape.
    """
    try:
        text = Path(source).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the exclusion list ({exc.strerror or exc})") from None
    if text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{source}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("findings"), list):
            entries = [f["path"] for f in data["findings"] if isinstance(f, dict) and f.get("kind") in EXCLUDE_KINDS]
        elif isinstance(data, list) and all(isinstance(p, str) for p in data):
            entries = data
        else:
            raise ConfigError(f"{source}: expected the JSON of `petal data --json` or a JSON list of paths")
    else:
        entries = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    root = Path(root).resolve()
    relative = []
    for entry in entries:
        path = Path(entry)
        # an absolute path, or one relative to the working folder, inside `root`
        if (path.is_absolute() or not (root / path).exists()) and root in path.resolve().parents:
            entry = os.path.relpath(path.resolve(), root)
        relative.append(entry)
    return tuple(sorted(set(relative)))
