"""PNG figures of a run: image grids and training curves.

Uses matplotlib's object API with the Agg canvas, never pyplot, so importing petal changes no
global backend and works on machines without a display.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from petal import atomic


def save_image_grid(images: Sequence[np.ndarray], titles: Sequence[str], path: str | os.PathLike, columns: int = 3) -> None:
    """A grid of uint8 (or 0..255 float) images with a title over each, like the tutorial's 3x3 plots."""
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(3.2 * columns, 3.4 * rows))
    for i, (image, title) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


def save_curves(history: dict[str, list[float]], path: str | os.PathLike, title: str = "") -> None:
    """Training and validation accuracy (left) and loss (right) per epoch, as in the tutorial."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig = Figure(figsize=(10, 4))
    for column, (metric, label) in enumerate((("accuracy", "Accuracy"), ("loss", "Loss"))):
        ax = fig.add_subplot(1, 2, column + 1)
        ax.plot(epochs, history[metric], marker="o", markersize=3, label=f"Training {label}")
        ax.plot(epochs, history[f"val_{metric}"], marker="o", markersize=3, label=f"Validation {label}")
        ax.set_xlabel("epoch")
        ax.set_title(f"Training and Validation {label}")
        ax.legend(loc="lower right" if metric == "accuracy" else "upper right")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
