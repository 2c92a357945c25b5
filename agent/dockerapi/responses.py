"""JSON responses as dockerd writes them.

Docker's Go client reads an error's body as JSON only when ``Content-Type`` is exactly
``application/json`` (aiohttp's ``json_response`` appends ``; charset=utf-8``): every
handler answers with :func:`json_response` from here.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

__all__ = ["JSON", "json_response"]

JSON = "application/json"


def json_response(data: Any, status: int = 200) -> web.Response:
    """``data`` as JSON with dockerd's exact content type."""
    return web.Response(body=json.dumps(data).encode(), status=status, content_type=JSON)
