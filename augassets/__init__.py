"""augassets: does retrieval or diffusion augment a classifier's data better? (see README.md)"""

from .core.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before torch is imported anywhere in the package: see core/determinism.py
