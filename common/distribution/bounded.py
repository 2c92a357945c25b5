"""Reading a registry's answers without trusting their length."""

from __future__ import annotations

import aiohttp

__all__ = ["ERROR_TEXT_BYTES", "read_at_most", "short_text"]

ERROR_TEXT_BYTES = 4096
"""What is read of an error answer's body (a few hundred characters are shown)."""


async def read_at_most(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of the body, and whether there was more (left unread)."""
    body = bytearray()
    while len(body) <= limit:
        chunk = await resp.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body), False
        body += chunk
    return bytes(body[:limit]), True


async def short_text(resp: aiohttp.ClientResponse, chars: int) -> str:
    """The start of an error answer's body, as text, for a message."""
    body, _ = await read_at_most(resp, ERROR_TEXT_BYTES)
    return body.decode(errors="replace")[:chars]
