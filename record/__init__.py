"""The result record: one typed schema (:mod:`record.schema`, documented in docs/results.md), one builder
(:mod:`record.build`), one reader and append-only writer (:mod:`record.store`).

A leaf package: it imports nothing else of this project, so the server's tools, the drivers, the benchmarks and
the CLI all build and read records the same way.
"""

from record.build import (
    SERVER_COUNTERS,
    cpu_at,
    cpu_in_window,
    derive,
    finish,
    generator_cpu,
    new,
    new_run_id,
    server_figures,
)
from record.schema import API_VERSION, FIELDS, KINDS, Field, problems
from record.store import RecordError, dumps, load, load_all, write, write_new

__all__ = [
    "API_VERSION", "FIELDS", "KINDS", "SERVER_COUNTERS", "Field", "RecordError", "cpu_at", "cpu_in_window", "derive",
    "dumps", "finish", "generator_cpu", "load", "load_all", "new", "new_run_id", "problems", "server_figures",
    "write", "write_new",
]
