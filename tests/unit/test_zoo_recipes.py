"""The zoo's recipes: what a partial build must include, and fine-tunes that cannot be built."""

import pytest

from fledge.devtools.zoo import recipes
from fledge.devtools.zoo.build import _with_sources


def test_a_partial_build_includes_the_sources_of_its_sources():
    # adapter-unsafe is fine-tuned from adapter-improved, an adapter on base: all three, in build order.
    assert _with_sources(["adapter-unsafe"]) == ["base", "adapter-improved", "adapter-unsafe"]
    assert _with_sources(["unsafe", "short-context"]) == ["improved", "unsafe", "short-context"]


def test_a_fine_tune_must_start_from_an_earlier_variant_of_its_kind(monkeypatch):
    unsafe = recipes.RECIPES["unsafe"]
    monkeypatch.setitem(recipes.RECIPES, "unsafe", unsafe.model_copy(update={"init_from": "degraded"}))
    with pytest.raises(ValueError, match="init_from degraded is not an earlier full model"):
        recipes._check_fine_tunes()
    monkeypatch.setitem(recipes.RECIPES, "unsafe", unsafe)
    adapter = recipes.ADAPTERS["adapter-unsafe"]
    monkeypatch.setitem(recipes.ADAPTERS, "adapter-unsafe", adapter.model_copy(update={"rank": 4}))
    with pytest.raises(ValueError, match="init_from adapter-improved is not an earlier adapter like it"):
        recipes._check_fine_tunes()
