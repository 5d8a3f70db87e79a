"""After every epoch: a checkpoint (model and optimizer state), the history row, then state.json, which
commits them, so a killed run resumes from its last finished epoch; early stopping; the whole run's ETA; and
its wall time (RunClock) and each stage's (StageTimings) across the processes that trained it."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time

import keras

from petal import atomic
from petal.errors import DivergedError, RunFolderError
from petal.run_folder import RunFolder, load_keras_model, read_json

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # how often a training process records its wall time


def _read_time_record(path) -> dict:
    """checkpoint/clock.json or checkpoint/timings.json as written; {} for a fresh run, one from before the record,
    or a damaged record (which only costs the time it held)."""
    try:
        return read_json(path) if path.exists() else {}
    except RunFolderError:
        return {}


def _write_time_record(run: RunFolder, path, values: dict) -> None:
    if not run.config_path.exists():  # before write_start: a folder --resume could not read
        return
    try:
        atomic.write_json(path, values)
    except OSError:  # a full disk: the training itself says so, in one line
        pass


class RunClock:
    """A run's wall time across the processes that trained it (`petal train`, then each `--resume`), kept in
    checkpoint/clock.json: what the earlier processes spent, plus this one's since the clock was made. While it
    runs (`with RunClock(run) as clock:`), a daemon thread rewrites the file every HEARTBEAT_S seconds once the run
    folder holds its config.json, so a killed process loses at most that much of its time."""

    def __init__(self, run: RunFolder):
        self.run = run
        self.path = run.checkpoint_dir / "clock.json"
        try:
            self.earlier = float(_read_time_record(self.path).get("seconds", 0.0))
        except (TypeError, ValueError):
            self.earlier = 0.0
        self.started = time.time()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="petal-run-clock", daemon=True)

    def seconds(self) -> float:
        return self.earlier + time.time() - self.started

    def __enter__(self) -> RunClock:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._thread.join()
        self._write()

    def _beat(self) -> None:
        while not self._stopped.wait(HEARTBEAT_S):
            self._write()

    def _write(self) -> None:
        _write_time_record(self.run, self.path, {"seconds": round(self.seconds(), 1)})


class StageTimings:
    """Wall seconds of each stage of a run (decode, embeddings, head, fine_tune, train), summed over the processes
    that trained it and kept in checkpoint/timings.json as each stage ends, an interrupted one included (SIGKILL
    loses the stage it cut short); `finish` writes them to timings.json."""

    def __init__(self, run: RunFolder):
        self.run = run
        self.path = run.checkpoint_dir / "timings.json"
        try:
            self.seconds = {str(stage): float(value) for stage, value in _read_time_record(self.path).items()}
        except (TypeError, ValueError):
            self.seconds = {}

    @contextlib.contextmanager
    def timed(self, stage: str):
        """Add the wall time of the block to the stage's seconds, and record them."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started
            _write_time_record(self.run, self.path, self.rounded())

    def rounded(self) -> dict[str, float]:
        return {stage: round(value, 3) for stage, value in self.seconds.items()}


class EpochSeconds(keras.callbacks.Callback):
    """Each epoch's wall seconds: for a fit whose epochs are recorded when it ends (the head's, on embeddings), and
    RunRecorder's own."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


class RunRecorder(EpochSeconds):
    """After each epoch: checkpoint (and best.keras when val accuracy improved), then history, then
    state.json, which commits them. With `patience`, stops after that many epochs without improvement."""

    def __init__(self, run: RunFolder, patience: int = 0, total_epochs: int | None = None, keras_prints_epochs: bool = False):
        super().__init__()
        self.run = run
        self.patience = patience
        self.total_epochs = total_epochs  # for the whole run's ETA after each epoch
        # Keras's own epoch lines (fit's verbose 1 or 2) hold the metrics: then only the ETA is logged, before the next
        # epoch's line (callbacks run before Keras's logger, so at an epoch's end it would come before that epoch's line)
        self.keras_prints_epochs = keras_prints_epochs

    def best_model(self) -> keras.Model:
        best = self.run.state()
        log.info("keeping the weights of epoch %d (val accuracy %.4f)", best["best_epoch"], best["best_val_accuracy"])
        return load_keras_model(self.run.checkpoint_dir / "best.keras")

    def on_train_begin(self, logs=None):
        self.seconds = []  # this fit's epochs: its first one also traces the graph

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if self.keras_prints_epochs and (left := self._time_left(epoch)):
            log.info("the run ends in about %s", left)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        seconds = self.seconds[-1]
        self.record_epochs(self.model, [logs or {}], [seconds], first_epoch=epoch)
        if not self.keras_prints_epochs and self.total_epochs and epoch + 1 < self.total_epochs:
            left = self._time_left(epoch + 1)
            log.info("epoch %d of %d: val accuracy %.4f, %.0f s%s", epoch + 1, self.total_epochs,
                     (logs or {}).get("val_accuracy", float("nan")), seconds, f"; the run ends in about {left}" if left else "")

    def _time_left(self, next_epoch: int) -> str | None:
        """The time epochs next_epoch.. (0-based) should take, from this fit's epochs after its first (whose
        tracing would double the estimate); None before there are two, or with none left."""
        if not self.total_epochs or next_epoch >= self.total_epochs or len(self.seconds) < 2:
            return None
        left = (self.total_epochs - next_epoch) * sum(self.seconds[1:]) / (len(self.seconds) - 1)
        return f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"

    def record_epochs(self, model: keras.Model, epochs: list[dict], seconds: list[float], first_epoch: int = 0) -> None:
        """Append epochs first_epoch+1.. to the history (their logs and wall `seconds`) and checkpoint `model` as
        the last of them; only that last epoch can become the best one, as only its weights are kept.

        Raises:
            DivergedError: an epoch's loss is NaN or infinite (nothing of it is recorded: the run folder keeps the
                last good epoch).
        """
        for number, logs in enumerate(epochs, start=first_epoch + 1):
            for key in ("loss", "val_loss"):  # validation's: weights that broke in the epoch's last step
                value = float(logs.get(key, 0.0))
                if not math.isfinite(value):
                    raise DivergedError(f"training diverged: the {key.replace('_', ' ').replace('val', 'validation')} is {value} at "
                                        f"epoch {number}, and the weights are no longer numbers; train again with a lower "
                                        f"--learning-rate (or --precision float32), into a new --out")
        last = first_epoch + len(epochs)
        name = f"epoch-{last:04d}.keras"
        self.run.save_checkpoint(model, name)
        state = self.run.state()
        best_epoch, best_value = state["best_epoch"], state["best_val_accuracy"]
        if epochs[-1].get("val_accuracy", -1.0) > best_value:
            best_epoch, best_value = last, float(epochs[-1]["val_accuracy"])
            if self.patience:
                self.run.save_checkpoint(model, "best.keras")
        rows = self.run.history_rows()[:first_epoch]
        for number, logs, took in zip(range(first_epoch + 1, last + 1), epochs, seconds, strict=True):
            rows.append({"epoch": number, **{k: float(v) for k, v in sorted(logs.items())}, "seconds": round(took, 3)})
        self.run.write_history(rows)
        self.run.write_state({"epochs_done": last, "model": name, "best_epoch": best_epoch, "best_val_accuracy": best_value})
        self.run.remove_old_checkpoints(keep=name)
        if self.patience and last - best_epoch >= self.patience:
            log.info("early stopping after epoch %d: no better val accuracy for %d epochs", last, self.patience)
            model.stop_training = True
