"""Every family's config refuses a variant it does not have, by one rule
(lifecycle.check_variant): the family, the name, and the names it knows."""

from __future__ import annotations

import pytest

from kvmharness.scenarios import clock, postcopy, steal


@pytest.mark.parametrize(
    ("family", "config"),
    [
        (steal.FAMILY, steal.StealConfig),
        (clock.FAMILY, clock.ClockConfig),
        (postcopy.FAMILY, postcopy.PostcopyConfig),
    ],
)
def test_an_unknown_variant_is_refused_naming_the_family_and_the_known(family, config) -> None:
    with pytest.raises(ValueError, match=f"unknown {family.name} variant 'no-such'") as err:
        config("no-such").validate()
    first = next(iter(family.variants))
    assert f"known: {first}, " in str(err.value)
    config(first, max(family.default_vcpus)).validate()  # a known one passes
