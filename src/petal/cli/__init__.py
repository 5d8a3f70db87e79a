"""The `petal` command: parses arguments (petal.cli.parser), calls the API (petal.cli.commands,
petal.cli.data_command), turns PetalError into one line and exit 2.

Heavy modules are imported inside each command, so `petal predict model.tflite` never loads
TensorFlow and a missing extra is reported in one line.
"""

from __future__ import annotations

import logging
import os
import sys

from petal.cli.common import EXIT_ERROR
from petal.errors import PetalError, printable


def main(argv: list[str] | None = None) -> int:
    from petal.cli.parser import build_parser  # here: the parser imports every command module
    from petal.scale.cluster import stop_orphans

    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a class or file name the console cannot encode is escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
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
    except KeyboardInterrupt:
        print("petal: interrupted", file=sys.stderr)
        return 130
