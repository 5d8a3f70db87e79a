"""What every `petal` command shares: exit codes, the one-line message for a missing extra, progress bars."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys

from petal.errors import MissingDependencyError
from petal.run_folder import SCHEMA_VERSION  # every `--json` output's too (docs/schemas/COMMAND.schema.json)
from petal.runtime.native_log import native_log_silenced

EXIT_ERROR = 2  # the command could not do its job
EXIT_PARTIAL = 1  # it did, but some inputs failed (e.g. unreadable images given to predict)

# Which optional extra brings which module, for the one-line "pip install 'petal-vision[...]'" message.
EXTRAS = {"train": ("tensorflow", "keras", "matplotlib", "tqdm", "cleanlab", "sklearn"), "serve": ("starlette", "uvicorn", "multipart"),
          "scale": ("ray", "pyarrow", "psutil")}


@contextlib.contextmanager
def needs_extra(feature: str):
    """Around the imports of a command: a module of a missing extra becomes one line naming the pip
    command; TensorFlow's native start-up notices stay hidden."""
    try:
        with native_log_silenced() if "tensorflow" not in sys.modules else contextlib.nullcontext():
            yield
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        for extra, modules in EXTRAS.items():
            if missing in modules:
                raise MissingDependencyError(feature, extra, missing) from None
        raise


def require(modules, feature: str) -> None:
    """Check that optional modules are installed without importing them (Ray reads its settings when imported)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            extra = next(extra for extra, provided in EXTRAS.items() if module in provided)
            raise MissingDependencyError(feature, extra, module)


def print_json(command: str, payload: dict) -> None:
    """A command's result on stdout as one JSON object: schema_version, command, then the payload."""
    print(json.dumps({"schema_version": SCHEMA_VERSION, "command": command, **payload}, indent=2, default=str))


def progress_bar(desc: str = "decoding", unit: str = "img"):
    """The one progress helper: a tqdm bar factory `(iterable, total, desc=None, unit=None) -> iterable` (with
    rate and ETA, on stderr when it is a terminal: none in a log) for the API's `progress` arguments; `desc`/`unit` given by the API for its step
    override the defaults. None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return lambda iterable, total, desc=desc, unit=unit: tqdm(iterable, total=total, unit=unit, desc=desc, leave=False, disable=None)
