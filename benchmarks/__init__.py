"""actorflow's benchmark harness: ``python -m benchmarks [--quick] [--only NAME]``.

Every scenario measures its baseline in the same process run and reports its headline figures
as ratios against it, so a figure holds on a noisy machine. See ``benchmarks/README.md``.
"""
