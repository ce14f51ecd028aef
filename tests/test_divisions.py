"""GB/T 2260 division codes as a user meets them: names, tiers, typos and containment."""

from __future__ import annotations

import pytest

from node.divisions import (
    Division,
    Tier,
    ancestors,
    county_codes_under,
    full_name,
    is_within,
    lookup_division,
    tier_of,
)
from node.errors import UserError


def test_county_city_province_of_nanjing() -> None:
    assert lookup_division("320102") == Division("320102", "玄武区", Tier.COUNTY, "江苏省", False)
    city = lookup_division("320100")
    assert (city.name, city.tier, city.province, city.retired) == (
        "南京市",
        Tier.CITY,
        "江苏省",
        False,
    )
    province = lookup_division("320000")
    assert (province.name, province.tier, province.province) == ("江苏省", Tier.PROVINCE, "江苏省")


@pytest.mark.parametrize(
    ("code", "tier"),
    [("320102", Tier.COUNTY), ("320100", Tier.CITY), ("320000", Tier.PROVINCE)],
)
def test_tier_of_is_the_shape_rule(code: str, tier: Tier) -> None:
    assert tier_of(code) is tier
    assert tier == tier.value  # a str, so it serialises as "county" etc.


@pytest.mark.parametrize("code", ["32010", "abcdef", "3201020", "", "３２０１０２"])
def test_malformed_codes_are_rejected_with_the_code_quoted(code: str) -> None:
    with pytest.raises(UserError, match="6 ASCII digits") as info:
        lookup_division(code)
    assert repr(code) in str(info.value)
    with pytest.raises(UserError):
        tier_of(code)


@pytest.mark.parametrize("code", ["999999", "320199", "329900"])
def test_unknown_codes_are_rejected_with_the_code_quoted(code: str) -> None:
    with pytest.raises(UserError, match="not a known") as info:
        lookup_division(code)
    assert f"'{code}'" in str(info.value)


def test_retired_code_is_returned_and_marked() -> None:
    old = lookup_division("110103")  # 崇文区, merged into 东城区 in 2010
    assert old.name == "崇文区"
    assert old.retired
    assert not lookup_division("110101").retired


def test_renamed_code_takes_its_current_name() -> None:
    assert lookup_division("120110").name == "东丽区"  # was 东郊区 until 1991


def test_municipality_placeholder_city_is_named_after_its_province() -> None:
    city = lookup_division("110100")  # listed only as 市辖区
    assert city.tier is Tier.CITY
    assert city.name == "北京市市辖区"
    assert ancestors("110101") == ["110100", "110000"]
    assert full_name("110101") == "北京市东城区"


def test_full_name_as_written_in_addresses() -> None:
    assert full_name("320102") == "江苏省南京市玄武区"
    assert full_name("320100") == "江苏省南京市"
    assert full_name("320000") == "江苏省"


def test_ancestors_nearest_first() -> None:
    assert ancestors("320102") == ["320100", "320000"]
    assert ancestors("320100") == ["320000"]
    assert ancestors("320000") == []


def test_is_within() -> None:
    assert is_within("320102", "320100")
    assert is_within("320102", "320000")
    assert is_within("320102", "320102")
    assert not is_within("320102", "320200")
    assert not is_within("320100", "320102")
    assert not is_within("320102", "330000")
    with pytest.raises(UserError):
        is_within("320102", "3201")


def test_county_codes_under_city_and_province() -> None:
    nanjing = county_codes_under("320100")
    assert nanjing == sorted(nanjing)
    assert "320102" in nanjing
    assert "320103" not in nanjing  # 白下区, retired 2013
    assert "320101" not in nanjing  # 市辖区 placeholder, not a county
    assert len(nanjing) == 11
    jiangsu = county_codes_under("320000")
    assert set(nanjing) < set(jiangsu)
    assert all(tier_of(c) is Tier.COUNTY and is_within(c, "320000") for c in jiangsu)
    assert not any(lookup_division(c).retired for c in jiangsu)


def test_county_codes_under_rejects_a_county_and_unknown_codes() -> None:
    with pytest.raises(UserError, match="'320102' is a county"):
        county_codes_under("320102")
    with pytest.raises(UserError, match="'999900'"):
        county_codes_under("999900")
