"""Persistence: SQLAlchemy Core tables, Alembic migrations, repositories, and the master key file."""
