"""Uploaded files as text (txt, md, html, pdf) and that text in overlapping token windows."""

from __future__ import annotations

import io
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath

TEXT_TYPES = {".txt", ".md", ".markdown", ".text", ".csv", ".json"}
HTML_TYPES = {".html", ".htm"}
SUPPORTED = sorted(TEXT_TYPES | HTML_TYPES | {".pdf"})


class DocumentError(ValueError):
    """A file that cannot be read as text (its type, its encoding, a broken PDF)."""


class _HtmlText(HTMLParser):
    SKIP = {"script", "style", "head", "noscript", "template"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
             "article", "pre", "blockquote", "table", "ul", "ol"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self._skipping:
            self._skipping -= 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skipping:
            self.parts.append(data)


def _decode(data: bytes, filename: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DocumentError(f"{filename}: not UTF-8 text") from None


def extract_text(filename: str, data: bytes) -> str:
    """The text of a file, by its extension."""
    ext = PurePath(filename).suffix.lower()
    if ext in TEXT_TYPES:
        return _decode(data, filename)
    if ext in HTML_TYPES:
        parser = _HtmlText()
        parser.feed(_decode(data, filename))
        parser.close()
        lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
        return "\n".join(line for line in lines if line)
    if ext == ".pdf":
        from pypdf import PdfReader

        try:
            reader = PdfReader(io.BytesIO(data))
            return "\n\n".join(page.extract_text() or "" for page in reader.pages)
        except Exception as e:  # noqa: BLE001 - pypdf raises many kinds on a broken file
            raise DocumentError(f"{filename}: not a readable PDF ({e})") from None
    raise DocumentError(f"{filename}: unsupported file type {ext or '(none)'!r}; supported: "
                        f"{', '.join(SUPPORTED)}")


@dataclass(frozen=True)
class Chunking:
    """OpenAI's static chunking strategy: windows of at most `max_tokens` tokens, each
    starting `max_tokens - overlap` tokens after the previous one."""

    max_tokens: int
    overlap: int

    def strategy(self) -> dict:
        return {"type": "static", "static": {"max_chunk_size_tokens": self.max_tokens,
                                             "chunk_overlap_tokens": self.overlap}}


def chunk_text(text: str, tokenizer, chunking: Chunking) -> list[str]:
    """`text` cut at token boundaries (a `tokenizers.Tokenizer`'s character offsets) into
    overlapping windows; each chunk is the original text between its first and last token."""
    enc = tokenizer.encode(text, add_special_tokens=False)
    offsets = [o for o in enc.offsets if o[1] > o[0]]
    if not offsets:
        return []
    step = chunking.max_tokens - chunking.overlap
    chunks = []
    for start in range(0, len(offsets), step):
        window = offsets[start:start + chunking.max_tokens]
        chunks.append(text[window[0][0]:window[-1][1]].strip())
        if start + chunking.max_tokens >= len(offsets):
            break
    return [c for c in chunks if c]
