"""Benchmarks against peers on real models; run each as a module from the repository root: `python -m bench.NAME`."""
