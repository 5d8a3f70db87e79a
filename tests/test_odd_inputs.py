"""Odd and hostile inputs (issue 20): each kind of failure an outside test found, on small inputs made here.

Every test names the kind it guards. Files, folders and model files are generated in tmp_path;
nothing is downloaded and no shared data set is read.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PETAL, make_folder, make_image
from PIL import Image

from petal.data.decode import decode_image
from petal.data.doctor import examine
from petal.data.index import index_folder
from petal.data.split import split_folder
from petal.errors import ImageError
from petal.runtime.predict import PredictionError, Predictor

HANG_SECONDS = 60  # a command over a folder of a few files that takes this long has hung


def fake_predictor(classes=("a", "b"), size=(8, 8)) -> Predictor:
    """A Predictor whose model is a constant: tests of the decode path need no trained model."""
    return Predictor(lambda batch: np.zeros((len(batch), len(classes)), np.float32), classes, size)


def findings_of(root: Path) -> dict[str, dict[str, str]]:
    """{kind: {path: detail}} of `petal data`'s API on `root`."""
    found: dict[str, dict[str, str]] = {}
    for f in examine(split_folder(index_folder(root), 0.2, 123)).findings:
        found.setdefault(f.kind, {})[f.path] = f.detail
    return found


def png_bytes(pixels: np.ndarray, **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", **save_args)
    return buffer.getvalue()


# === 1. `petal data` dies on damaged files ===


def test_kind1_a_png_cut_in_half_is_a_finding_of_petal_data_not_a_traceback(tmp_path):
    root = make_folder(tmp_path / "photos", per_class=4)
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    data = png_bytes(noise)  # no EXIF before the pixels: reading it made Pillow decode the cut pixels
    (root / "red" / "half.png").write_bytes(data[: len(data) // 2])

    found = findings_of(root)
    assert "red/half.png" in found["corrupt"]

    result = subprocess.run([PETAL, "data", str(root), "--grid", str(tmp_path / "g.png")], capture_output=True, text=True,
                            timeout=HANG_SECONDS)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "corrupt: red/half.png" in result.stdout


# === 2. Special files: FIFOs and links to devices are never read ===


def _special_folder(tmp_path) -> Path:
    root = make_folder(tmp_path / "photos", per_class=4)
    os.mkfifo(root / "red" / "x.jpg")
    (root / "green" / "z.jpg").symlink_to("/dev/zero")
    return root


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_kind2_a_fifo_and_a_link_to_dev_zero_are_findings_and_nothing_hangs(tmp_path):
    root = _special_folder(tmp_path)
    result = subprocess.run([PETAL, "data", str(root), "--json"], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 0, result.stderr
    special = {f["path"]: f["detail"] for f in json.loads(result.stdout)["findings"] if f["kind"] == "special-file"}
    assert set(special) == {"red/x.jpg", "green/z.jpg"}
    assert "FIFO" in special["red/x.jpg"] and "character device" in special["green/z.jpg"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_kind2_predict_and_the_training_decode_refuse_special_files_without_reading_them(tmp_path):
    root = _special_folder(tmp_path)
    code = f"""
import numpy as np
from petal.data.cache import DecodeCache
from petal.data.index import index_folder
from petal.runtime.predict import Predictor
p = Predictor(lambda b: np.zeros((len(b), 2), np.float32), ("a", "b"), (8, 8))
for r in p.predict([{str(root / "red" / "x.jpg")!r}, {str(root / "green" / "z.jpg")!r}]):
    print("predict:", r.reason)
rows = DecodeCache({str(tmp_path / "cache")!r}, (8, 8)).load(index_folder({str(root)!r}), workers=1)
print("train skipped:", sorted(rows.failures))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("not a regular file") == 2
    assert "train skipped: ['green/z.jpg', 'red/x.jpg']" in result.stdout


# === 3. Memory per image is bounded below the pixel limit ===


def _peak_bytes_of_decoding(path: Path) -> int:
    """Growth of the peak resident memory of a fresh interpreter while it decodes `path` to 180 x 180."""
    code = f"""
import resource
from petal.data.decode import decode_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
decode_image({str(path)!r}, (180, 180))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@pytest.mark.parametrize("kind", ["grey16.png", "rgba.png", "float.tiff"])
def test_kind3_deep_images_decode_within_the_documented_bytes_per_pixel(tmp_path, kind):
    side = 3000
    pixels = {
        "grey16.png": lambda: np.tile(np.arange(side, dtype=np.uint16) * 20, (side, 1)),
        "rgba.png": lambda: np.tile(np.arange(side, dtype=np.uint8)[:, None], (side, 4)).reshape(side, side, 4),
        "float.tiff": lambda: np.tile(np.linspace(0, 1, side, dtype=np.float32), (side, 1)),
    }[kind]()
    path = tmp_path / kind
    Image.fromarray(pixels).save(path)
    del pixels
    # The bound `petal.data.decode.open_rgb` documents: the file's pixels in their mode plus one converted copy.
    assert _peak_bytes_of_decoding(path) < 9 * side * side + 20e6


# === 4. Pixel data that decodes black ===


def test_kind3_an_image_past_pillows_own_pixel_limit_is_too_large_not_corrupt(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # 400 million pixels, 50 kB
    with pytest.raises(ImageError) as raised:
        decode_image(path, (16, 16))
    assert raised.value.kind == "too-large"


def test_kind2_a_cache_folder_that_is_a_file_is_one_line(tmp_path):
    root = make_folder(tmp_path / "photos", per_class=3)
    (tmp_path / "cache").write_text("a file")
    result = subprocess.run([PETAL, "train", str(root), "--model", "tutorial", "--epochs", "1", "--image-size", "16", "16",
                             "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("petal: error: ")


def test_kind4_a_float_tiff_in_0_to_1_decodes_by_its_range(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.full((16, 16), 0.5, np.float32)).save(path)
    assert 126 <= decode_image(path, (8, 8)).mean() <= 128


def test_kind4_a_32_bit_integer_tiff_without_a_declared_range_is_refused_not_black(tmp_path):
    path = tmp_path / "int32.tiff"
    Image.fromarray(np.full((16, 16), 200, np.int32)).save(path)
    with pytest.raises(ImageError, match=r"int32\.tiff: 32-bit integer pixels without a declared range"):
        decode_image(path, (8, 8))
    result = next(fake_predictor().predict([path]))
    assert isinstance(result, PredictionError)


def test_kind4_the_doctor_flags_nearly_black_and_flat_images(tmp_path):
    root = make_folder(tmp_path / "photos", per_class=4)
    twelve_bit = np.random.default_rng(1).integers(0, 4096, (48, 48), dtype=np.uint16)
    Image.fromarray(twelve_bit).save(root / "red" / "camera12.png")
    Image.new("RGB", (48, 48), (128, 128, 128)).save(root / "green" / "grey.png")
    Image.fromarray(np.full((48, 48), 200, np.int32)).save(root / "blue" / "int32.tif")

    found = findings_of(root)
    assert set(found["nearly-black"]) == {"red/camera12.png"}
    assert set(found["near-constant"]) == {"green/grey.png"}
    assert "blue/int32.tif" in found["unsupported-format"]


# === 10. A `.keras` file that cannot be loaded ===


def _tiny_run_folder(root: Path, model_bytes: bytes) -> Path:
    """A run folder as training writes it (config, labels, split), whose model.keras is `model_bytes`."""
    from petal.config import TrainConfig
    from petal.data.split import load_split
    from petal.run_folder import RunFolder

    data = make_folder(root / "photos", per_class=4)
    config = TrainConfig.for_model(str(data), "tutorial", epochs=2, batch_size=4, image_size=(16, 16),
                                   cache_dir=str(root / "cache"))
    run = RunFolder(root / "run")
    run.write_start(config, load_split(data))
    run.model_path.write_bytes(model_bytes)
    return run.path


@pytest.fixture(scope="module")
def unloadable_keras_files(tmp_path_factory) -> dict[str, bytes]:
    import zipfile

    import keras

    folder = tmp_path_factory.mktemp("keras")
    inputs = keras.Input((16, 16, 3))
    plain = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    plain.save(folder / "plain.keras")
    with_lambda = keras.Model(inputs, keras.layers.Lambda(lambda x: x[:, 0, 0, :])(inputs))
    with_lambda.save(folder / "lambda.keras")
    whole = (folder / "plain.keras").read_bytes()
    renamed = io.BytesIO()
    with zipfile.ZipFile(renamed, "w") as archive:
        archive.writestr("saved_model/saved_model.pb", b"\x08\x01")
        archive.writestr("saved_model/variables/variables.index", b"")
    return {"truncated": whole[: len(whole) // 2], "lambda": (folder / "lambda.keras").read_bytes(),
            "renamed-savedmodel-zip": renamed.getvalue()}


@pytest.mark.parametrize("kind", ["truncated", "lambda", "renamed-savedmodel-zip"])
def test_kind10_an_unloadable_keras_file_is_one_run_folder_error(tmp_path, unloadable_keras_files, kind):
    from petal.errors import ModelFileError
    from petal.run_folder import RunFolder

    run = _tiny_run_folder(tmp_path, unloadable_keras_files[kind])
    with pytest.raises(ModelFileError, match=r"model\.keras: (not a Keras \.keras archive|Keras cannot load this model)") as caught:
        RunFolder(run).load_model()
    assert "\n" not in str(caught.value)
    if kind == "lambda":
        assert "safe" in str(caught.value).lower()  # refused by safe mode: no code in the file ran


def test_kind10_predict_evaluate_export_and_serve_say_one_line_and_exit_2(tmp_path, unloadable_keras_files):
    run = _tiny_run_folder(tmp_path, unloadable_keras_files["truncated"])
    image = next((tmp_path / "photos" / "red").iterdir())
    for command in (["predict", str(run), str(image)], ["evaluate", str(run)], ["export", str(run), "--quantize", "float32"],
                    ["serve", str(run), "--port", "0"]):
        result = subprocess.run([PETAL, *command], capture_output=True, text=True, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and lines[-1].startswith("petal: error: ") and "Traceback" not in result.stderr, (command, result.stderr)
        assert "model.keras: not a Keras .keras archive" in lines[-1]


def test_kind10_resume_from_an_unloadable_checkpoint_is_a_run_folder_error(tmp_path, unloadable_keras_files):
    from petal.config import TrainConfig
    from petal.errors import ModelFileError
    from petal.training.loop import train

    run = _tiny_run_folder(tmp_path, b"")
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "epoch-1.keras").write_bytes(unloadable_keras_files["lambda"])
    (run / "checkpoint" / "state.json").write_text(json.dumps({"epochs_done": 1, "model": "epoch-1.keras", "best_epoch": 1,
                                                               "best_val_accuracy": 0.5}))
    (run / "history.csv").write_text("epoch,accuracy,loss,val_accuracy,val_loss,seconds\n1,0.5,0.7,0.5,0.7,1.0\n")
    config = TrainConfig.load(run / "config.json")
    with pytest.raises(ModelFileError, match=r"epoch-1\.keras: Keras cannot load this model"):
        train(config, run, resume=True, verbose=0)


# === 11. `.tflite` files are checked against the model itself ===

CLASSES = ["daisy", "tulips", "roses"]


def _metadata(labels=CLASSES, image_size=(8, 8)) -> dict:
    from petal.data.decode import RESIZE_METHOD

    return {"labels": list(labels), "output": "logits",
            "preprocessing": {"image_size": list(image_size), "resize": RESIZE_METHOD, "max_pixels": 10_000_000}}


@pytest.fixture(scope="module")
def bare_tflite() -> bytes:
    """An 8x8x3 -> 3 classes float32 LiteRT model without petal metadata (weights: a fixed seed)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))))
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _hostile_files(bare: bytes) -> dict[str, bytes]:
    from petal.runtime.metadata import embed_metadata

    good = embed_metadata(bare, _metadata())
    bad_json = embed_metadata(bare, {"x": 1}).replace(b'{"x": 1}', b'{"x": 1]')
    zipped = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("model.tflite", good)
    return {
        "huge-image-size": embed_metadata(bare, _metadata(image_size=(100_000, 100_000))),
        "negative-image-size": embed_metadata(bare, _metadata(image_size=(-8, 8))),
        "too-few-labels": embed_metadata(bare, _metadata(labels=CLASSES[:2])),
        "too-many-labels": embed_metadata(bare, _metadata(labels=CLASSES + ["extra"])),
        "size-disagrees-with-model": embed_metadata(bare, _metadata(image_size=(16, 16))),
        "invalid-json": bad_json,
        "zip-renamed": zipped.getvalue(),
        "zero-bytes": b"",
        "header-bit-flipped": good[:5] + bytes([good[5] ^ 0x10]) + good[6:],
    }


def _predict_under_4_gb(model: Path, image: Path) -> subprocess.CompletedProcess:
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    return subprocess.run([PETAL, "predict", str(model), str(image)], capture_output=True, text=True, timeout=HANG_SECONDS,
                          preexec_fn=limit)


def test_kind11_hostile_tflite_files_end_predict_in_one_line_under_a_4_gb_limit(tmp_path, bare_tflite):
    image = make_image(tmp_path / "photo.png", (200, 40, 40))
    for kind, data in _hostile_files(bare_tflite).items():
        model = tmp_path / f"{kind}.tflite"
        model.write_bytes(data)
        result = _predict_under_4_gb(model, image)
        assert result.returncode == 2, (kind, result.returncode, result.stderr[-2000:])
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"petal: error: {model}: "), (kind, result.stderr)


def test_kind11_metadata_is_checked_against_the_models_tensors(tmp_path, bare_tflite):
    from petal.errors import PetalError

    files = _hostile_files(bare_tflite)
    for kind, pattern in [("huge-image-size", r"image_size must be two whole numbers in 1\.\.8192"),
                          ("too-few-labels", r"names 2 classes, the model's output tensor has shape \[1, 3\]"),
                          ("too-many-labels", r"names 4 classes"),
                          ("size-disagrees-with-model", r"input is 16x16x3, the model's input tensor is \[8, 8, 3\]"),
                          ("invalid-json", "not valid JSON"), ("zip-renamed", "not a LiteRT model .* zip archive"),
                          ("zero-bytes", "not a LiteRT model")]:
        path = tmp_path / f"{kind}.tflite"
        path.write_bytes(files[kind])
        with pytest.raises(PetalError, match=pattern):
            Predictor.load(path)
    (tmp_path / "text.tflite").write_text("garbage\n")
    with pytest.raises(PetalError, match=r"not a LiteRT model \(no TFL3 flatbuffer identifier; its first bytes are 67 61 72 62 61 67 65 0a\)$"):
        Predictor.load(tmp_path / "text.tflite")


def test_kind11_serve_refuses_a_tflite_whose_labels_disagree_with_its_outputs(tmp_path, bare_tflite):
    from petal.errors import PetalError
    from petal.runtime.serve import create_app

    path = tmp_path / "more-labels.tflite"
    path.write_bytes(_hostile_files(bare_tflite)["too-many-labels"])
    with pytest.raises(PetalError, match="names 4 classes"):
        create_app(path)  # before: served, with HTTP 200 and labels shifted against the outputs


def test_kind11_bit_flipped_tflite_files_give_a_prediction_or_one_line(tmp_path, bare_tflite):
    from petal.runtime.metadata import embed_metadata

    good = embed_metadata(bare_tflite, _metadata())
    image = make_image(tmp_path / "photo.png", (200, 40, 40))
    rng = np.random.default_rng(20)
    for position in sorted(rng.choice(len(good), 12, replace=False)):
        model = tmp_path / f"flip-{position}.tflite"
        model.write_bytes(good[:position] + bytes([good[position] ^ (1 << int(rng.integers(8)))]) + good[position + 1:])
        result = _predict_under_4_gb(model, image)
        assert result.returncode in (0, 2) and "Traceback" not in result.stderr, (position, result.returncode, result.stderr[-2000:])
        if result.returncode == 2:
            assert result.stderr.count("\n") == 1, (position, result.stderr)


# === 12. Ties: one rule everywhere ===


class _TiedRows:
    """Stands in for the decode cache's rows: two images whose logits (below) tie classes 0 and 2."""

    labels = np.array([0, 2])

    def __len__(self):
        return 2

    def gather(self, positions):
        return np.zeros((len(positions), 8, 8, 3), np.uint8)


def _tied_logits(batch, training=False):
    return np.tile(np.array([[2.0, -1.0, 2.0]], np.float32), (len(batch), 1))


def test_kind12_the_export_gate_counts_exactly_what_evaluate_and_predict_report(monkeypatch):
    from petal.config import ExportConfig
    from petal.training import parity

    class Runner:
        input = {"dtype": np.float32}
        __call__ = staticmethod(_tied_logits)

    monkeypatch.setattr(parity, "litert_runner", lambda tflite, num_threads=None: Runner())
    class Model:
        predict_on_batch = staticmethod(_tied_logits)

    keras_accuracy, [report] = parity.compare_with_keras(Model(), {"int8": b""}, _TiedRows(), ExportConfig())

    predictor = fake_predictor(classes=("a", "b", "c"))
    predictor._logits = _tied_logits
    predicted = [p.label for p in predictor.predict([Image.new("RGB", (8, 8))] * 2)]
    evaluate_accuracy = np.mean([name == "abc"[label] for name, label in zip(predicted, _TiedRows.labels)])
    assert predicted == ["a", "a"]  # the first of the tied classes, as np.argmax and Keras's metrics
    assert report.accuracy == keras_accuracy == evaluate_accuracy == 0.5


def test_kind12_predict_prints_a_tie_as_a_tie(tmp_path):
    import keras
    import tensorflow as tf

    from petal.runtime.metadata import embed_metadata

    inputs = keras.Input((8, 8, 3))
    flat = keras.Model(inputs, keras.layers.Dense(3, kernel_initializer="zeros")(keras.layers.Flatten()(inputs)))
    model = tmp_path / "flat.tflite"
    model.write_bytes(embed_metadata(tf.lite.TFLiteConverter.from_keras_model(flat).convert(), _metadata()))
    image = make_image(tmp_path / "photo.png", (200, 40, 40))

    result = subprocess.run([PETAL, "predict", str(model), str(image)], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 0, result.stderr
    assert "is a tie between daisy, tulips and roses (33.33 percent each); reported as daisy" in result.stdout
    assert "top 3: daisy 33.33% = tulips 33.33% = roses 33.33%" in result.stdout


# === 9. Numeric options are range-checked before anything is written ===


@pytest.mark.slow
def test_kind9_a_negative_seed_is_one_line_and_writes_nothing(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=3)
    for flags in (["--seed", "-1"], ["--train-seed", str(2**32)], ["--learning-rate", "nan"], ["--val-split", "1.5"]):
        run = tmp_path / "run"
        result = subprocess.run([PETAL, "train", str(data), "--model", "tutorial", "--out", str(run), *flags],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and "petal: error: " in result.stderr, (flags, result.stderr)
        assert not run.exists()
    result = subprocess.run([PETAL, "data", str(data), "--seed", "-1"], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 2 and result.stderr == "petal: error: seed must be a whole number in 0..4294967295. Received: seed=-1\n"


def test_kind9_top_k_and_limits_below_one_are_config_errors(tmp_path):
    from petal.errors import ConfigError

    with pytest.raises(ConfigError, match="top_k and batch_size must be at least 1"):
        list(fake_predictor().predict([Image.new("RGB", (8, 8))], top_k=0))
    with pytest.raises(ConfigError, match="seed must be a whole number"):
        split_folder(index_folder(make_folder(tmp_path / "photos", per_class=3)), 0.2, -5)


def test_kind9_a_batch_too_large_for_memory_is_refused_for_training_and_bounded_for_prediction(monkeypatch):
    from petal.config import TrainConfig
    from petal.data import decode
    from petal.errors import ConfigError

    with pytest.raises(ConfigError, match=r"batch size must be at most 5,523 at image size 180x180 .*batch_size=99,999,999$"):
        TrainConfig.for_model("photos", "tutorial", batch_size=99_999_999)
    with pytest.raises(ConfigError, match=r"train image size is the size of random crops of the image size, so at most it"):
        TrainConfig.for_model("photos", "petal-resnet", image_size=(32, 32), train_image_size=(512, 512), batch_size=1000)
    monkeypatch.setattr(decode, "MAX_BATCH_BYTES", 2 * 8 * 8 * 3 * 4)  # two 8x8 images per batch
    calls = []
    predictor = fake_predictor()
    logits = predictor._logits
    predictor._logits = lambda batch: calls.append(len(batch)) or logits(batch)
    assert len(list(predictor.predict([Image.new("RGB", (8, 8))] * 5, batch_size=32))) == 5
    assert calls == [2, 2, 1]


# === 8. Names: line breaks, non-UTF-8 bytes and consoles that cannot encode them ===


def test_kind8_odd_class_and_file_names_round_trip_through_the_run_folder_and_any_console(tmp_path):
    from petal.data.split import load_split
    from petal.run_folder import RunFolder

    data = tmp_path / "photos"
    names = ["lily\u2028white", "rose\x85red", "tulip\rpink", "ß-café"]
    for c, name in enumerate(names):
        for i in range(3):
            make_image(data / name / f"img_{i}.png", (60 * c, 200 - 40 * c, 90), seed=10 * c + i)
    odd_file = os.fsencode(data / names[0]) + b"/\xff\xfe.png"
    with open(odd_file, "wb") as f:
        f.write((data / names[0] / "img_0.png").read_bytes())
    undecodable_class = os.fsdecode(b"\xff\xfecls")  # a class folder whose name is not UTF-8: drawn escaped in the PNGs
    for i in range(3):
        make_image(data / undecodable_class / f"img_{i}.png", (20, 20, 200), seed=90 + i)
    names.append(undecodable_class)

    ascii_console = {**os.environ, "PYTHONIOENCODING": "ascii"}
    result = subprocess.run([PETAL, "data", str(data), "--grid", str(tmp_path / "g.png")], capture_output=True, text=True,
                            env=ascii_console, timeout=HANG_SECONDS)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr

    run = tmp_path / "run"
    result = subprocess.run([PETAL, "train", str(data), "--model", "tutorial", "--epochs", "1", "--image-size", "16", "16",
                             "--val-split", "0.3", "--out", str(run)], capture_output=True, text=True, env=ascii_console, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = RunFolder(run)
    split = load_split(data, 0.3)
    assert folder.class_names() == tuple(sorted(names))
    assert sorted(folder.split("train").paths + folder.split("validation").paths) == sorted(split.train.paths + split.validation.paths)
    assert any(os.path.exists(folder.split("train").absolute(p)) and "\udcff" in p for p in split.train.paths + split.validation.paths)

    result = subprocess.run([PETAL, "evaluate", str(run)], capture_output=True, text=True, env=ascii_console, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    metrics = json.loads((run / "evaluation" / "keras" / "metrics.json").read_text())
    assert metrics["class_names"] == sorted(names)


def test_kind8_a_file_name_holding_a_newline_or_an_escape_is_printed_escaped_on_its_one_line(tmp_path, finished_run):
    data = make_folder(tmp_path / "photos", per_class=4)
    odd = data / "red" / "two\nlines\x1b[31m.jpg"
    odd.write_bytes(b"not an image")
    result = subprocess.run([PETAL, "data", str(data), "--grid", str(tmp_path / "g.png")], capture_output=True, text=True,
                            timeout=HANG_SECONDS)
    finding = [line for line in result.stdout.splitlines() if "not-an-image:" in line]
    assert finding == ["  not-an-image: red/two\\nlines\\x1b[31m.jpg  (not an image: Pillow cannot identify the file's format)"]

    photo = data / "red" / "a\nphoto.png"
    photo.write_bytes((data / "red" / "img_001.png").read_bytes())
    result = subprocess.run([PETAL, "predict", str(finished_run / "export" / "model-float32.tflite"), str(photo), str(odd)],
                            capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 1, result.stderr  # one of two files failed
    assert [line for line in result.stdout.splitlines() if not line.startswith("  top")][0].startswith(str(data / "red" / "a\\nphoto.png"))
    assert result.stderr.count("\n") == 1 and "two\\nlines\\x1b[31m.jpg" in result.stderr, result.stderr


# === 6. Every class has training images ===


def test_kind6_a_class_whose_only_photos_land_in_validation_is_refused(tmp_path, caplog):
    from petal.errors import DataError

    root = make_folder(tmp_path / "photos", per_class=6)
    make_image(root / "rare" / "only.jpg", (10, 10, 10))
    folder = index_folder(root)
    seed = next(s for s in range(200) if "rare/only.jpg" not in split_folder_paths(folder, s))
    with pytest.raises(DataError, match="class\\(es\\) rare have no training images"):
        split_folder(folder, 0.2, seed)
    result = subprocess.run([PETAL, "data", str(root), "--seed", str(seed)], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 2 and "rare have no training images" in result.stderr

    make_image(root / "rare" / "second.jpg", (12, 12, 12))
    seed = next(s for s in range(200) if _val_classes(index_folder(root), s) == {"blue", "green", "red"}
                and "rare" in {p.split("/")[0] for p in split_folder_paths(index_folder(root), s)})
    with caplog.at_level("WARNING"):
        split_folder(index_folder(root), 0.2, seed)
    assert "rare have no validation images" in caplog.text


def test_kind6_a_class_whose_files_all_fail_to_decode_is_refused_by_train(tmp_path):
    root = make_folder(tmp_path / "photos", per_class=6)
    (root / "empty").mkdir()
    for i in range(4):
        (root / "empty" / f"z{i}.jpg").write_bytes(b"")
    result = subprocess.run([PETAL, "train", str(root), "--model", "tutorial", "--epochs", "1", "--image-size", "16", "16",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "class(es) empty have no decodable training images" in result.stderr.strip().splitlines()[-1]


def test_kind6_an_absolute_exclusion_naming_a_linked_photo_excludes_the_link_not_its_target(tmp_path):
    from petal.data.quarantine import read_exclusion_list

    root = make_folder(tmp_path / "photos", per_class=3)
    (root / "blue" / "link.png").symlink_to(root / "green" / "img_000.jpg")
    listed = tmp_path / "exclude.txt"
    listed.write_text(f"{root / 'blue' / 'link.png'}\n")
    assert read_exclusion_list(listed, root) == ("blue/link.png",)


def split_folder_paths(folder, seed) -> tuple[str, ...]:
    """Training paths of Keras's split of `folder` at `seed`, computed without petal's checks."""
    order = list(range(len(folder)))
    np.random.RandomState(seed).shuffle(order)
    return tuple(folder.paths[i] for i in order[: len(folder) - int(0.2 * len(folder))])


def _val_classes(folder, seed) -> set[str]:
    train = set(split_folder_paths(folder, seed))
    return {p.split("/")[0] for p in folder.paths if p not in train}


# === Fuzz: `petal data` and `petal predict` over mutated files of every format ===


def _seed_files() -> dict[str, bytes]:
    pixels = np.random.default_rng(3).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    files = {}
    for fmt, suffix, extra in [("PNG", ".png", {}), ("JPEG", ".jpg", {}), ("GIF", ".gif", {}), ("TIFF", ".tif", {}),
                               ("WEBP", ".webp", {}), ("PNG", ".png", {"mode": "I;16"})]:
        image = Image.fromarray(pixels)
        if extra.get("mode"):
            image = Image.fromarray((pixels[..., 0].astype(np.uint16) * 257))
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        files[f"seed-{fmt.lower()}{len(files)}{suffix}"] = buffer.getvalue()
    return files


SEEDS = _seed_files()


def _mutations():
    from hypothesis import strategies as st

    name = st.sampled_from(sorted(SEEDS))
    flips = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)
    return st.tuples(name, st.integers(0, 10_000), flips)


def _mutated(name: str, cut: int, flips) -> bytes:
    data = bytearray(SEEDS[name][: max(1, len(SEEDS[name]) - cut % len(SEEDS[name]))])
    for position, value in flips:
        data[position % len(data)] = value
    return bytes(data)


def test_fuzz_the_doctor_and_predict_turn_any_mutated_image_into_a_result_or_a_finding(tmp_path_factory):
    import time

    from hypothesis import HealthCheck, given, settings

    from petal.data.doctor import _examine_file

    predictor = fake_predictor()

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_mutations())
    def check(case):
        name, cut, flips = case
        root = tmp_path_factory.mktemp("fuzz")
        (root / name).write_bytes(_mutated(name, cut, flips))
        started = time.perf_counter()
        facts = _examine_file(root, name, 10_000_000)  # must not raise
        [result] = list(predictor.predict([root / name]))
        assert isinstance(result, PredictionError) or result.label in ("a", "b")
        if isinstance(result, PredictionError):  # the decoder refused it: so does the doctor, as an error
            assert any(f.severity == "error" for f in facts.findings), (name, result.reason, facts.findings)
        assert time.perf_counter() - started < 10

    check()


# --- kind 5: symlinked sub-folders inside a class folder -----------------------------------------------------


def test_kind5_symlinked_sub_folders_are_named_by_default_and_followed_once_when_asked(tmp_path, caplog):
    data = make_folder(tmp_path / "photos", per_class=3)
    elsewhere = make_folder(tmp_path / "elsewhere", per_class=2)
    (data / "red" / "more").symlink_to(elsewhere / "red", target_is_directory=True)
    (data / "red" / "loop").symlink_to(data / "red", target_is_directory=True)  # a link back up the tree

    plain = index_folder(data)
    assert plain.counts()["red"] == 3
    assert "2 symlinked folder(s) inside class folders not followed" in caplog.text
    assert "red/loop, red/more" in caplog.text and "--follow-links" in caplog.text

    followed = index_folder(data, follow_links=True)
    assert followed.counts()["red"] == 3 + 2  # the loop adds nothing: each real folder is read once
    assert len(set(followed.paths)) == len(followed.paths)
    assert sum(p.startswith("red/more/") for p in followed.paths) == 2


# --- kind 7: classes named train and val ----------------------------------------------------------------------


def test_kind7_a_tree_readable_both_ways_is_refused_and_layout_chooses(tmp_path):
    from petal.config import TrainConfig
    from petal.data.split import load_split
    from petal.errors import DataError
    from petal.training.loop import make_split

    root = tmp_path / "ambiguous"
    for name, colour in (("train", (200, 40, 40)), ("val", (40, 200, 40)), ("roses", (40, 40, 200))):
        for i in range(4):
            make_image(root / name / f"{i}.jpg", colour, seed=i)
    with pytest.raises(DataError, match=r"may be split folders or classes named so .*--layout split or --layout classes"):
        load_split(root)
    with pytest.raises(DataError, match="--layout split or --layout classes"):  # the API and training agree
        make_split(TrainConfig(str(root), "tutorial"))
    assert load_split(root, layout="classes").train.class_names == ("roses", "train", "val")  # Keras's reading

    cli = subprocess.run([PETAL, "data", str(root)], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and "--layout" in cli.stderr
    assert subprocess.run([PETAL, "data", str(root), "--layout", "classes", "--json"], capture_output=True,
                          timeout=HANG_SECONDS).returncode == 0


def test_kind7_a_clean_split_tree_is_read_as_split_and_says_so(tmp_path, caplog):
    from petal.data.split import load_split

    caplog.set_level("INFO", logger="petal.data.split")
    root = tmp_path / "split"
    make_folder(root / "train", per_class=3)
    make_folder(root / "val", per_class=2)
    split = load_split(root)
    assert split.method == "given" and split.train.class_names == ("blue", "green", "red")
    assert "read as already split (train/, val/); --layout classes reads train and val as classes" in caplog.text
    assert load_split(root, layout="classes").train.class_names == ("train", "val")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from conftest import exported_tiny_run

    return exported_tiny_run(tmp_path_factory.mktemp("records"))


@pytest.mark.parametrize("record", ["config.json", "calibration.json", "validation.json", "environment.json", "timings.json",
                                    "copies.json", "diagnosis.json", "export/report.json"])
@pytest.mark.parametrize("damage", [b"{not json", b"[1, 2]", b""])
def test_kind13_a_damaged_record_of_the_run_folder_is_one_line_naming_it(finished_run, tmp_path, capsys, record, damage):
    import shutil

    from petal.cli import main

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / record).write_bytes(damage)
    assert main(["report", str(run)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"petal: error: {run / record}: ") and ("JSON" in line)


@pytest.mark.parametrize("record, damage", [("labels.txt", b""), ("labels.txt", b"only-one\n"), ("labels.txt", b"a\na\n"),
                                            ("history.csv", b"epoch,loss\n1,x\n"), ("history.csv", b"garbage\n1\n"),
                                            ("evaluation/keras/metrics.json", b'{"schema_version": 1}'),
                                            ("export/report.json", b'{"schema_version": 1}')])
def test_kind13_a_record_with_the_wrong_content_is_one_line_naming_it(finished_run, tmp_path, capsys, record, damage):
    import shutil

    from petal.cli import main

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / record).parent.mkdir(parents=True, exist_ok=True)
    (run / record).write_bytes(damage)
    assert main(["report", str(run)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"petal: error: {run / record}: ")


def test_kind13_resuming_over_a_damaged_history_is_one_line(finished_run, tmp_path, capsys):
    import shutil

    from petal.cli import main
    from petal.run_folder import RunFolder

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "history.csv").write_bytes(b"")
    config = RunFolder(run).config()
    args = ["train", config.data_dir, "--model", "tutorial", "--epochs", str(config.epochs), "--batch-size", str(config.batch_size),
            "--image-size", *map(str, config.image_size), "--cache-dir", config.cache_dir, "--out", str(run), "--resume"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"petal: error: {run / 'history.csv'}: damaged")


def test_kind8_a_warning_naming_a_folder_with_a_line_break_is_one_line(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=3)
    (tmp_path / "elsewhere").mkdir()
    (data / "red" / "link\nEVIL: a fake line").symlink_to(tmp_path / "elsewhere")
    result = subprocess.run([PETAL, "data", str(data), "--json"], capture_output=True, text=True, timeout=HANG_SECONDS)
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "not followed" in line]
    assert len(warning) == 1 and "link\\nEVIL: a fake line" in warning[0]
    assert not any(line.startswith("EVIL") for line in result.stderr.splitlines())


def test_kind8_every_line_break_python_knows_is_escaped_in_a_message():
    from petal.errors import printable

    name = "a\nb\rc\x1bd\x85e\u2028f\u2029g"
    assert len(printable(name).splitlines()) == 1 and len(name.splitlines()) > 1
