"""The benchmark harness (`mlx-embedgemma bench`) and the scripts behind the recorded results.

This folder installs as ``mlx_embedgemma.benchmarks``; its ``results/`` folder is data, not code, and
stays in the repository only. Nothing here is imported by ``import mlx_embedgemma``.
"""
