"""The shared vocabulary: keys, names and the one template expander (Go's os.Expand grammar)."""

from __future__ import annotations

import pytest

from sidecarless.vocabulary import (
    UnknownTokens,
    expand,
    key_of,
    object_key,
    ref_key,
    valid_namespace_name,
    valid_object_name,
)


def test_keys_of_namespaced_and_cluster_scoped_objects() -> None:
    assert object_key({"metadata": {"namespace": "ns", "name": "a"}}) == "ns/a"
    assert object_key({"metadata": {"name": "pv-1"}}) == "pv-1"
    assert ref_key({"namespace": "ns", "name": "snap", "uid": "x"}) == "ns/snap"
    assert key_of(None, "pv-1") == key_of("", "pv-1") == "pv-1"


@pytest.mark.parametrize(
    ("template", "expanded"),
    [
        ("${pv.name}", "pv-1"),
        ("pre-${pv.name}-post", "pre-pv-1-post"),
        ("$user", "alice"),
        ("$user.suffix", "alice.suffix"),  # a bare name stops at the dot, as os.Expand's does
        ("no tokens", "no tokens"),
        ("trailing $", "trailing $"),
    ],
)
def test_expand_follows_os_expand(template: str, expanded: str) -> None:
    assert expand(template, {"pv.name": "pv-1", "user": "alice"}) == expanded


def test_expand_names_every_unknown_token_in_order() -> None:
    with pytest.raises(UnknownTokens) as raised:
        expand("${a}-${pv.name}-$b", {"pv.name": "x"})
    assert raised.value.tokens == ["a", "b"]


def test_expand_takes_a_lookup_function() -> None:
    assert expand("${X}", lambda token: token.lower()) == "x"


def test_names() -> None:
    assert valid_object_name("a.b-c")
    assert not valid_object_name("A")
    assert valid_namespace_name("team-a")
    assert not valid_namespace_name("team.a")
