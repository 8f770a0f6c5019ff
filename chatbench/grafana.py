"""Upload the generated dashboards to a Grafana over its HTTP API (``chatbench dashboards push``).

Uses grafana-client's ``GrafanaApi``: the maintained successor of grafana-api (whose last release was 2020),
with the same API. Each dashboard is created or overwritten (``overwrite: true``, matched by uid) in one folder,
which is created first if it does not exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError

FOLDER_UID = "chatbench"


def ensure_folder(api: GrafanaApi, title: str, uid: str) -> str:
    """The uid of folder ``uid``, created with ``title`` if Grafana does not have it."""
    try:
        folder: dict[str, Any] = api.folder.get_folder(uid)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        folder = api.folder.create_folder(title, uid=uid)
    return str(folder["uid"])


def push(url: str, token: str, dashboards: Mapping[str, dict[str, Any]], *, folder: str = "chatbench",
         folder_uid: str = FOLDER_UID, message: str = "chatbench dashboards push") -> list[dict[str, Any]]:
    """Create or overwrite every dashboard in the folder; returns Grafana's answers (uid, url, version)."""
    api = GrafanaApi.from_url(url, credential=token)
    target = ensure_folder(api, folder, folder_uid)
    answers = []
    for board in dashboards.values():
        body = dict(board)
        body["id"] = None  # matched by uid; a numeric id from another Grafana must not be sent
        answers.append(api.dashboard.update_dashboard(
            {"dashboard": body, "folderUid": target, "overwrite": True, "message": message}))
    return answers
