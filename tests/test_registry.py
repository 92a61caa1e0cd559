"""rws.registry: the one registry type behind codecs, methods, models, corruptions and attacks."""

from __future__ import annotations

import pytest

from rws.errors import UnknownNameError
from rws.registry import Entry, Registry, summary_of


def _registry() -> Registry[object]:
    reg: Registry[object] = Registry("widget")

    @reg.register("b-one", url="https://example.org/b", family="b")
    def b_one() -> None:
        """First line is the summary.

        Not this one.
        """

    reg.add("a-two", 2, summary="two")
    reg.add("b-three", 3)
    return reg


def test_register_add_and_read_back() -> None:
    reg = _registry()
    entry = reg.entry("b-one")
    assert isinstance(entry, Entry) and entry.name == "b-one"
    assert entry.summary == "First line is the summary." and entry.url == "https://example.org/b"
    assert entry.info == {"family": "b"}
    assert reg.get("a-two") == 2 and reg.entry("a-two").summary == "two"
    assert "b-three" in reg and "nope" not in reg and len(reg) == 3
    assert [e.name for e in reg] == ["b-one", "a-two", "b-three"]


def test_names_glob_in_registration_order() -> None:
    reg = _registry()
    assert reg.names() == ["b-one", "a-two", "b-three"]
    assert reg.names("b-*") == ["b-one", "b-three"]
    assert reg.names("*two") == ["a-two"]
    assert reg.names("B-*") == []  # case-sensitive
    assert reg.names("z*") == []


def test_duplicate_name_raises() -> None:
    reg = _registry()
    with pytest.raises(ValueError, match="widget 'a-two' is already registered"):
        reg.add("a-two", 5)
    assert reg.get("a-two") == 2


def test_unknown_name_lists_the_choices() -> None:
    reg = _registry()
    with pytest.raises(UnknownNameError) as e:
        reg.get("c")
    assert str(e.value) == "unknown widget 'c'; choose one of: a-two, b-one, b-three"
    assert e.value.choices == ["a-two", "b-one", "b-three"] and e.value.exit_code == 2
    assert e.value.suggestion is None
    with pytest.raises(UnknownNameError, match=r"; did you mean 'b-three'\?$") as e:
        reg.get("B-thre")
    assert e.value.suggestion == "b-three"


def test_summary_is_the_whole_first_paragraph() -> None:
    """A summary wrapped over several docstring lines is not cut at the first line break."""
    reg: Registry[object] = Registry("thing")

    @reg.register("long")
    def long() -> None:
        """First line of a summary
        that wraps here.

        Details that are not part of it.
        """

    assert reg.entry("long").summary == "First line of a summary that wraps here."
    assert summary_of(lambda: None) == ""  # no docstring, no summary
