"""The device report and the precision picked for it: GPUs are mocked (this machine has none)."""

import logging
import re
import subprocess

import pytest
import tensorflow as tf
from conftest import PETAL, make_folder

from petal.training import precision


def fake_gpus(monkeypatch, *details):
    """TensorFlow sees one GPU per `details` dict (what get_device_details returns for it)."""
    devices = [tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU") for i in range(len(details))]
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: devices if kind == "GPU" else real(kind))
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda device: details[devices.index(device)])


def report(caplog, requested="auto"):
    with caplog.at_level(logging.INFO, logger="petal.training.precision"):
        policy = precision.resolve_precision(requested)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training on ")]
    return policy, line


def test_a_tensor_core_gpu_trains_in_mixed_float16_and_is_named(monkeypatch, caplog):
    fake_gpus(monkeypatch, {"device_name": "NVIDIA A100-SXM4-40GB", "compute_capability": (8, 0)})
    policy, line = report(caplog)
    assert policy == "mixed_float16"
    assert line == ("training on GPU:0 NVIDIA A100-SXM4-40GB (compute capability 8.0), in mixed_float16 (compute capability "
                    "8.0 computes float16 natively; --precision float32 forces full precision)")


def test_a_gpu_without_tensor_cores_stays_in_float32(monkeypatch, caplog):
    fake_gpus(monkeypatch, {"device_name": "Tesla P100-PCIE-16GB", "compute_capability": (6, 0)})
    policy, line = report(caplog)
    assert policy == "float32"
    assert "GPU:0 Tesla P100-PCIE-16GB" in line and "below 7.0" in line


def test_several_gpus_are_counted_and_a_gpu_of_unknown_capability_still_gets_float16(monkeypatch, caplog):
    fake_gpus(monkeypatch, {"device_name": "NVIDIA L4"}, {"device_name": "NVIDIA L4"})
    policy, line = report(caplog)
    assert policy == "mixed_float16"
    assert line.startswith("training on GPU:0 NVIDIA L4; 2 GPUs visible, --strategy mirrored trains on all, in mixed_float16")


def test_without_a_gpu_the_cpu_is_named_with_its_features(monkeypatch, caplog):
    fake_gpus(monkeypatch)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse2", "avx2", "fma", "avx512f", "avx512_bf16"}))
    policy, line = report(caplog)
    assert policy == "mixed_bfloat16"
    assert line.startswith("training on CPU ") and "avx2 fma avx512f avx512_bf16), no GPU visible to TensorFlow" in line
    assert line.endswith("in mixed_bfloat16 (the CPU has avx512_bf16; --precision float32 forces full precision)")


def test_an_explicit_precision_is_kept_and_the_report_says_what_auto_would_pick(monkeypatch, caplog):
    fake_gpus(monkeypatch)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    policy, line = report(caplog, "bfloat16")
    assert policy == "mixed_bfloat16"
    assert line.endswith("in mixed_bfloat16 (set by --precision or the model's recipe; --precision auto would pick float32: "
                         "no native 16-bit arithmetic found)")


def test_the_cuda_build_without_a_visible_gpu_is_pointed_out(monkeypatch, caplog):
    fake_gpus(monkeypatch)
    monkeypatch.setattr(precision, "_installed", lambda name: name in {"tensorflow", "nvidia-cudnn-cu12"})
    report(caplog)
    assert any("[gpu]) is installed but TensorFlow sees no GPU" in r.getMessage() for r in caplog.records)


def test_train_and_gpu_extras_installed_together_are_pointed_out(monkeypatch):
    monkeypatch.setattr(precision, "_installed", lambda name: name in {"tensorflow", "tensorflow-cpu"})
    (warning,) = precision.install_warnings([("GPU:0 x", None)])
    assert warning.startswith("tensorflow and tensorflow-cpu are both installed")


@pytest.mark.quick
def test_petal_train_says_which_device_and_precision_when_training_starts(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=4)
    result = subprocess.run([PETAL, "train", data, "--model", "tutorial", "--epochs", "1", "--image-size", "32", "32",
                             "--batch-size", "8", "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("training on ")]
    assert len(lines) == 1 and re.match(r"training on CPU .*, in (float32|mixed_bfloat16) \(", lines[0]), result.stderr
