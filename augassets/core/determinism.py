"""The same numbers from the same seeds: what can be pinned on a CPU, and how to tell what could not.

Seeds fix what a run draws; they do not fix how floating-point sums are ordered. On CPUs, PyTorch,
oneDNN, MKL and OpenBLAS pick kernels by the widest vector unit the CPU has (AVX2 or AVX-512)
and split work by thread count, and each choice rounds differently — enough to move a small classifier's test accuracy
by a point or two, since a different rounding early in SGD leads to a different minimum. Pinning the
kernels to AVX2 (which every x86-64 machine of the last decade has) and the thread count per profile
(``Profile.torch_threads``) makes a run repeatable on a machine and removes the vector width as a cause
of differences between machines, at some speed cost on AVX-512 ones. It does not make training
identical across CPUs: two 2-core machines of one kind trained different numbers under these pins
while every forward pass agreed (docs/running.md, "Reproducible numbers"), so the results name the CPU
(:func:`cpu_description`) and a fingerprint of its training kernels (``core.classifier.kernel_fingerprint``).
``AUGASSETS_FAST_KERNELS=1`` leaves every library its own choice.

The variables are read when the libraries initialize, so this runs when ``augassets`` is imported,
before ``torch`` is; a variable already set in the environment is left as it is.
"""

from __future__ import annotations

import os

PINNED_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own vectorized CPU kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN convolutions
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility (BLAS)
    "OPENBLAS_CORETYPE": "Haswell",  # numpy's OpenBLAS (a DYNAMIC_ARCH build): the AVX2 kernels
}
FAST_KERNELS_ENV = "AUGASSETS_FAST_KERNELS"


def pin_cpu_kernels(environ: dict = os.environ) -> dict[str, str]:
    """Set the kernel-pinning variables that are not set yet; returns what was set."""
    if environ.get(FAST_KERNELS_ENV, "").lower() in ("1", "true", "yes"):
        return {}
    changed = {name: value for name, value in PINNED_KERNELS.items() if name not in environ}
    environ.update(changed)
    return changed


def use_deterministic_kernels() -> None:
    """Ask torch for deterministic kernels everywhere (CUDA needs a fixed cuBLAS workspace for it)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def cpu_description() -> str:
    """The CPU as the kernel names it ("AMD EPYC, family 25 model 17, 2 CPUs"): what a table of numbers
    should name beside it, since CPUs of one kind can train different numbers (docs/running.md)."""
    import platform

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    family = ""
    if "cpu family" in fields and "model" in fields:
        family = f", family {fields['cpu family']} model {fields['model']}"
    return f"{name}{family}, {os.cpu_count()} CPUs"
