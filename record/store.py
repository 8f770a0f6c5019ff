"""Record files: written append-only (a new name, never an overwrite), read and checked."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from record.schema import API_VERSION, problems


class RecordError(ValueError):
    """A file that is not a result record of this toolkit (or not one this version reads)."""


def write_new(directory: Path, stem: str, data: bytes) -> Path:
    """Write ``stem.json`` (or ``stem-N.json``) under directory, a name that does not exist yet (O_EXCL): result
    files are append-only, never overwritten."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        path = directory / (f"{stem}.json" if i == 0 else f"{stem}-{i}.json")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path
    raise FileExistsError(f"{directory}/{stem}*.json: too many files of that name")


def dumps(record: dict[str, Any]) -> bytes:
    """The record as JSON; refuses a record the schema does not describe (record/schema.py), so no writer can
    produce a field the documentation lacks."""
    bad = problems(record)
    if bad:
        raise RecordError("not a valid result record: " + "; ".join(bad[:10]))
    return orjson.dumps({k: v for k, v in record.items() if not k.startswith("_")},
                        option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)


def write(directory: Path, record: dict[str, Any], stem: str) -> Path:
    """Write under ``directory`` with a name that does not exist yet: results are never overwritten."""
    return write_new(directory, stem, dumps(record))


def load(path: Path) -> dict[str, Any]:
    """One record. Records of another API version load (``compare`` marks them incomparable); files that are not
    records raise RecordError."""
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise RecordError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or "metrics" not in data or "api_version" not in data:
        raise RecordError(f"{path}: not a chatbench result record (no api_version/metrics)")
    if data["api_version"] == API_VERSION and data.get("kind") is None:
        raise RecordError(f"{path}: a version-{API_VERSION} record without a kind")
    data.setdefault("_path", str(path))
    return data


def load_all(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Records from files and directories (every ``*.json`` of a directory that is a record; others skipped)."""
    out = []
    for path in paths:
        if path.is_dir():
            for f in sorted(path.glob("*.json")):
                try:
                    out.append(load(f))
                except RecordError:
                    continue
        else:
            out.append(load(path))
    return out
