"""Lab tests: stock kernels booted under QEMU (pytest -m lab)."""
