"""Keep what native code (TensorFlow, the LiteRT converter and interpreter) prints to fd 2 out of
the user's way, without losing it when something fails."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile


@contextlib.contextmanager
def native_log_silenced():
    """Hide what native code prints to fd 2 while TensorFlow or LiteRT loads or converts (oneDNN, absl, MLIR
    and XNNPACK notices, which no environment variable silences in TF 2.21); replay it on failure. What Python
    writes to sys.stderr meanwhile (progress bars, petal's log lines) still reaches the terminal: sys.stderr and
    the logging handlers that write to it point at a copy of the real fd 2 for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    original = sys.stderr
    visible = open(saved, "w", buffering=1, encoding=getattr(original, "encoding", None) or "utf-8", errors="backslashreplace",
                   closefd=False)
    handlers = [h for h in logging.root.handlers if isinstance(h, logging.StreamHandler) and h.stream is original]
    failed = False
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        sys.stderr = visible
        for handler in handlers:
            handler.setStream(visible)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            visible.flush()
            for handler in handlers:
                handler.setStream(original)
            sys.stderr = original
            os.dup2(saved, 2)
            visible.close()
            os.close(saved)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))
