"""PII redaction: rewrites e-mail addresses, IP addresses and phone numbers instead of dropping the text."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field

from tokenmill.documents import Document
from tokenmill.schema import StrictModel

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
IPV6 = re.compile(r"\b(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}\b")
# International (+44 20 7946 0958), North American ((555) 123-4567, 555-123-4567) and grouped forms.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?!\w)")


class PIIRedaction(StrictModel):
    name: Literal["pii"] = "pii"
    email: str | None = Field("<EMAIL>", description="replacement; None keeps e-mail addresses")
    ip: str | None = Field("<IP>", description="replacement; None keeps IP addresses")
    phone: str | None = Field("<PHONE>", description="replacement; None keeps phone numbers")

    def __call__(self, doc: Document) -> Document:
        text = doc.text
        if self.email is not None:
            text = EMAIL.sub(self.email, text)
        if self.ip is not None:
            text = IPV4.sub(lambda m: self.ip if _is_ip(m.group()) else m.group(), text)
            text = IPV6.sub(lambda m: self.ip if _is_ip(m.group()) else m.group(), text)
        if self.phone is not None:
            text = PHONE.sub(self.phone, text)
        doc.text = text
        return doc


def _is_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
        return True
    except ValueError:
        return False
