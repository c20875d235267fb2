"""Plain-text rendering of an HTML email, for the text/plain alternative part."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_SKIP = frozenset({"head", "style", "script", "title", "noscript"})
_BLOCK = frozenset(
    {
        "p", "div", "table", "tr", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
        "section", "article", "header", "footer", "blockquote", "hr", "center",
    }
)
#: Blocks that start a line but end none: table rows and list items follow one another
#: without blank lines between them.
_LINES = frozenset({"tr", "li"})
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0
        self._div_depth = 0
        self._hidden_at: int | None = None  # div depth where a display:none block began
        self._links: list[tuple[str, int]] = []
        self._cells: list[int] = []  # per open table, its open cells (td/th)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "div":
            self._div_depth += 1
            style = (dict(attrs).get("style") or "").replace(" ", "").lower()
            if self._hidden_at is None and "display:none" in style:
                self._hidden_at = self._div_depth
        if tag == "table":
            self._cells.append(0)
        elif tag in {"td", "th"} and self._cells:
            self._cells[-1] += 1
        if tag in _SKIP:
            self._skip_depth += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCK:
            self.parts.append("\n\n" if tag in {"p", "h1", "h2", "h3", "table"} else "\n")
            if tag == "li":
                self.parts.append("- ")
            elif tag == "hr":
                self.parts.append("----------\n")
        elif tag in {"td", "th"}:
            self.parts.append(" ")
        elif tag == "a":
            self._links.append((dict(attrs).get("href") or "", len(self.parts)))

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            if self._hidden_at == self._div_depth:
                self._hidden_at = None
            self._div_depth = max(0, self._div_depth - 1)
        if tag == "table" and self._cells:
            self._cells.pop()
        elif tag in {"td", "th"} and self._cells:
            self._cells[-1] = max(0, self._cells[-1] - 1)
        if tag in _SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BLOCK and tag not in _LINES:
            self.parts.append("\n")
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = "".join(self.parts[start:]).strip()
            if href and not href.startswith(("#", "mailto:")) and href != label:
                self.parts.append(f" ({href})" if label else href)

    def handle_data(self, data: str) -> None:
        if self._cells and not self._cells[-1]:
            # Between rows and cells whitespace is not content (HTML drops it too); only
            # template statements stand there, and their indentation must not end lines.
            data = "".join(data.split())
        if not self._skip_depth and self._hidden_at is None:
            # Line breaks in the source are spaces in HTML: only elements break lines.
            self.parts.append(data.replace("\n", " "))


def html_to_text(html: str) -> str:
    """Readable text for an HTML document: blocks on their own lines, links as ``text (url)``."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (_SPACES.sub(" ", line).strip() for line in "".join(parser.parts).split("\n"))
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
