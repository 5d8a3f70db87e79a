"""Read a training history the way the tutorial reads its curves, and say it in one plain sentence."""

from __future__ import annotations

import numpy as np

# Validation loss must rise this much above its minimum before we call it overfitting,
# so that epoch-to-epoch noise on a small validation set is not reported as a trend.
RISE_TOLERANCE = 0.05


def diagnose(history: dict[str, list[float]]) -> dict:
    """Return train-val gap, the epoch of lowest validation loss and a verdict (epochs count from 1). The
    epoch of best validation accuracy (what --early-stopping keeps, checkpoint/state.json's best_epoch) is
    named apart: on small validation sets the two often differ."""
    loss, val_loss = np.asarray(history["loss"]), np.asarray(history["val_loss"])
    acc, val_acc = np.asarray(history["accuracy"]), np.asarray(history["val_accuracy"])
    epochs = len(loss)
    best = int(np.argmin(val_loss))  # 0-based
    gap = float(acc[-1] - val_acc[-1])
    rose = val_loss[-1] > val_loss[best] * (1 + RISE_TOLERANCE)
    # below its value there at any later epoch: a pretrained run's fine-tuning epochs (augmented images, a warm-up)
    # end above the head's training loss (un-augmented embeddings), after the head overfitted
    train_fell = best < epochs - 1 and loss[best + 1:].min() < loss[best]
    if best < epochs - 1 and rose and train_fell:
        verdict = (
            f"overfitting from epoch {best + 2}: validation loss rose while training loss fell "
            f"(lowest validation loss {val_loss[best]:.3f} at epoch {best + 1}, {val_loss[-1]:.3f} at the end; "
            f"train-validation accuracy gap {gap:+.3f})"
        )
        status = "overfitting"
    elif best < epochs - 1 and rose:
        verdict = (
            f"got worse from epoch {best + 2}: validation loss rose and training loss did not fall "
            f"(lowest validation loss {val_loss[best]:.3f} at epoch {best + 1}, {val_loss[-1]:.3f} at the end): not "
            f"overfitting; a learning rate too high for the last epochs, or too few of them (train-validation accuracy gap {gap:+.3f})"
        )
        status = "worse"
    elif best == epochs - 1:
        verdict = (
            f"still improving: validation loss was lowest at the last epoch ({epochs}); more epochs may help "
            f"(train-validation accuracy gap {gap:+.3f})"
        )
        status = "improving"
    else:
        verdict = (
            f"no clear overfitting: validation loss is within {RISE_TOLERANCE:.0%} of its lowest "
            f"(epoch {best + 1}); train-validation accuracy gap {gap:+.3f}"
        )
        status = "plateau"
    return {
        "status": status,
        "verdict": verdict,
        "epochs": epochs,
        "lowest_val_loss_epoch": best + 1,
        "lowest_val_loss": float(val_loss[best]),
        "best_val_accuracy_epoch": int(np.argmax(val_acc)) + 1,
        "best_val_accuracy": float(val_acc.max()),
        "final_accuracy": float(acc[-1]),
        "final_val_accuracy": float(val_acc[-1]),
        "train_val_accuracy_gap": gap,
    }
