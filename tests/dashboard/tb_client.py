"""HTTP from the dashboard tests to the local TensorBoard (no proxy: 127.0.0.1 only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

STEPS = 12  # 3 epochs of 4 steps, every one logged: more than TensorBoard's default sample of 10 images per tag
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(port: int, route: str, **params: Any) -> tuple[int, bytes, dict[str, str]]:
    """GET from the local server without raising on HTTP errors: ``(status, body, headers)``."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{route}{query}", timeout=20) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def get_json(port: int, route: str, **params: Any) -> Any:
    """GET a JSON route; fails the test with the body when the status is not 200."""
    status, body, _ = get(port, route, **params)
    assert status == 200, f"{route} {params}: HTTP {status}: {body[:500]!r}"
    return json.loads(body)


def wait_indexed(port: int, budget_s: float = 60.0) -> Any:
    """The ``/runs`` listing once the plugin's first reading of the logs is done (it lists runs before that)."""
    import time

    deadline = time.monotonic() + budget_s
    while True:
        listing = get_json(port, "/data/plugin/probelens/runs")
        if listing.get("indexing", {}).get("done", True) or time.monotonic() > deadline:
            return listing
        time.sleep(0.2)
