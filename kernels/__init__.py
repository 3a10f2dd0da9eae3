"""Triton kernels of lrdpo-fast (installed as ``lrdpo_fast.kernels``).

Imports Triton and torch only. Importing this package compiles nothing; kernels are JIT-compiled
on first launch. Under ``TRITON_INTERPRET=1`` (set before this package is imported) they run on
CPU tensors through Triton's interpreter, which is how the CPU test suite checks them.
"""
