"""Which floating-point precision training computes in, chosen from what this machine has.

Mixed precision keeps float32 weights and computes in 16 bits where the hardware does so natively:
bfloat16 on CPUs with AMX or AVX-512 BF16 instructions, float16 on GPUs with tensor cores (compute
capability 7.0 or later). The features are read at run time, never assumed: machines of one kind
differ. When training starts, one line says which device it runs on and which precision was picked.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import platform

log = logging.getLogger(__name__)

KERAS_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# The CPU features that decide TensorFlow's speed, named in the device report when present
# (x86: /proc/cpuinfo "flags"; ARM: "Features").
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                  "asimd", "sve", "sve2", "bf16", "i8mm")
FLOAT16_CAPABILITY = (7, 0)  # NVIDIA tensor cores: float16 is faster than float32 from Volta on


def _cpuinfo(key: str) -> str:
    """The first value of a /proc/cpuinfo field (Linux); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return ""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo "flags", or "Features" on ARM); empty where they cannot be read."""
    return frozenset((_cpuinfo("flags") or _cpuinfo("Features")).split())


def gpus() -> list[tuple[str, tuple[int, int] | None]]:
    """Each GPU TensorFlow sees: its name and CUDA compute capability (None where TensorFlow does not say)."""
    import tensorflow as tf

    found = []
    for index, device in enumerate(tf.config.list_physical_devices("GPU")):
        try:
            details = tf.config.experimental.get_device_details(device)
        except (ValueError, RuntimeError):
            details = {}
        capability = details.get("compute_capability")
        found.append((f"GPU:{index} {details.get('device_name', device.name)}", tuple(capability) if capability else None))
    return found


def auto_precision(found_gpus: list, flags: frozenset[str]) -> tuple[str, str]:
    """The precision 'auto' picks for these devices, and why."""
    if found_gpus:
        capability = found_gpus[0][1]
        if capability is None:
            return "float16", "a GPU is present"
        if capability >= FLOAT16_CAPABILITY:
            return "float16", f"compute capability {capability[0]}.{capability[1]} computes float16 natively"
        return "float32", f"compute capability {capability[0]}.{capability[1]} is below 7.0: float16 would not be faster"
    if BF16_FLAGS & flags:
        return "bfloat16", f"the CPU has {' and '.join(sorted(BF16_FLAGS & flags))}"
    return "float32", "no native 16-bit arithmetic found"


def describe_device(found_gpus: list, flags: frozenset[str]) -> str:
    """The device training runs on, in a few words: the first GPU, else the CPU and its features."""
    if found_gpus:
        name, capability = found_gpus[0]
        text = name + (f" (compute capability {capability[0]}.{capability[1]})" if capability else "")
        if len(found_gpus) > 1:
            text += f"; {len(found_gpus)} GPUs visible, --strategy mirrored trains on all"
        return text
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = _cpuinfo("model name") or platform.processor() or platform.machine()
    features = " ".join(flag for flag in REPORTED_FLAGS if flag in flags) or ("no AVX2" if flags else "features not read on this OS")
    return f"CPU {model} ({cores} cores; {features}), no GPU visible to TensorFlow"


def device() -> str:
    """describe_device for this machine, now."""
    return describe_device(gpus(), cpu_flags())


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def install_warnings(found_gpus: list) -> list[str]:
    """Installs that cannot train as meant: [train] and [gpu] together, or the CUDA build with no GPU seen."""
    warnings = []
    if _installed("tensorflow-cpu") and _installed("tensorflow"):
        warnings.append("tensorflow and tensorflow-cpu are both installed ([train] and [gpu] together), one over the "
                        "other: pip uninstall -y tensorflow tensorflow-cpu, then install one of the two extras")
    if not found_gpus and _installed("nvidia-cudnn-cu12"):
        warnings.append("the CUDA build ([gpu]) is installed but TensorFlow sees no GPU: check the NVIDIA driver (nvidia-smi)")
    return warnings


def resolve_precision(requested: str) -> str:
    """The Keras dtype policy for a TrainConfig.precision ('auto', 'float32', 'bfloat16', 'float16'); logs
    one line naming the device training runs on and the precision, and why it was picked."""
    found, flags = gpus(), cpu_flags()
    automatic, reason = auto_precision(found, flags)
    if requested == "auto":
        choice, why = automatic, reason + ("; --precision float32 forces full precision" if automatic != "float32" else "")
    elif requested == automatic:
        choice, why = requested, "set by --precision or the model's recipe"
    else:
        choice, why = requested, f"set by --precision or the model's recipe; --precision auto would pick {automatic}: {reason}"
    for warning in install_warnings(found):
        log.warning("%s", warning)
    log.info("training on %s, in %s (%s)", describe_device(found, flags), KERAS_POLICY[choice], why)
    return KERAS_POLICY[choice]
