"""URL blocklist: drop documents whose URL (metadata.url) is on a blocked domain or contains a banned word.

The lists are the user's (a file of one domain per line, or inline); subdomains of a blocked domain are
blocked too. Documents without a URL pass.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field

from tokenmill.documents import Document
from tokenmill.filters.base import Drop
from tokenmill.schema import StrictModel


@functools.lru_cache(maxsize=8)
def _read_list(path: str) -> frozenset[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))


class URLBlocklistFilter(StrictModel):
    name: Literal["url_blocklist"] = "url_blocklist"
    domains: list[str] = Field(default_factory=list, description="blocked domains (subdomains included)")
    domains_file: str | None = Field(None, description="file with one blocked domain per line")
    banned_words: list[str] = Field(default_factory=list, description="words that block a URL anywhere in it")

    def _blocked(self) -> frozenset[str]:
        return frozenset(d.lower() for d in self.domains) | (_read_list(self.domains_file) if self.domains_file else frozenset())

    def __call__(self, doc: Document) -> Document | Drop:
        url = str(doc.metadata.get("url") or "")
        if not url:
            return doc
        host = (urlsplit(url).hostname or "").lower()
        parts = host.split(".")
        blocked = self._blocked()
        if any(".".join(parts[i:]) in blocked for i in range(len(parts))):
            return Drop("blocked_domain")
        if any(word in url.lower() for word in self.banned_words):
            return Drop("banned_word")
        return doc
