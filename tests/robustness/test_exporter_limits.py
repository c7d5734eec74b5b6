"""The exporter's HTTP side under hostile or heavy clients, on loopback only, every loop bounded in time: idle
connections are dropped after the idle timeout and never hold more than the connection bound in threads, and a
burst of 2,000 concurrent scrapes is served in full (a deep listen backlog instead of the old 5)."""
from __future__ import annotations

import selectors
import socket
import threading
import time
import urllib.request

import pytest
from exporterfake import _snapshot

from tdptrace.live.exporter import Published, StatsCollector, start_http


@pytest.fixture
def collector() -> StatsCollector:
    pub = Published(_snapshot(True), "6.1.0-test", reads=1, read_errors=0, last_read_seconds=0.001)
    return StatsCollector(lambda: pub)


def _scrape(port: int, timeout: float = 30) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        assert r.status == 200
        return r.read().decode()


def test_idle_connections_are_bounded_and_dropped(collector):
    server = start_http(collector, "127.0.0.1", 0, idle_timeout=0.5, max_connections=8)
    port = server.server_address[1]
    base = threading.active_count()
    idle = []
    try:
        for _ in range(100):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.3)
        assert threading.active_count() - base <= 8 + 1, threading.active_count() - base
        t0 = time.monotonic()
        assert "tdptrace_build_info" in _scrape(port)  # served once the idle ones have been dropped
        assert time.monotonic() - t0 < 20
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b""  # the server closed it
        assert threading.active_count() - base <= 8 + 1
    finally:
        for s in idle:
            s.close()
        server.shutdown()
        server.server_close()


def test_a_burst_of_2000_concurrent_scrapes_is_served_in_full(collector):
    server = start_http(collector, "127.0.0.1", 0)
    port = server.server_address[1]
    n, ok, failed = 2000, 0, 0
    sel = selectors.DefaultSelector()
    request = b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            sel.register(s, selectors.EVENT_WRITE, bytearray())
        deadline = time.monotonic() + 120
        while sel.get_map() and time.monotonic() < deadline:
            for key, events in sel.select(timeout=1):
                s, buf = key.fileobj, key.data
                if events & selectors.EVENT_WRITE:
                    try:
                        s.sendall(request)
                    except OSError:
                        failed += 1
                        sel.unregister(s)
                        s.close()
                        continue
                    sel.modify(s, selectors.EVENT_READ, buf)
                    continue
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = None
                if chunk:
                    buf += chunk
                    continue
                sel.unregister(s)
                s.close()
                if buf.startswith(b"HTTP/1.0 200") and b"tdptrace_build_info" in buf:
                    ok += 1
                else:
                    failed += 1
        pending = len(sel.get_map())
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
        server.shutdown()
        server.server_close()
    assert (ok, failed, pending) == (n, 0, 0), (ok, failed, pending)


def test_a_port_in_use_is_one_line(collector):
    server = start_http(collector, "127.0.0.1", 0)
    try:
        from tdptrace.errors import TdpError

        with pytest.raises(TdpError, match="cannot listen on 127.0.0.1"):
            start_http(collector, "127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
