"""Photos in, arrays out, without TensorFlow (the light install): decoding, the folder and its split,
the decode cache, and the doctor's findings."""
