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
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0
        self._div_depth = 0
        self._hidden_at: int | None = None  # div depth where a display:none block began
        self._links: list[tuple[str, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "div":
            self._div_depth += 1
            style = (dict(attrs).get("style") or "").replace(" ", "").lower()
            if self._hidden_at is None and "display:none" in style:
                self._hidden_at = self._div_depth
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
        if tag in _SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BLOCK:
            self.parts.append("\n")
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = "".join(self.parts[start:]).strip()
            if href and not href.startswith(("#", "mailto:")) and href != label:
                self.parts.append(f" ({href})" if label else href)

    def handle_data(self, data: str) -> None:
        if not self._skip_depth and self._hidden_at is None:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Readable text for an HTML document: blocks on their own lines, links as ``text (url)``."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (_SPACES.sub(" ", line).strip() for line in "".join(parser.parts).split("\n"))
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
