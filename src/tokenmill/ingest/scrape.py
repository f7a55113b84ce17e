"""Polite scraping of a URL list (a `.urls` file, one URL per line): fetch, then extract with trafilatura.

Politeness: robots.txt is honoured (per host, cached), requests to one host are at least `host_delay_s`
apart, at most `concurrency` requests are in flight, each has a timeout, and failures that may pass
(timeouts, 429, 5xx) are retried with exponential backoff. Only http and https are fetched.

Resumable: every outcome is appended to `<list>.fetched.jsonl` beside the list; a re-run reads pages from
that record instead of fetching them again, so a killed scrape continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
import urllib.robotparser
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field

from tokenmill.schema import StrictModel

log = logging.getLogger(__name__)
RETRYABLE = {429, 500, 502, 503, 504}


class ScrapeConfig(StrictModel):
    concurrency: int = Field(4, gt=0, description="requests in flight at once")
    host_delay_s: float = Field(1.0, ge=0, description="seconds between two requests to the same host")
    timeout_s: float = Field(20.0, gt=0, description="per request")
    retries: int = Field(3, ge=0, description="extra attempts after a timeout, 429 or 5xx")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each time")
    user_agent: str = Field("tokenmill-scraper/0.1 (+https://github.com/tokenmill)", description="sent with every request")
    respect_robots: bool = True


class HostClock:
    """Hands out request slots so that requests to one host are `delay` seconds apart."""

    def __init__(self, delay: float):
        self.delay, self.lock, self.next_free = delay, threading.Lock(), {}

    def wait(self, host: str) -> None:
        with self.lock:
            slot = max(time.monotonic(), self.next_free.get(host, 0.0))
            self.next_free[host] = slot + self.delay
        time.sleep(max(0.0, slot - time.monotonic()))


class Fetcher:
    def __init__(self, cfg: ScrapeConfig):
        self.cfg, self.clock = cfg, HostClock(cfg.host_delay_s)
        self.robots: dict[str, urllib.robotparser.RobotFileParser | None] = {}
        self.robots_lock = threading.Lock()

    def _get(self, url: str) -> tuple[int, bytes]:
        """(HTTP status, body) after the host's delay; status 0 for a network error or timeout."""
        self.clock.wait(urlsplit(url).netloc)
        request = urllib.request.Request(url, headers={"User-Agent": self.cfg.user_agent})
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, b""
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            log.info("%s: %s", url, e)
            return 0, b""

    def _allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self.robots_lock:
            if origin not in self.robots:
                status, body = self._get(origin + "/robots.txt")
                parser = urllib.robotparser.RobotFileParser()
                # RFC 9309: a missing robots.txt (4xx) allows everything; an unreachable one (5xx) disallows.
                if status == 200:
                    parser.parse(body.decode("utf-8", "replace").splitlines())
                elif 400 <= status < 500:
                    parser.parse([])
                else:
                    parser.disallow_all = True
                self.robots[origin] = parser
        return self.robots[origin].can_fetch(self.cfg.user_agent, url)

    def fetch(self, url: str) -> dict:
        """One outcome record: {"url", "status", "html"?, "error"?}."""
        if urlsplit(url).scheme not in ("http", "https"):
            return {"url": url, "status": None, "error": "only http and https URLs are fetched"}
        if self.cfg.respect_robots and not self._allowed(url):
            return {"url": url, "status": None, "error": "disallowed by robots.txt"}
        for attempt in range(self.cfg.retries + 1):
            status, body = self._get(url)
            if status == 200:
                return {"url": url, "status": 200, "html": body.decode("utf-8", "replace")}
            if status not in RETRYABLE and status != 0:
                break
            if attempt < self.cfg.retries:
                time.sleep(self.cfg.backoff_s * 2 ** attempt)
        return {"url": url, "status": status, "error": f"HTTP {status}" if status else "network error or timeout"}


def scrape(url_list: Path, cfg: ScrapeConfig) -> list[dict]:
    """Outcome records for every URL of the list, in list order; fetched ones come from the record file."""
    urls = [line.strip() for line in url_list.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]
    record_path = url_list.with_name(url_list.name + ".fetched.jsonl")
    done = {}
    if record_path.is_file():
        for line in record_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                done[row["url"]] = row
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a kill: that URL is fetched again
    todo = [u for u in dict.fromkeys(urls) if u not in done or done[u].get("status") in RETRYABLE | {0}]
    fetcher, write_lock = Fetcher(cfg), threading.Lock()
    with open(record_path, "a", encoding="utf-8") as record, ThreadPoolExecutor(cfg.concurrency) as pool:
        for outcome in pool.map(fetcher.fetch, todo):
            with write_lock:
                record.write(json.dumps(outcome) + "\n")
                record.flush()
            done[outcome["url"]] = outcome
    return [done[u] for u in dict.fromkeys(urls)]
