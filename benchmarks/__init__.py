"""Documented benchmarks; each runs as ``python -m benchmarks.<name>`` and writes a JSON result under results/."""
