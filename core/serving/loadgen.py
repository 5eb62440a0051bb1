"""The client side of ``bench serve``: N keep-alive HTTP/1.1 connections on raw asyncio streams.

Kept apart from bench.py (stdlib only) so it can run in its own process: a load generator that
shares the server's interpreter (GIL) or spends milliseconds per request in a general-purpose
client measures itself, not the server. Loopback targets only (bench.py checks).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _encode(method: str, url: str, body: bytes | None) -> bytes:
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: keep-alive"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


async def drive(url: str, concurrency: int, total: int, duration_s: float, bodies: list[Any] | None) -> dict[str, Any]:
    """Send up to ``total`` requests from ``concurrency`` connections for at most ``duration_s``.
    ``bodies``: JSON bodies to POST in rotation (None: GET). Returns latencies (s) and errors."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    encoded = [_encode("POST", url, json.dumps(b).encode()) for b in bodies] if bodies else [_encode("GET", url, None)]
    latencies: list[float] = []
    errors = 0
    issued = 0
    started = time.perf_counter()
    stop_at = started + duration_s

    async def worker() -> None:
        nonlocal issued, errors
        connection = _Connection(host, port)
        try:
            while issued < total and time.perf_counter() < stop_at:
                raw = encoded[issued % len(encoded)]
                issued += 1
                t0 = time.perf_counter()
                try:
                    status = await asyncio.wait_for(connection.request(raw), max(0.1, stop_at + 30 - t0))
                except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                    connection.close()
                    errors += 1
                    continue
                if 200 <= status < 300:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies": latencies, "errors": errors, "seconds": time.perf_counter() - started}


def drive_in_process(args: tuple) -> dict[str, Any]:
    """Entry point for a child process (multiprocessing, spawn)."""
    return asyncio.run(drive(*args))
