"""UserId parsing (string or number) and usernames."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate.domain.errors import InvalidRequest
from keygate.domain.users import MAX_USER_ID, check_username, parse_user_id


def test_user_id_as_number_or_string() -> None:
    assert parse_user_id(42) == 42
    assert parse_user_id("42") == 42
    assert parse_user_id(" 42 ") == 42
    assert parse_user_id(str(MAX_USER_ID)) == MAX_USER_ID


@pytest.mark.parametrize("bad", [0, -1, "0", "-1", "", "abc", "4 2", "4.2", 4.2, True, None, [], {}, "²", "٤٢", MAX_USER_ID + 1, "9" * 30])
def test_bad_user_ids_are_invalid_requests(bad: object) -> None:
    with pytest.raises(InvalidRequest):
        parse_user_id(bad)


@given(st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.none(), st.booleans()))
def test_user_id_parsing_only_refuses_with_invalid_request(value: object) -> None:
    try:
        uid = parse_user_id(value)
    except InvalidRequest:
        return
    assert 0 < uid <= MAX_USER_ID


def test_usernames() -> None:
    assert check_username("alice.b-c_d@x+y") == "alice.b-c_d@x+y"
    for bad in ("a", "-alice", "al ice", "x" * 65, "", None, "alice\n"):
        with pytest.raises(InvalidRequest):
            check_username(bad)
