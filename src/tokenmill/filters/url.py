"""URL blocklist: drop documents whose URL (metadata.url) is on a blocked domain or contains a banned word.

The lists are the user's (a file of one domain per line, or inline); subdomains of a blocked domain are
blocked too. Documents without a URL pass.
"""

from __future__ import annotations

import functools
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field

from tokenmill.documents import Document
from tokenmill.filters.base import Drop, read_list
from tokenmill.schema import StrictModel


@functools.lru_cache(maxsize=8)
def _blocked(domains: tuple[str, ...], domains_file: str | None) -> frozenset[str]:
    return frozenset(d.lower() for d in domains) | (read_list(domains_file) if domains_file else frozenset())


class URLBlocklistFilter(StrictModel):
    name: Literal["url_blocklist"] = "url_blocklist"
    domains: list[str] = Field(default_factory=list, description="blocked domains (subdomains included)")
    domains_file: str | None = Field(None, description="file with one blocked domain per line")
    banned_words: list[str] = Field(default_factory=list, description="words that block a URL anywhere in it")

    def __call__(self, doc: Document) -> Document | Drop:
        url = str(doc.metadata.get("url") or "")
        if not url:
            return doc
        host = (urlsplit(url).hostname or "").lower()
        parts = host.split(".")
        blocked = _blocked(tuple(self.domains), self.domains_file)
        if any(".".join(parts[i:]) in blocked for i in range(len(parts))):
            return Drop("blocked_domain")
        if any(word in url.lower() for word in self.banned_words):
            return Drop("banned_word")
        return doc
