"""The web console: server-rendered pages for users (API keys, two-factor) and operators."""

from keygate.console.app import create_console, mount_console

__all__ = ["create_console", "mount_console"]
