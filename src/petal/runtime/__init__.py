"""The LiteRT runtime, without TensorFlow (the light install): model-file metadata, prediction and the
local server (petal-vision[serve])."""
