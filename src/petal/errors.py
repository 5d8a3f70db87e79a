"""Exceptions petal raises. The CLI turns each into one line and a non-zero exit."""

from __future__ import annotations


class PetalError(Exception):
    """Base class: anything the user can fix by changing input, flags or environment."""


class DataError(PetalError):
    """The image folder cannot be used as given (layout, no images, a single class)."""


class ImageError(PetalError):
    """One image file cannot be decoded; carries the path so messages name the file, and a `kind`
    ("empty", "unreadable", "special-file", "not-an-image", "unsupported-format", "too-large", "corrupt") so callers
    such as the data doctor can sort failures without parsing the message."""

    def __init__(self, path: str, reason: str, kind: str = "corrupt"):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.kind = kind


class ConfigError(PetalError):
    """A setting is out of range or names something that does not exist."""


class RunFolderError(PetalError):
    """A run folder is missing, incomplete, or would be overwritten."""


class DivergedError(PetalError):
    """Training's loss stopped being a number: the weights are lost (a learning rate too high, most often)."""


class FolderInUseError(PetalError):
    """Another petal process is writing the same run or output folder."""


class ExportError(PetalError):
    """Conversion failed or the exported model disagrees with the Keras model."""


class MissingDependencyError(PetalError):
    """An optional extra is not installed; the message says which pip command adds it."""

    def __init__(self, feature: str, extra: str, module: str):
        super().__init__(
            f"{feature} needs {module}, which is not installed: pip install 'petal-vision[{extra}]'"
        )


class WeightsError(PetalError):
    """Pretrained weights are neither given, cached nor downloadable, or the file given does not fit."""


class DiskFullError(PetalError):
    """A file could not be written for lack of space (or over the file-size limit); names the file and
    what is free, so the user can free space and run the same command again (with --resume for training)."""


class OutOfMemoryError(PetalError):
    """TensorFlow could not allocate a tensor (tf.errors.ResourceExhaustedError); says which settings set its size."""


class ModelFileError(PetalError):
    """A model file (`.keras` or `.tflite`) cannot be loaded, or what it says about itself (labels,
    input size) disagrees with the model inside it; names the file."""


# C0 and C1 controls, and the line and paragraph separators (U+2028/9) that terminals and str.splitlines break at
_CONTROL = ({c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
            | {0x2028: "\\u2028", 0x2029: "\\u2029"})


def printable(text: str) -> str:
    """`text` with its control characters escaped (a newline as \\n, ESC as \\x1b): a file name from disk may hold
    them, and one message is one line whatever it names. Other characters are left to the stream's encoding."""
    return text.translate(_CONTROL)


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """"1 file", "2 files", "0 label issues": a count with its noun in the number it takes."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
