"""Dashboards as code: Grafana dashboards built with grafana-foundation-sdk, rendered to dashboards/json/.

    python -m dashboards            regenerate dashboards/json/*.json
    python -m dashboards --check    exit 1 if the committed JSON differs from what the code generates

The JSON is committed (Grafana provisioning reads it; dashboards/provisioning/), and a test proves that
regenerating gives the same bytes. The panels' PromQL lives in :mod:`dashboards.promql`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import generator, modes, overview, reconnect, weak_network
from dashboards.common import number_panels

HERE = Path(__file__).resolve().parent
JSON_DIR = HERE / "json"

# file stem -> builder
DASHBOARDS: dict[str, Callable[[], builders.Dashboard]] = {
    "overview": overview.build,
    "modes": modes.build,
    "reconnect": reconnect.build,
    "weak_network": weak_network.build,
    "generator": generator.build,
}


def build(name: str) -> dict[str, Any]:
    """One dashboard as the JSON object Grafana stores (panel ids numbered in layout order)."""
    model = number_panels(DASHBOARDS[name]().build())
    result: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return result


def render(board: dict[str, Any]) -> str:
    """Stable text: sorted keys, two-space indent, trailing newline (diffs stay readable)."""
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """file name -> rendered JSON, for every dashboard."""
    return {f"{name}.json": render(build(name)) for name in DASHBOARDS}


def load(json_dir: Path = JSON_DIR) -> dict[str, dict[str, Any]]:
    """The committed dashboards: file name -> JSON object."""
    return {p.name: json.loads(p.read_text()) for p in sorted(json_dir.glob("*.json"))}
