"""Hybrid: write diffusion for groups below ``--hybrid-threshold`` members (N + 1 writes per message, cheap
per-user reads), read diffusion at or above it (1 write). Decided per entry by the group's size when it is
stored, so a group that grows past the threshold switches from then on; reads merge both kinds of entry."""

from __future__ import annotations

from collections.abc import Mapping

from reference_server.storage.timeline import TimelineStorage


class HybridStorage(TimelineStorage):
    name = "hybrid"

    def diffuse(self, members: Mapping[int, int]) -> bool:
        threshold = self.config.hybrid_threshold if self.config is not None else 1000
        return len(members) < threshold
