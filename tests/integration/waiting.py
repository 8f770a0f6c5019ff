"""Waiting for a condition instead of sleeping for a guessed time: poll it until a deadline, and fail saying what
was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.01,
               ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value. After ``timeout`` seconds raise
    AssertionError naming ``what`` and the last value (or the last exception of a type in ``ignoring``, which
    count as "not yet": a retry loop)."""
    deadline = time.monotonic() + timeout
    while True:
        last: object
        try:
            value = predicate()
        except ignoring as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)
