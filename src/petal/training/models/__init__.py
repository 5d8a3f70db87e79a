"""Keras builders of the registered models (petal.registry names them, with their recipes).

One module per family: the tutorial's two CNNs, petal-resnet (from scratch), the pretrained
backbones of keras.applications; flip_average holds the test-time flip layers saved inside models.
"""
