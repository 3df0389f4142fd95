"""Checks that need a CUDA GPU, runnable as scripts (`python -m tests.gpu.smoke`) and from pytest."""
