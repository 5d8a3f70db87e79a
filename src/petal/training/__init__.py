"""Training, export and evaluation on TensorFlow/Keras (petal-vision[train]): the tf.data pipeline,
augmentation, the models, the training loop, LiteRT export with its parity gate, evaluation, the report
and label issues. Importing the package itself loads nothing heavy.

It does make the Python API as quiet as the `petal` command: TensorFlow's C++ notices (oneDNN, CPU
features; some 1,500 characters long) and its Python INFO lines are hidden unless the user chose
otherwise, by setting TF_CPP_MIN_LOG_LEVEL or the "tensorflow"/"absl" loggers' levels first.
"""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read once, when TensorFlow is first imported
for _name in ("tensorflow", "absl"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.ERROR)
