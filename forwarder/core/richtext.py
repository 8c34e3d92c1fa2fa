"""Plain text from the rich-text (HTML) values Aha! sends, with its inserted/deleted markup."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

_BLOCK_TAGS = frozenset(
    {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table",
     "blockquote", "pre", "hr"}
)  # fmt: skip
_DELETED_TAGS = frozenset({"del", "s", "strike"})
_INSERTED_TAGS = frozenset({"ins"})
_HIDDEN_TAGS = frozenset({"script", "style", "template"})
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_LOOKS_LIKE_HTML = re.compile(r"<[A-Za-z!/]")


@dataclass
class RichText:
    """The text a reader sees, and the runs of text the markup marks as deleted or inserted."""

    text: str
    deleted: list[str] = field(default_factory=list)
    inserted: list[str] = field(default_factory=list)


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.deleted: list[str] = []
        self.inserted: list[str] = []
        # One entry per open element: "deleted", "inserted" or None, so nesting unwinds right.
        self._marks: list[tuple[str, str | None]] = []

    def _mark_of(self, tag: str, attrs: list[tuple[str, str | None]]) -> str | None:
        classes = " ".join(value or "" for name, value in attrs if name == "class").split()
        if tag in _HIDDEN_TAGS:
            return "hidden"
        if tag in _DELETED_TAGS or "deleted" in classes:
            return "deleted"
        if tag in _INSERTED_TAGS or "inserted" in classes:
            return "inserted"
        return None

    def _inside(self, mark: str) -> bool:
        return any(open_mark == mark for _, open_mark in self._marks)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")
        if tag not in ("br", "hr", "img", "input", "meta", "link"):
            mark = self._mark_of(tag, attrs)
            self._marks.append((tag, mark))
            if mark == "deleted":
                self.deleted.append("")
            elif mark == "inserted":
                self.inserted.append("")

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._marks) - 1, -1, -1):
            if self._marks[index][0] == tag:
                del self._marks[index:]
                break
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._inside("hidden"):
            return
        if self._inside("deleted"):
            if self.deleted:
                self.deleted[-1] += data
            return
        if self._inside("inserted") and self.inserted:
            self.inserted[-1] += data
        self.parts.append(data)


def _tidy(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def rich_text(value: str) -> RichText:
    """Plain text of an HTML value: entities decoded, deleted runs left out and listed apart."""
    if not _LOOKS_LIKE_HTML.search(value):
        return RichText(html.unescape(value))
    extractor = _Extractor()
    extractor.feed(value)
    extractor.close()
    return RichText(
        _tidy("".join(extractor.parts)),
        [run for run in (_tidy(text) for text in extractor.deleted) if run],
        [run for run in (_tidy(text) for text in extractor.inserted) if run],
    )
