"""petal: TensorFlow's image-classification tutorial as a tool.

    import petal
    folder = petal.index_folder("flower_photos")              # Keras's file order
    split = petal.split_folder(folder, val_split=0.2, seed=123) # the tutorial's split
    config = petal.TrainConfig.for_model("flower_photos", "petal-resnet")  # the model's recipe
    result = petal.train(config, "runs/flowers")
    petal.export_litert("runs/flowers")                              # every variant, behind the parity gate
    for p in petal.Predictor.load("runs/flowers/export/model-int8.tflite").predict(["rose.jpg"]):
        print(p.sentence())

Names are imported on first use, so `petal.Predictor` on a `.tflite` never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

__version__ = "0.1.0"

_EXPORTS = {
    "decode_image": "petal.data.decode",
    "index_folder": "petal.data.index",
    "split_folder": "petal.data.split",
    "TrainConfig": "petal.config",
    "ExportConfig": "petal.config",
    "RunFolder": "petal.run_folder",
    "DEFAULT_MODEL": "petal.registry",
    "list_models": "petal.registry",
    "create_model": "petal.registry",
    "register_model": "petal.registry",
    "train": "petal.training.loop",
    "prepare_data": "petal.training.loop",
    "export_litert": "petal.training.export",
    "Predictor": "petal.runtime.predict",
    "evaluate": "petal.training.evaluation",
    "read_metadata": "petal.runtime.metadata",
    "PetalError": "petal.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        from petal.runtime.native_log import native_log_silenced

        # TensorFlow's native start-up notices (oneDNN, CPU features) are hidden, as the `petal` command hides them
        with native_log_silenced() if "tensorflow" not in sys.modules else contextlib.nullcontext():
            return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'petal' has no attribute {name!r}")
