"""The URL scraper against a local HTTP server the test starts (loopback only)."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tokenmill.documents import read_documents
from tokenmill.ingest import IngestConfig, run


class Site(BaseHTTPRequestHandler):
    log, in_flight, max_in_flight, lock, flaky_left = [], 0, 0, threading.Lock(), 2

    def do_GET(self):
        cls = type(self)
        with cls.lock:
            cls.log.append((self.path, time.monotonic()))
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            time.sleep(0.15)
            if self.path == "/robots.txt":
                return self._send(200, "User-agent: *\nDisallow: /private\n", "text/plain")
            if self.path == "/flaky":
                with cls.lock:
                    cls.flaky_left -= 1
                    failing = cls.flaky_left >= 0
                if failing:
                    return self._send(503, "busy", "text/plain")
            if self.path.startswith(("/page", "/flaky", "/private")):
                body = " ".join(f"This page {self.path} describes the harbour and its ships, line {i}." for i in range(25))
                return self._send(200, f"<html><head><title>{self.path}</title></head><body><nav>Menu</nav>"
                                       f"<article><p>{body}</p></article></body></html>", "text/html")
            self._send(404, "not found", "text/plain")
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    Site.log, Site.in_flight, Site.max_in_flight, Site.flaky_left = [], 0, 0, 2
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_polite_resumable_scrape(site, tmp_path):
    urls = [f"{site}/page{i}" for i in range(4)] + [f"{site}/flaky", f"{site}/private/secret", f"{site}/missing",
                                                     "ftp://example.org/file"]
    (tmp_path / "list.urls").write_text("\n".join(["# pages to fetch", *urls]) + "\n")
    cfg = IngestConfig(paths=[str(tmp_path / "list.urls")],
                       scrape={"concurrency": 2, "host_delay_s": 0.05, "retries": 3, "backoff_s": 0.05, "timeout_s": 5})
    counts = run(cfg, tmp_path / "out")
    docs = {d.id: d for d in read_documents(tmp_path / "out")}
    assert sorted(docs) == sorted(urls[:5])
    assert "harbour" in docs[f"{site}/page2"].text and "Menu" not in docs[f"{site}/page2"].text
    assert docs[f"{site}/page2"].metadata["url"] == f"{site}/page2"
    assert counts["bad_records"] == 3  # robots.txt, 404, ftp

    paths = [p for p, _ in Site.log]
    assert not any(p.startswith("/private") for p in paths)
    assert paths.count("/flaky") == 3 and paths.count("/robots.txt") == 1
    starts = [t for _, t in Site.log]
    # One host: requests are sent at least host_delay_s apart. The server sees them when its thread runs, which
    # a loaded machine delays by a jitter (CI once logged two 0.04 s apart), so check the span, not each gap.
    assert starts[-1] - starts[0] >= 0.8 * 0.05 * (len(starts) - 1)
    assert Site.max_in_flight == 2  # concurrency limit reached, never exceeded

    requests_before = len(Site.log)
    run(cfg, tmp_path / "again")  # resumed from the record: nothing is fetched twice
    assert len(Site.log) == requests_before
    assert sorted(d.id for d in read_documents(tmp_path / "again")) == sorted(docs)
