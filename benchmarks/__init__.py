"""Documented benchmarks; each runs as ``python -m benchmarks.<name>`` and writes result records (record/schema.py,
docs/results.md) under results/. ``common`` holds what the fan-out benchmarks share."""
