"""fastgrpo's Triton kernels, installed as ``fastgrpo_kernels``.

One file per kernel family; the launchers that check inputs and allocate outputs live in ``fastgrpo``.
Importing this package does not import triton: each kernel module does, on first use.
"""
