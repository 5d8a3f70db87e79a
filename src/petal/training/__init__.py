"""Training, export and evaluation on TensorFlow/Keras (petal-vision[train]): the tf.data pipeline,
augmentation, the models, the training loop, LiteRT export with its parity gate, evaluation, the report
and label issues. Importing the package itself loads nothing heavy."""
