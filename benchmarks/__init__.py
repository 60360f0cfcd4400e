"""Benchmark suites of entropy-attn (pytest-benchmark); not part of the installed package.

See ``benchmarks/README.md`` for the commands. ``benchmarks/run.py`` runs the suites and writes a
result file under ``benchmarks/results/``; ``benchmarks/report.py`` turns result files into
Markdown tables and plots.
"""
