"""One client of the REST API under ``{base_url}lowcost/api/`` (and of the few routes of
jupyter_server's own API its callers need), given the server's URL, token and timeout.

Called by :class:`~jupyter_lowcost.kernel.client.LowCostClient` (``%lowcost``) and by the
commands' :class:`~jupyter_lowcost.cli.server.Server`. Every failure is an
:class:`APIError` that keeps what went wrong (no answer, or the server's refusal and its
own message); each caller words it for its user.
"""

from __future__ import annotations

import json
from typing import Any

import requests

#: ``json`` left out of a call: no body.
_NO_BODY = object()


class APIError(Exception):
    """A call that did not succeed. ``status`` is None when the server did not answer
    (``detail`` says why); else the HTTP status of its refusal, with its reason phrase
    and, when it answered JSON (as jupyter_server's errors are), that body."""

    def __init__(
        self,
        url: str,
        status: int | None,
        detail: str,
        *,
        reason: str = "",
        body: dict[str, Any] | None = None,
        is_json: bool = False,
    ) -> None:
        super().__init__(detail)
        self.url = url
        self.status = status
        self.detail = detail
        self.reason = reason
        self.body = body
        self.is_json = is_json

    def server_message(self) -> str:
        """The ``message`` of the server's JSON answer ("" when it gave none)."""
        return str((self.body or {}).get("message") or "")


class LowCostAPI:
    """Calls a Jupyter server's API with its token (one HTTP session, kept open)."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        #: The server's URL, ending in one ``/``.
        self.url = url.rstrip("/") + "/"
        #: Where the lowcost API is.
        self.api = self.url + "lowcost/api/"
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"token {token}"

    def call(self, method: str, path: str, *, json: Any = _NO_BODY, params: Any = None) -> Any:
        """``method`` on ``lowcost/api/<path>``: the decoded JSON answer (None when it is
        empty, as a 204 is), or :class:`APIError`."""
        return self.request(method, self.api + path, json=json, params=params)

    def call_server(self, method: str, path: str) -> Any:
        """``method`` on jupyter_server's own ``<path>`` (such as ``api/kernels``)."""
        return self.request(method, self.url + path)

    def request(self, method: str, url: str, *, json: Any = _NO_BODY, params: Any = None) -> Any:
        """One call of ``url``; the body, if any, written as Python's json writes it
        (requests refuses NaN and the infinities, which a job's parameters may be, as
        papermill's are; the server reads them)."""
        headers, data = {}, None
        if json is not _NO_BODY:
            data = _dumps(json)
            headers["Content-Type"] = "application/json"
        try:
            response = self.session.request(
                method, url, headers=headers, data=data, params=params, timeout=self.timeout
            )
        except requests.RequestException as err:
            raise APIError(url, None, str(err)) from err
        if response.status_code >= 400:
            raise _refusal(url, response)
        return response.json() if response.content else None


def _dumps(body: Any) -> bytes:
    return json.dumps(body).encode("utf-8")


def _refusal(url: str, response: requests.Response) -> APIError:
    """The error of an answer >= 400, with the server's JSON body when it sent one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    return APIError(
        url,
        response.status_code,
        f"HTTP {response.status_code}",
        reason=response.reason or "",
        body=body if isinstance(body, dict) else None,
        is_json="application/json" in response.headers.get("Content-Type", ""),
    )
