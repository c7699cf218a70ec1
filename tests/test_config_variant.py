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


@pytest.mark.parametrize("config", [steal.StealConfig, clock.ClockConfig, postcopy.PostcopyConfig])
def test_a_config_is_a_view_of_the_run_options(config) -> None:
    """A family's config takes every knob it has from RunOptions (under the
    name its record uses) and gives the same knobs back: one definition of
    the defaults and bounds, no copy that can drift."""
    from dataclasses import asdict, fields

    from kvmharness.scenarios.base import DEFAULTS, RunOptions, family

    opts = RunOptions(contend_ms=77, downtime_ms=33, budget_s=9.5, latency_us=300, pages_per_vcpu=5)
    name = next(iter(family(config.family).variants))
    cfg = config.of(name, 1, opts)
    used = {o: config.renamed.get(o, o) for o in asdict(opts)}
    used = {o: n for o, n in used.items() if n in {f.name for f in fields(config)}}
    # every field but the scenario's own (and postcopy's seed) is a knob of RunOptions
    assert set(used.values()) == {f.name for f in fields(config)} - {"variant", "vcpus", "seed"}
    for opt, mine in used.items():
        assert getattr(cfg, mine) == getattr(opts, opt), (opt, mine)
        assert getattr(cfg.options(), opt) == getattr(opts, opt), opt
        # and the dataclass default is RunOptions' default
        assert getattr(config(name), mine) == getattr(DEFAULTS, opt), (opt, mine)
    assert (cfg.variant, cfg.vcpus) == (name, 1)
