"""The one compiled part: drivers._pump, the receive engine's read path (Linux: epoll). Everything else is in
pyproject.toml."""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[Extension("drivers._pump", ["drivers/_pump.c"], extra_compile_args=["-O2", "-Wall", "-Wextra"])]
    if sys.platform.startswith("linux") else [],
)
