"""Keep what native code (TensorFlow, the LiteRT converter and interpreter) prints to fd 2 out of
the user's way, without losing it when something fails."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def native_log_silenced():
    """Hide what native code prints to fd 2 while TensorFlow or LiteRT loads (oneDNN, absl and
    XNNPACK notices, which no environment variable silences in TF 2.21); replay it on failure."""
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))
