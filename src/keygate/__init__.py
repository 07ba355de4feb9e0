"""keygate: APEX-compatible API-key authentication for any HTTP API.

The public surface is small: ``Client`` and ``AsyncClient`` (the SDK) and ``compute_signature``.
"""

from keygate.domain.signature import compute_signature
from keygate.sdk.client import AsyncClient, Client, KeygateAPIError

__all__ = ["AsyncClient", "Client", "KeygateAPIError", "compute_signature"]
__version__ = "0.1.0"
