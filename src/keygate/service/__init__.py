"""Use cases. Adapters (HTTP API, console, CLI) call these and nothing below them."""

from keygate.service.container import Keygate
from keygate.service.principal import Principal
from keygate.store.master_key import MasterKeyError

__all__ = ["Keygate", "MasterKeyError", "Principal"]
