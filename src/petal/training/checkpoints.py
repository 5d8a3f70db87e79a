"""After every epoch: a checkpoint (model and optimizer state), the history row, then state.json, which
commits them, so a killed run resumes from its last finished epoch; early stopping; the whole run's ETA and
its wall time across the processes that trained it (RunClock)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import keras

from petal.run_folder import RunFolder, load_keras_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunClock:
    """A run's wall time across the processes that trained it (`petal train`, then each `--resume`): what the
    earlier ones had spent by their last checkpoint (state.json's `seconds`), plus this process's since `started`
    (time.time(), so a multi-worker chief on the same machine reads the same clock). The time an interrupted
    process spent after its last checkpoint is lost with the work it did."""

    earlier: float
    started: float

    @classmethod
    def start(cls, run: RunFolder) -> RunClock:
        """Read before this process writes any checkpoint."""
        return cls(float(run.state().get("seconds", 0.0)), time.time())

    def seconds(self) -> float:
        return self.earlier + time.time() - self.started


class RunRecorder(keras.callbacks.Callback):
    """After each epoch: checkpoint (and best.keras when val accuracy improved), then history, then
    state.json, which commits them. With `patience`, stops after that many epochs without improvement."""

    def __init__(self, run: RunFolder, patience: int = 0, total_epochs: int | None = None, clock: RunClock | None = None):
        super().__init__()
        self.run = run
        self.clock = clock or RunClock.start(run)
        self.patience = patience
        self.total_epochs = total_epochs  # for the whole run's ETA after each epoch
        self.started = time.perf_counter()
        self.fit_epoch_seconds: list[float] = []

    def best_model(self) -> keras.Model:
        best = self.run.state()
        log.info("keeping the weights of epoch %d (val accuracy %.4f)", best["best_epoch"], best["best_val_accuracy"])
        return load_keras_model(self.run.checkpoint_dir / "best.keras")

    def on_train_begin(self, logs=None):
        self.fit_epoch_seconds = []  # this fit's epochs: its first one also traces the graph

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        self.record_epochs(self.model, [logs or {}], seconds, first_epoch=epoch)
        self.fit_epoch_seconds.append(seconds)
        if self.total_epochs and epoch + 1 < self.total_epochs:
            ends = ""
            if len(self.fit_epoch_seconds) > 1:  # the first epoch's tracing would double the estimate
                left = (self.total_epochs - epoch - 1) * sum(self.fit_epoch_seconds[1:]) / (len(self.fit_epoch_seconds) - 1)
                ends = f"; the run ends in about {f'{left / 60:.0f} min' if left >= 90 else f'{left:.0f} s'}"
            log.info("epoch %d of %d: val accuracy %.4f, %.0f s%s", epoch + 1, self.total_epochs,
                     (logs or {}).get("val_accuracy", float("nan")), seconds, ends)

    def record_epochs(self, model: keras.Model, epochs: list[dict], seconds: float, first_epoch: int = 0) -> None:
        """Append epochs first_epoch+1.. to the history (`seconds` each) and checkpoint `model` as the last
        of them; only that last epoch can become the best one, as only its weights are kept."""
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
        for number, logs in enumerate(epochs, start=first_epoch + 1):
            rows.append({"epoch": number, **{k: float(v) for k, v in sorted(logs.items())}, "seconds": round(seconds, 3)})
        self.run.write_history(rows)
        self.run.write_state({"epochs_done": last, "model": name, "best_epoch": best_epoch, "best_val_accuracy": best_value,
                              "seconds": round(self.clock.seconds(), 1)})
        self.run.remove_old_checkpoints(keep=name)
        if self.patience and last - best_epoch >= self.patience:
            log.info("early stopping after epoch %d: no better val accuracy for %d epochs", last, self.patience)
            model.stop_training = True
