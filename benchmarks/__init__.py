"""Measurements behind the README's tables: the repository's benchmark scripts and their helpers.

Not part of the installed package (setup.cfg installs cottention_jax and pallas_kernels only):
run the scripts from a checkout, e.g. `python benchmarks/bench_kernels.py --smoke`. Each script
puts the repository root on the path when run as a file, so `python -m benchmarks.<name>`
works too. Helpers: measure.py (timings, FLOP models, device facts, HLO collectives),
kernels.py (the kernel comparison's rows), ablation.py (the softmax-as-an-RNN ablation).
"""
