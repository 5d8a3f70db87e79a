"""The tutorial's own code, as printed (image_dataset_from_directory, float32 .cache(), model.fit).

    python benchmarks/tutorial_as_printed.py DATA_DIR basic|augmented EPOCHS OUT_JSON

The baseline that benchmarks/tutorial.py runs beside petal, so both are measured on one machine in
one run. Only the code that measures (timing, the JSON) is added to the tutorial's.
"""

import json
import sys
import time

import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers
from tensorflow.keras.models import Sequential

data_dir, which, epochs, out_json = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
batch_size, img_height, img_width = 32, 180, 180
train_ds = tf.keras.utils.image_dataset_from_directory(
    data_dir, validation_split=0.2, subset="training", seed=123, image_size=(img_height, img_width), batch_size=batch_size
)
val_ds = tf.keras.utils.image_dataset_from_directory(
    data_dir, validation_split=0.2, subset="validation", seed=123, image_size=(img_height, img_width), batch_size=batch_size
)
num_classes = len(train_ds.class_names)
AUTOTUNE = tf.data.AUTOTUNE
train_ds = train_ds.cache().shuffle(1000).prefetch(buffer_size=AUTOTUNE)
val_ds = val_ds.cache().prefetch(buffer_size=AUTOTUNE)
convs = [
    layers.Conv2D(16, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
    layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
    layers.Conv2D(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
]
if which == "basic":
    model = Sequential([layers.Rescaling(1.0 / 255, input_shape=(img_height, img_width, 3)), *convs,
                        layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(num_classes)])
else:
    data_augmentation = keras.Sequential([layers.RandomFlip("horizontal", input_shape=(img_height, img_width, 3)),
                                          layers.RandomRotation(0.1), layers.RandomZoom(0.1)])
    model = Sequential([data_augmentation, layers.Rescaling(1.0 / 255), *convs, layers.Dropout(0.2),
                        layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(num_classes, name="outputs")])
model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
started = time.perf_counter()
history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=2)
fit_seconds = time.perf_counter() - started
tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
with open(out_json, "w") as f:
    json.dump({"which": which, "epochs": epochs, "fit_seconds": fit_seconds, "val_accuracy": history.history["val_accuracy"],
               "tflite_bytes": len(tflite), "params": model.count_params()}, f, indent=1)
