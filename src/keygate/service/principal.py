"""Who is acting, and with what rights: every use case takes one of these and decides by it.

A principal is one of:

- a person signed in with a password (``via=PASSWORD``): their own rights, and an administrator's
  if they are one;
- an API key, through a key session or a signed request (``via=KEY``): the key's permissions as
  they are now, over its owner's own data, and never an administrator's rights;
- the operator (``via=OPERATOR``): the ``keygate`` command on the server's own machine, which can
  read the database and the master key anyway. It may do what an administrator may, and the audit
  trail records it as ``operator``, never as the user it acted on.
"""

from __future__ import annotations

from typing import NamedTuple

from keygate.domain.errors import Forbidden, InvalidRequest
from keygate.domain.permissions import ALL_PERMISSIONS, Permission
from keygate.domain.sessions import SessionKind
from keygate.domain.users import User


class Principal(NamedTuple):
    """Made for every private call: a ``NamedTuple`` (immutable, and cheap to build), not a frozen dataclass."""

    user: User | None  # None only for the operator
    permissions: frozenset[Permission]
    via: SessionKind  # PASSWORD for a signed-in person; KEY for a key session or a signed request; OPERATOR
    api_key: str | None = None
    token_hash: str | None = None

    @property
    def user_id(self) -> int:
        """The signed-in user's id (0 for the operator, who is no user)."""
        return self.user.user_id if self.user is not None else 0

    @property
    def is_operator(self) -> bool:
        return self.via is SessionKind.OPERATOR

    @property
    def is_admin(self) -> bool:
        """Admin rights come with a password session of an administrator, or as the operator; never
        through an API key."""
        if self.via is SessionKind.OPERATOR:
            return True
        return self.via is SessionKind.PASSWORD and self.user is not None and self.user.is_admin

    def require_password_session(self) -> None:
        if self.via is not SessionKind.PASSWORD and self.via is not SessionKind.OPERATOR:
            raise Forbidden("Not Authorized: this needs a password session, not an API key")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("Not Authorized: this needs an administrator")

    def require_permission(self, permission: Permission) -> None:
        if self.via is SessionKind.KEY and permission not in self.permissions:
            raise Forbidden(f"Not Authorized: this key lacks the {permission.value} permission")

    def may_act_for(self, user_id: int) -> bool:
        return user_id == self.user_id or self.is_admin

    def require_self_or_admin(self, user_id: int, what: str) -> None:
        if not self.may_act_for(user_id):
            raise Forbidden(f"Not Authorized: you may only {what}")

    def require_not_self(self, user_id: int, message: str) -> None:
        if self.user is not None and user_id == self.user.user_id:
            raise InvalidRequest(message)

    @property
    def audit_actor(self) -> tuple[int | None, str | None]:
        """``(actor_user_id, actor)`` for the audit trail."""
        if self.via is SessionKind.OPERATOR:
            return None, "operator"
        return self.user_id, None


OPERATOR = Principal(None, ALL_PERMISSIONS, SessionKind.OPERATOR)
