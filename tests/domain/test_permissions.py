"""Permission names: read without regard to case, unknown ones refused by name."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate.domain.errors import InvalidRequest
from keygate.domain.permissions import ALL_PERMISSIONS, Permission, format_permissions, parse_permissions


def test_names_are_read_without_regard_to_case() -> None:
    assert parse_permissions(["trading", "WITHDRAW", "DePoSiT"]) == ALL_PERMISSIONS
    assert parse_permissions([" Trading "]) == {Permission.TRADING}


def test_a_comma_separated_string_is_accepted() -> None:
    assert parse_permissions("Trading,deposit") == {Permission.TRADING, Permission.DEPOSIT}
    assert parse_permissions("Trading;Withdraw") == {Permission.TRADING, Permission.WITHDRAW}


def test_none_or_empty_means_read_only() -> None:
    assert parse_permissions(None) == frozenset()
    assert parse_permissions([]) == frozenset()
    assert parse_permissions("") == frozenset()


def test_duplicates_collapse() -> None:
    assert parse_permissions(["Trading", "trading", "TRADING"]) == {Permission.TRADING}


def test_unknown_permission_is_refused_by_name() -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_permissions(["Trading", "Admin"])
    assert "'Admin'" in exc.value.message
    assert exc.value.errorcode == 100 and exc.value.http_status == 400


def test_non_string_permission_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        parse_permissions([1])
    with pytest.raises(InvalidRequest):
        parse_permissions(5)  # type: ignore[arg-type]


def test_format_is_stable_order() -> None:
    assert format_permissions({Permission.DEPOSIT, Permission.TRADING, Permission.WITHDRAW}) == ["Trading", "Withdraw", "Deposit"]
    assert format_permissions(parse_permissions(["deposit", "trading"])) == ["Trading", "Deposit"]


@given(st.lists(st.one_of(st.text(max_size=20), st.integers(), st.none(), st.booleans()), max_size=5))
def test_parsing_only_ever_refuses_with_invalid_request(values: list[object]) -> None:
    try:
        result = parse_permissions(values)
    except InvalidRequest:
        return
    assert result <= ALL_PERMISSIONS
