"""Use cases. Adapters (HTTP API, console, CLI) call these and nothing below them."""

from keygate.service.container import Keygate
from keygate.service.principal import Principal

__all__ = ["Keygate", "Principal"]
