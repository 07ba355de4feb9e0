"""IP allowlists: IPv4, IPv6, CIDR ranges, IPv4-mapped IPv6, and refusals that name the entry."""

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from keygate.domain.errors import InvalidRequest
from keygate.domain.iprules import MAX_ENTRIES, IpAllowlist


def test_empty_allows_any_address() -> None:
    for empty in (IpAllowlist(), IpAllowlist.parse([]), IpAllowlist.parse(""), IpAllowlist.parse(None)):
        assert empty.allows_any
        assert empty.allows("203.0.113.9") and empty.allows("2001:db8::1") and empty.allows(None)


def test_single_ipv4() -> None:
    rules = IpAllowlist.parse(["203.0.113.9"])
    assert rules.allows("203.0.113.9")
    assert not rules.allows("203.0.113.10")
    assert not rules.allows(None)
    assert not rules.allows("not an ip")
    assert rules.as_strings() == ["203.0.113.9"]


def test_ipv4_cidr() -> None:
    rules = IpAllowlist.parse(["10.1.0.0/16"])
    assert rules.allows("10.1.255.254")
    assert not rules.allows("10.2.0.1")
    assert rules.as_strings() == ["10.1.0.0/16"]


def test_ipv6_and_ipv6_cidr() -> None:
    rules = IpAllowlist.parse(["2001:db8::1", "2001:db8:abcd::/48"])
    assert rules.allows("2001:db8::1")
    assert rules.allows("2001:DB8:ABCD:1::5")
    assert not rules.allows("2001:db8::2")
    assert not rules.allows("2001:db9::1")
    assert not rules.allows("127.0.0.1")
    assert rules.as_strings() == ["2001:db8::1", "2001:db8:abcd::/48"]


def test_ipv4_mapped_client_address_matches_ipv4_rules() -> None:
    rules = IpAllowlist.parse(["192.0.2.0/24"])
    assert rules.allows("::ffff:192.0.2.7")
    assert not rules.allows("::ffff:198.51.100.7")


def test_ipv4_mapped_entry_matches_the_ipv4_client() -> None:
    rules = IpAllowlist.parse(["::ffff:192.0.2.7"])
    assert rules.allows("192.0.2.7")
    assert rules.allows("::ffff:192.0.2.7")
    assert not rules.allows("192.0.2.8")
    ranged = IpAllowlist.parse(["::ffff:192.0.2.0/120"])
    assert ranged.allows("192.0.2.200")
    assert not ranged.allows("192.0.3.1")


def test_ipv4_rule_does_not_match_ipv6_client() -> None:
    assert not IpAllowlist.parse(["0.0.0.0/0"]).allows("2001:db8::1")


def test_string_with_separators_and_duplicates() -> None:
    rules = IpAllowlist.parse("10.0.0.1, 10.0.0.2;10.0.0.3\n10.0.0.1")
    assert rules.as_strings() == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert IpAllowlist.parse(rules.serialize()) == rules


def test_host_bits_in_cidr_are_normalised() -> None:
    assert IpAllowlist.parse(["10.1.2.3/8"]).as_strings() == ["10.0.0.0/8"]


@pytest.mark.parametrize("entry", ["10.0.0.256", "10.0.0.0/33", "hello", "2001:db8::/129", "1.2.3", "::g", "10.0.0.1/-1"])
def test_invalid_entry_is_refused_naming_it(entry: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        IpAllowlist.parse(["10.0.0.1", entry])
    assert entry in exc.value.message
    assert exc.value.http_status == 400


def test_non_string_entries_and_values_are_refused() -> None:
    for bad in ([5], [None], [["10.0.0.1"]], 5, 1.5, True, {"10.0.0.1": 1}):
        with pytest.raises(InvalidRequest):
            IpAllowlist.parse(bad)  # type: ignore[arg-type]


def test_too_many_entries() -> None:
    IpAllowlist.parse([f"10.0.{i // 250}.{i % 250}" for i in range(MAX_ENTRIES)])
    with pytest.raises(InvalidRequest):
        IpAllowlist.parse([f"10.0.{i // 250}.{i % 250}" for i in range(MAX_ENTRIES + 1)])


@given(
    st.one_of(
        st.text(max_size=60),
        st.lists(st.one_of(st.text(max_size=45), st.ip_addresses().map(str), st.integers(), st.none()), max_size=6),
        st.integers(),
        st.none(),
        st.dictionaries(st.text(max_size=10), st.integers(), max_size=3),
    )
)
def test_parsing_never_raises_anything_but_invalid_request(value: object) -> None:
    try:
        rules = IpAllowlist.parse(value)  # type: ignore[arg-type]
    except InvalidRequest:
        return
    assert IpAllowlist.parse(rules.serialize()) == rules


@given(st.ip_addresses(), st.data())
def test_any_address_is_allowed_by_a_list_holding_it(address: object, data: st.DataObject) -> None:
    rules = IpAllowlist.parse([str(address)])
    assert rules.allows(str(address))
    prefix = data.draw(st.integers(0, address.max_prefixlen))  # type: ignore[attr-defined]
    # A mapped client is read as IPv4; an IPv6 range wider than ::ffff:0:0/96 is not an IPv4 rule.
    assume(getattr(address, "ipv4_mapped", None) is None or prefix >= 96)
    assert IpAllowlist.parse([f"{address}/{prefix}"]).allows(str(address))
