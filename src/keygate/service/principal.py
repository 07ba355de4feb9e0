"""Who is calling, and with what rights, once a request has been authenticated."""

from __future__ import annotations

from typing import NamedTuple

from keygate.domain.errors import Forbidden
from keygate.domain.permissions import Permission
from keygate.domain.sessions import SessionKind
from keygate.domain.users import User


class Principal(NamedTuple):
    """Made for every private call: a ``NamedTuple`` (immutable, and cheap to build), not a frozen dataclass."""

    user: User
    permissions: frozenset[Permission]
    via: SessionKind  # PASSWORD for a signed-in person; KEY for a key session or a signed request
    api_key: str | None = None
    token_hash: str | None = None

    @property
    def user_id(self) -> int:
        return self.user.user_id

    @property
    def is_admin(self) -> bool:
        """Admin rights come only with a password session, never through an API key."""
        return self.user.is_admin and self.via is SessionKind.PASSWORD

    def require_password_session(self) -> None:
        if self.via is not SessionKind.PASSWORD:
            raise Forbidden("Not Authorized: managing API keys requires a password session, not an API key")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("Not Authorized: this needs an administrator")

    def require_permission(self, permission: Permission) -> None:
        if self.via is SessionKind.KEY and permission not in self.permissions:
            raise Forbidden(f"Not Authorized: this key lacks the {permission.value} permission")

    def may_act_for(self, user_id: int) -> bool:
        return user_id == self.user_id or self.is_admin


def operator_acting_as(user: User) -> Principal:
    """The local operator (CLI on the server's own machine) acting with the user's full rights."""
    from keygate.domain.permissions import ALL_PERMISSIONS

    return Principal(user, ALL_PERMISSIONS, SessionKind.PASSWORD)
