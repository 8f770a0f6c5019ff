"""Exact per-batch cost counts: stages add rows here inside a transaction; the writer publishes them as
metrics only after the commit, so a rolled-back batch counts nothing."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class Tally:
    storage: Counter[str] = field(default_factory=Counter)  # rows by kind: body, index, delete, ...
    unread: int = 0
    offline: int = 0
    offline_dropped: int = 0
