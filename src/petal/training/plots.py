"""PNG figures of a run: image grids and training curves.

Uses matplotlib's object API with the Agg canvas, never pyplot, so importing petal changes no
global backend and works on machines without a display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from petal import atomic
from petal.errors import printable


def drawable(text: str) -> str:
    """`text` as matplotlib can draw it: names that are not valid UTF-8 (kept as surrogate escapes, see
    petal.data.index) are shown escaped, e.g. '\\xff\\xfecls', instead of crashing the text renderer; control
    characters too (no font has a glyph for them), but for the newlines that break a title into lines: callers
    escape the names they put in a title (petal.errors.printable)."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "\n".join(printable(line) for line in text.split("\n"))


def save_image_grid(images: Sequence[np.ndarray], titles: Sequence[str], path: str | os.PathLike, columns: int = 3) -> None:
    """A grid of uint8 (or 0..255 float) images with a title over each, like the tutorial's 3x3 plots."""
    _save(image_grid(images, titles, columns), path)


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], columns: int = 3) -> Figure:
    """The figure of save_image_grid. Constrained layout makes room for titles of two lines, which tight_layout let
    run into the row above."""
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(3.2 * columns, 3.4 * rows), layout="constrained")
    for i, (image, title) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
        ax.set_title(drawable(title), fontsize=11)
        ax.axis("off")
    return fig


def save_curves(history: dict[str, list[float]], path: str | os.PathLike, title: str = "") -> None:
    """Training and validation accuracy (left) and loss (right) per epoch, as in the tutorial."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig = Figure(figsize=(10, 4))
    for column, (metric, label) in enumerate((("accuracy", "Accuracy"), ("loss", "Loss"))):
        ax = fig.add_subplot(1, 2, column + 1)
        ax.plot(epochs, history[metric], marker="o", markersize=3, label=f"Training {label}")
        ax.plot(epochs, history[f"val_{metric}"], marker="o", markersize=3, label=f"Validation {label}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"Training and Validation {label}")
        ax.legend(loc="lower right" if metric == "accuracy" else "upper right")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(drawable(title))
    fig.tight_layout()
    _save(fig, path)


def save_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """Counts (left) and each row divided by its total, i.e. recall per true class (right)."""
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    size = 2.2 + 0.55 * len(class_names)
    fig = Figure(figsize=(2 * size + 1, size))
    for column, (values, title, fmt) in enumerate(((confusion, "Counts", "d"), (normalised, "Row-normalised", ".2f"))):
        ax = fig.add_subplot(1, 2, column + 1)
        ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=8,
                    color="white" if normalised[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(class_names)), [drawable(n) for n in class_names], rotation=45, ha="right")
        ax.set_yticks(range(len(class_names)), [drawable(n) for n in class_names])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def save_reliability(bins: Sequence[dict], ece: float, path: str | os.PathLike) -> None:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot(1, 1, 1)
    used = [b for b in bins if b["count"]]
    width = bins[0]["upper"] - bins[0]["lower"] if bins else 0.1
    ax.bar([b["lower"] for b in used], [b["accuracy"] for b in used], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (expected calibration error {ece:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Figure, path: str | os.PathLike) -> None:
    """PNG for charts; JPEG (quality 85, about a sixth of the PNG) when `path` ends in .jpg: photo grids."""
    FigureCanvasAgg(fig)
    photo = Path(path).suffix.lower() in (".jpg", ".jpeg")
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="jpeg" if photo else "png", **({"pil_kwargs": {"quality": 85}} if photo else {}))
