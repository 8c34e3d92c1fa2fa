from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from forwarder.core.richtext import rich_text


def test_paragraphs_and_lists_become_lines_and_entities_are_decoded() -> None:
    result = rich_text(
        "<p>Fish &amp; chips&nbsp;&mdash; <b>now</b></p><ul><li>one</li><li>two</li></ul>"
    )
    assert result.text == "Fish & chips — now\n- one\n- two"


def test_deleted_and_inserted_markup_of_both_kinds() -> None:
    result = rich_text(
        '<p><span class="deleted">old words</span><span class="inserted">new words</span> and '
        "<del>gone</del><ins>added</ins></p>"
    )
    assert result.text == "new words and added"
    assert result.deleted == ["old words", "gone"]
    assert result.inserted == ["new words", "added"]


def test_nested_markup_inside_a_deleted_run_stays_deleted() -> None:
    result = rich_text('<span class="x deleted">a <b>bold</b> b</span>kept')
    assert result.text == "kept"
    assert result.deleted == ["a bold b"]


def test_scripts_are_not_text_and_broken_html_does_not_fail() -> None:
    assert rich_text("<p>hi<script>alert(1)</script></p>").text == "hi"
    assert rich_text("<p>unclosed <b>bold").text == "unclosed bold"


def test_plain_text_with_an_entity_is_only_unescaped() -> None:
    assert rich_text("Under consideration &rarr; Ready").text == "Under consideration → Ready"
    assert rich_text("a < b and c > d").text == "a < b and c > d"


@given(st.text())
def test_any_text_renders_without_raising(value: str) -> None:
    result = rich_text(value)
    assert isinstance(result.text, str)
