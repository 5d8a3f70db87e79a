"""The `petal` command: parses arguments (petal.cli.parser), calls the API (petal.cli.commands,
petal.cli.data_command), turns PetalError into one line and exit 2.

Heavy modules are imported inside each command, so `petal predict model.tflite` never loads
TensorFlow and a missing extra is reported in one line.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

from petal.cli.common import EXIT_ERROR
from petal.errors import PetalError, printable

M_ARENA_MAX = -8  # glibc's malloc.h


def malloc_arenas() -> int:
    """One arena per core (at least 2): what petal's processes allocate from (see limit_malloc_arenas)."""
    return max(2, os.cpu_count() or 1)


def limit_malloc_arenas() -> bool:
    """Cap glibc's malloc at malloc_arenas() arenas for this process, unless MALLOC_ARENA_MAX is set.

    glibc gives threads that allocate at once arenas of their own, up to 8 per core, and keeps what they
    free for reuse by the same arena; decoding threads, tf.data and TensorFlow's pools spread a run over
    many arenas. With one per core (2 here), training the default model from a cold cache peaked at 1.33 GB
    instead of 1.44, at the same speed (docs/BENCHMARKS.md, "Two malloc arenas"); no more threads than
    cores run at once, so they rarely wait for each other's arena. Arenas made before the call are kept: call
    it before threads start. The processes petal starts (a local Ray cluster's workers) get the same cap
    through MALLOC_ARENA_MAX. Returns whether the cap was set (False off glibc, or when the user chose)."""
    if "MALLOC_ARENA_MAX" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    arenas = malloc_arenas()
    os.environ["MALLOC_ARENA_MAX"] = str(arenas)  # read by glibc when a child process starts
    return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas))


class OneLineFormatter(logging.Formatter):
    """Every log record on one line, as every error is: the file and class names it holds may carry control characters."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def main(argv: list[str] | None = None) -> int:
    limit_malloc_arenas()  # before any thread allocates
    from petal.cli.parser import build_parser  # here: the parser imports every command module
    from petal.scale.cluster import stop_orphans

    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a class or file name the console cannot encode is escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported
    for chatty in ("absl", "tensorflow"):  # SavedModel notices ("Assets written to ...") during export
        logging.getLogger(chatty).setLevel(logging.ERROR)
    stop_orphans()  # Ray processes a killed petal command left behind; one line when there are any
    try:
        return args.handler(args) or 0
    except PetalError as exc:
        print(printable(f"petal: error: {exc}"), file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `petal ... | head`: the reader left; Python's documented way to end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # the file system refused (a read-only or full folder, a file where a folder goes): one line naming it
        where = exc.filename if exc.filename is not None else ""
        print(printable(f"petal: error: {where}: {exc.strerror or exc}" if where else f"petal: error: {exc}"), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:  # a command may say how to go on (petal train: its --resume command)
        print(printable("petal: interrupted" + (f"; {exc}" if str(exc) else "")), file=sys.stderr)
        return 130
