"""keygate: APEX-compatible API-key authentication for any HTTP API.

The public surface is small: ``Client`` and ``AsyncClient`` (the SDK) and ``compute_signature``.

They are loaded on first use (PEP 562), not when ``keygate`` is imported: the SDK client brings in
httpx, which the server's own commands (``keygate key list``, ...) never need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keygate.domain.signature import compute_signature
    from keygate.sdk.client import AsyncClient, Client, KeygateAPIError

__all__ = ["AsyncClient", "Client", "KeygateAPIError", "compute_signature"]
__version__ = "0.1.0"

_LAZY = {
    "AsyncClient": "keygate.sdk.client",
    "Client": "keygate.sdk.client",
    "KeygateAPIError": "keygate.sdk.client",
    "compute_signature": "keygate.domain.signature",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keygate' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
