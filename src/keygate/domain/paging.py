"""Pages of a listing, and what an operator's search box means. Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from keygate.domain.errors import InvalidRequest

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_PAGE = 1_000_000
MAX_SEARCH = 64
MAX_USER_ID_DIGITS = 10  # user ids are 32-bit: a longer number can only be the start of an API key
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing: no total count (counting a million rows is what paging avoids)."""

    items: list[T]
    page: int
    size: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.page > 1

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size


def check_paging(page: int, size: int) -> tuple[int, int]:
    """``(page, size)`` checked: page from 1, size from 1 to ``MAX_PAGE_SIZE``."""
    if isinstance(page, bool) or not isinstance(page, int) or not 1 <= page <= MAX_PAGE:
        raise InvalidRequest(f"Page must be a whole number from 1 to {MAX_PAGE}")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"The page size must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return page, size


class Search(NamedTuple):
    """What a search box holds: a user id (a number), else a username prefix (any case); ``key_prefix``
    is set when the text could also be the start of an API key (lower-case hex). A short number is
    both a user id and a key prefix: one API key in forty starts with eight decimal digits."""

    user_id: int | None = None
    name_prefix: str = ""
    key_prefix: str = ""

    @property
    def empty(self) -> bool:
        return self.user_id is None and not self.name_prefix and not self.key_prefix


def parse_search(text: object) -> Search:
    """A number of up to 10 digits is a user id (exactly) and an API-key prefix; other text is a
    case-insensitive username prefix and, when it is hex, an API-key prefix too."""
    if text is None:
        return Search()
    if not isinstance(text, str):
        raise InvalidRequest("Search must be text")
    text = text.strip()
    if len(text) > MAX_SEARCH:
        raise InvalidRequest(f"Search must be at most {MAX_SEARCH} characters")
    if not text:
        return Search()
    lowered = text.lower()
    if text.isascii() and text.isdigit():
        if len(text) <= MAX_USER_ID_DIGITS:
            return Search(user_id=int(text), key_prefix=text)
        return Search(name_prefix=text, key_prefix=text)  # a username may be all digits
    return Search(name_prefix=lowered, key_prefix=lowered if _HEX.fullmatch(lowered) else "")
