"""The kubernetes client as the backend uses it: ``kubernetes_asyncio`` imported (the
extra ``jupyter-lowcost[kubernetes]``), whether the server runs in a pod, and the API's
errors in words. Called by :mod:`.backend` and :mod:`.watch_events`."""

from __future__ import annotations

import json
import os
from typing import Any

from ..base import BackendError


def import_client() -> Any:
    """The ``kubernetes_asyncio`` module (called by the backend's ``start``)."""
    try:
        import kubernetes_asyncio
    except ImportError as err:  # (an extra)
        raise BackendError(
            "the kubernetes backend needs kubernetes_asyncio: "
            'pip install "jupyter-lowcost[kubernetes]"',
            status=500,
        ) from err
    return kubernetes_asyncio


def in_cluster() -> bool:
    """In a pod: the service's address in the environment and the service account's token
    where kubernetes_asyncio's ``load_incluster_config`` reads it (one place names it)."""
    from kubernetes_asyncio.config import incluster_config

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
        incluster_config.SERVICE_TOKEN_FILENAME
    )


def api_error(err: Exception) -> str:
    """An API error as a person reads it (the Status message, not the whole response)."""
    body = getattr(err, "body", None)
    if body:
        try:
            return str(json.loads(body).get("message") or body)
        except (ValueError, AttributeError):
            return str(body)
    return str(err)
