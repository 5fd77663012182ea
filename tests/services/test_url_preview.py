"""Reading a page's OpenGraph data never fails on what the page says."""

from __future__ import annotations

import pytest

from pocketserver.services.url_preview import parse_html


@pytest.mark.parametrize(
    "size", ["²", "9" * 5000, "-5", "12px", ""], ids=["superscript_two", "5000_digits", "negative", "unit", "empty"]
)
def test_image_sizes_that_are_not_numbers_are_dropped(size: str) -> None:
    page = f'<meta property="og:image:width" content="{size}"><meta property="og:image:height" content="32">'
    og = parse_html(page.encode(), "utf-8")
    assert "og:image:width" not in og
    assert og["og:image:height"] == 32
