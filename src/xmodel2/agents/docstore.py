"""A local stand-in for Wikipedia: pages by title, and BM25 search over them for suggestions.

A store is read from JSONL(.gz) files of `{"title": ..., "text": ...}` (other keys are ignored);
lines with the same title are joined as paragraphs of one page. The default store is the
bundled Wikipedia lead paragraphs, all three splits (10,033 pages): the agents only retrieve
from it, nothing is trained on it, so the held-out rule of the corpus does not apply here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from xmodel2.errors import UserError
from xmodel2.fileio import iter_jsonl_objects

BUNDLED_SPLITS = ("wiki-train", "wiki-validation", "wiki-test")
# A sentence ends at . ! or ? followed by space and something that can start a sentence; this
# keeps "U.S. president" and "1,800 ft." inside their sentences more often than a split on ". ".
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


def sentences(page: str) -> list[str]:
    """The page's sentences, paragraph by paragraph, stripped and non-empty."""
    found = []
    for paragraph in page.split("\n"):
        found += [s.strip() for s in SENTENCE_END.split(paragraph.strip()) if s.strip()]
    return found


class DocStore:
    """Pages by exact title, a case-insensitive title index, and a BM25 index over title + text."""

    def __init__(self, pages: dict[str, str], description: str) -> None:
        if not pages:
            raise UserError(f"{description}: the document store has no pages")
        self.pages = pages
        self.description = description
        self.titles = list(pages)
        self._folded: dict[str, str] = {}
        for title in self.titles:
            self._folded.setdefault(title.casefold(), title)
        self._bm25 = None

    def __len__(self) -> int:
        return len(self.pages)

    def find(self, title: str) -> str | None:
        """The stored title equal to `title`, exactly or else ignoring case; None if there is none."""
        title = " ".join(title.split())
        if title in self.pages:
            return title
        return self._folded.get(title.casefold())

    def similar(self, query: str, k: int = 5) -> list[str]:
        """Titles of the `k` best pages by BM25 (only pages that share a word with the query)."""
        tokenizer, retriever = self._index()
        ids = tokenizer.tokenize([query], update_vocab=False, show_progress=False, return_as="ids")
        if not any(ids[0]):
            return []
        found, scores = retriever.retrieve(ids, k=min(k, len(self.titles)), show_progress=False, n_threads=1)
        return [self.titles[int(i)] for i, score in zip(found[0], scores[0]) if score > 0]

    def _index(self):
        """Built on the first search that misses: loading a store stays cheap for exact lookups."""
        if self._bm25 is None:
            import bm25s

            tokenizer = bm25s.tokenization.Tokenizer(stopwords="en")
            ids = tokenizer.tokenize([f"{title} {self.pages[title]}" for title in self.titles],
                                     show_progress=False, return_as="ids")
            retriever = bm25s.BM25()
            retriever.index(ids, show_progress=False)
            self._bm25 = tokenizer, retriever
        return self._bm25


def read_pages(paths: Iterable[str | Path]) -> dict[str, str]:
    pages: dict[str, list[str]] = {}
    for path in paths:
        path = Path(path)
        for number, row in iter_jsonl_objects(path, "document store file"):
            for key in ("title", "text"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise UserError(f"{path}:{number}: key {key!r} must be a non-empty string")
            title = " ".join(row["title"].split())
            pages.setdefault(title, []).append(row["text"].strip())
    return {title: "\n".join(parts) for title, parts in pages.items()}


def load_docstore(paths: Iterable[str | Path] | None = None) -> DocStore:
    """The store from `paths` (files, or folders of *.jsonl / *.jsonl.gz); None: the bundled paragraphs."""
    if paths is None:
        from xmodel2.data.corpus import corpus_file

        files = [corpus_file(name) for name in BUNDLED_SPLITS]
        pages = read_pages(files)
        return DocStore(pages, f"offline Wikipedia: bundled lead paragraphs, {len(pages):,} pages")
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted([*path.glob("*.jsonl"), *path.glob("*.jsonl.gz")])
            if not inside:
                raise UserError(f"{path}: no .jsonl or .jsonl.gz files in this folder")
            files += inside
        else:
            files.append(path)
    pages = read_pages(files)
    names = ", ".join(str(p) for p in files[:3]) + (", ..." if len(files) > 3 else "")
    return DocStore(pages, f"offline Wikipedia: {names}, {len(pages):,} pages")
