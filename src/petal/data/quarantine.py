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
from typing import Iterable, NamedTuple, Sequence

from petal import atomic
from petal.data.doctor import KINDS, Finding
from petal.data.index import is_inside, resolved
from petal.errors import ConfigError, PetalError

log = logging.getLogger(__name__)

EXCLUDE_KINDS = ("label-issue", "outlier")  # what --move-to moves and --exclude leaves out unless told otherwise
MANIFEST_FORMAT = 1


def check_quarantine(root: str | os.PathLike, quarantine: str | os.PathLike, kinds: Sequence[str]) -> tuple[Path, Path]:
    """(root, quarantine) resolved, once `kinds` are known finding kinds and `quarantine` a folder (or none yet)
    outside `root`. Raises ConfigError."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ConfigError(f"kinds must be among {', '.join(KINDS)}. Received: {', '.join(unknown) or 'none'}")
    root, quarantine = resolved(root), resolved(quarantine)
    existing = next(p for p in (quarantine, *quarantine.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{quarantine}: cannot be a folder: {existing} is a file")
    if is_inside(quarantine, root):
        raise ConfigError(f"{quarantine}: the quarantine folder must be outside the data folder {root} (inside it, it would be read as a class)")
    if quarantine.exists() and not quarantine.is_dir():
        raise ConfigError(f"{quarantine}: is a file; --move-to takes a folder")
    return root, quarantine


def move_flagged(findings: Iterable[Finding], root: str | os.PathLike, quarantine: str | os.PathLike,
                 kinds: Sequence[str] = EXCLUDE_KINDS) -> tuple[Path, int]:
    """Move (never delete) every file with a finding of `kinds` from `root` to `quarantine`, keeping its path
    relative to `root` (so its class folder); returns (manifest path, files moved). The manifest, written
    before the first move, is what `undo_move` reads.

    Raises:
        ConfigError: an unknown kind, or a quarantine folder inside `root` (it would be read as a class).
        PetalError: a file of that name is already in the quarantine (nothing is overwritten or moved).
    """
    root, quarantine = check_quarantine(root, quarantine, kinds)
    kinds_of: dict[str, list[str]] = {}
    for f in findings:
        if f.kind in kinds:
            kinds_of.setdefault(f.path, []).append(f.kind)
    # a broken or looping link (an `unreadable` finding) is moved as the link it is
    entries = [{"path": p, "kinds": sorted(set(k))} for p, k in sorted(kinds_of.items())
               if (root / p).is_file() or (root / p).is_symlink()]
    taken = [e["path"] for e in entries if os.path.lexists(quarantine / e["path"])]
    if taken:
        raise PetalError(f"{quarantine}: already holds {', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}; choose another folder")
    locked = sorted({str((root / e["path"]).parent) for e in entries if not os.access((root / e["path"]).parent, os.W_OK | os.X_OK)})
    if locked:  # a file cannot leave a folder it cannot be unlinked from: refuse before anything moves
        raise PetalError(f"{locked[0]}: not writable, so its flagged files cannot be moved out; nothing was moved")
    manifest = quarantine / f"manifest-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    try:
        atomic.write_json(manifest, {"format": MANIFEST_FORMAT, "root": str(root), "quarantine": str(quarantine),
                                     "undo": f"petal data --undo-move {manifest}", "moved": entries})
    except OSError as exc:
        raise PetalError(f"{quarantine}: cannot write the manifest there ({exc.strerror or exc}); nothing was moved") from None
    for entry in entries:
        target = quarantine / entry["path"]
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(root / entry["path"], target)
        except OSError as exc:
            raise PetalError(f"{root / entry['path']}: cannot move it to {target} ({exc.strerror or exc}); the files before it "
                             f"were moved: petal data --undo-move {manifest} puts them back") from None
    return manifest, len(entries)


class UndoResult(NamedTuple):
    """What `undo_move` did: files moved back, files found back in place already (an undo run twice), and one
    line per file left where it was."""

    restored: int
    already_back: int
    problems: list[str]


def undo_move(manifest: str | os.PathLike) -> UndoResult:
    """Move the files `move_flagged` recorded in `manifest` back where they were. A file whose old place is
    taken again is left in the quarantine and named in the problems; one already back is counted and skipped.

    The files are taken from the manifest's own folder, wherever the quarantine has been moved.

    Raises:
        ConfigError: `manifest` is not a petal quarantine manifest, or its data folder is gone.
    """
    try:
        record = json.loads(Path(manifest).read_text())
        if record["format"] != MANIFEST_FORMAT or not all(isinstance(record[k], str) and Path(record[k]).is_absolute() for k in ("root", "quarantine")):
            raise ValueError(f"format {MANIFEST_FORMAT} with absolute root and quarantine folders expected")
        # the files are where the manifest is (a quarantine may be renamed or moved as a whole); its "quarantine"
        # field only says where it was made, and is never a reason to take files from anywhere else
        root, quarantine, entries = Path(record["root"]), Path(manifest).resolve().parent, record["moved"]
        paths = [entry["path"] for entry in entries]
        if not all(isinstance(p, str) and Path(p).parts and not Path(p).is_absolute() and ".." not in Path(p).parts for p in paths):
            raise ValueError("every moved path must be a file's path inside the data folder")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ConfigError(f"{manifest}: not a manifest written by petal data --move-to ({type(exc).__name__}: {exc})") from None
    if not root.is_dir():
        raise ConfigError(f"{manifest}: its data folder {root} is no longer there; nothing was moved back")
    restored, already_back, problems = 0, 0, []
    for path in paths:
        source, target = quarantine / path, root / path
        if not os.path.lexists(source):  # lexists: a moved link may point nowhere
            if os.path.lexists(target):
                already_back += 1
            else:
                problems.append(f"{path}: in neither {quarantine} nor {root}")
            continue
        if os.path.lexists(target):
            problems.append(f"{path}: {target} exists again; left in {quarantine}")
            continue
        if target.parent.exists() and not target.parent.is_dir():
            problems.append(f"{path}: its class folder {target.parent} is a file now; left in {quarantine}")
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
        except OSError as exc:  # e.g. its class folder became a file: name it, put the others back
            problems.append(f"{path}: cannot move it back to {target} ({exc.strerror or exc}); left in {quarantine}")
            continue
        restored += 1
    return UndoResult(restored, already_back, problems)


def read_exclusion_list(source: str | os.PathLike, root: str | os.PathLike) -> tuple[str, ...]:
    """The paths (relative to `root`, sorted) that `source` lists for `petal train --exclude`: a `petal data
    --label-issues --json` report (the paths of its EXCLUDE_KINDS findings), a JSON list of paths, or a text file with one
    path per line (blank lines and lines starting with # ignored). Absolute paths inside `root` are made relative.

    Raises:
        ConfigError: the file cannot be read, is JSON of another shape, or a report made without --label-issues.
    """
    try:
        text = Path(source).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the exclusion list ({exc.strerror or exc})") from None
    if text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"{source}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("findings"), list):
            if "label_issues" not in data:  # a plain doctor report: nothing in it is a label issue or an outlier
                raise ConfigError(f"{source}: a `petal data --json` report made without --label-issues lists no "
                                  f"{' or '.join(EXCLUDE_KINDS)} findings to exclude; make it with --label-issues")
            if isinstance(data.get("root"), str) and Path(data["root"]).resolve() != Path(root).resolve():
                raise ConfigError(f"{source}: a report on {data['root']}, not on {root}; its paths name other photos")
            entries = [f.get("path") for f in data["findings"] if isinstance(f, dict) and f.get("kind") in EXCLUDE_KINDS]
            if not all(isinstance(p, str) for p in entries):
                raise ConfigError(f"{source}: a finding's path is not a string")
        elif isinstance(data, list) and all(isinstance(p, str) for p in data):
            entries = data
        else:
            raise ConfigError(f"{source}: expected the JSON of `petal data --json` or a JSON list of paths")
    else:
        entries = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    roots = (Path(os.path.abspath(root)), Path(root).resolve())  # the folder as named, and where it really is
    relative = []
    for entry in entries:
        # an absolute path, or one relative to the working folder, inside `root`; a linked photo is excluded
        # by its own name, not by the file it points to: the entry's own links are not followed
        path = Path(os.path.abspath(entry))
        inside = [r for r in roots if r in path.parents]
        if (Path(entry).is_absolute() or not (roots[0] / entry).exists()) and inside:
            entry = os.path.relpath(path, inside[0])
        relative.append(entry)
    return tuple(sorted(set(relative)))
