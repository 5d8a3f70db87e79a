"""Which floating-point precision training computes in, chosen from what this machine has.

Mixed precision keeps float32 weights and computes in 16 bits where the hardware does so natively:
bfloat16 on CPUs with AMX or AVX-512 BF16 instructions, float16 on GPUs. The features are read at
run time, never assumed: machines of one kind differ.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)

KERAS_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(requested: str) -> str:
    """The Keras dtype policy for a TrainConfig.precision ('auto', 'float32', 'bfloat16', 'float16')."""
    if requested != "auto":
        return KERAS_POLICY[requested]
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        choice, why = "float16", "a GPU is present"
    elif {"amx_bf16", "avx512_bf16"} & cpu_flags():
        choice, why = "bfloat16", f"the CPU has {' and '.join(sorted({'amx_bf16', 'avx512_bf16'} & cpu_flags()))}"
    else:
        choice, why = "float32", "no native 16-bit arithmetic found"
    log.info("precision: %s (%s; --precision float32 forces full precision)", choice, why)
    return KERAS_POLICY[choice]
