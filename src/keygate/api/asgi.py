"""ASGI entry point for multi-worker servers: ``uvicorn keygate.api.asgi:app``."""

from keygate.api.app import create_app

app = create_app()
