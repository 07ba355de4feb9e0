"""The Python client SDK: ``Client`` (sync) and ``AsyncClient``."""

from keygate.sdk.client import AsyncClient, Client, KeygateAPIError

__all__ = ["AsyncClient", "Client", "KeygateAPIError"]
