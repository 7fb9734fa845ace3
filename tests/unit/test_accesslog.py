"""The access log's writer: lines buffered and written in batches, on time, whole."""

from __future__ import annotations

import asyncio
import json
import os
import select
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import accesslog
from gateway.accesslog import FLUSH_BYTES, AccessLog
from gateway.clock import iso


def one(log: AccessLog, n: int = 0, **changes: Any) -> None:
    fields: dict[str, Any] = {
        "request_id": f"req_{n:04d}",
        "method": "POST",
        "route": "/v1/monitor/chatgpt",
        "status": 200,
        "outcome": "charged",
        "credits": 7,
        "account": "acct_1",
        "org": "org_1",
        "seconds": 0.00321,
        "upstream_seconds": 0.0015,
    }
    log.write(**{**fields, **changes})


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


async def test_lines_wait_in_the_buffer_and_reach_the_file_within_the_flush_interval(
    tmp_path: Path,
) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.open()
    try:
        for n in range(100):
            one(log, n)
        assert path.read_bytes() == b""  # no write per request
        await asyncio.sleep(accesslog.FLUSH_S + 0.2)
        lines = read(path)
        assert [line["request_id"] for line in lines] == [f"req_{n:04d}" for n in range(100)]
    finally:
        log.close()


async def test_a_line_has_the_fields_and_names_of_the_json_formatter(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.open()
    one(log, upstream_seconds=None, account=None, org=None, status=401, outcome="rejected_auth")
    log.close()
    [line] = read(path)
    assert list(line) == [
        "time",
        "level",
        "logger",
        "message",
        "request_id",
        "account",
        "org",
        "route",
        "status",
        "outcome",
        "credits",
        "latency_ms",
        "upstream_ms",
    ]
    assert line["level"] == "info" and line["logger"] == "gateway.access"
    assert line["message"] == "POST /v1/monitor/chatgpt 401"
    assert line["account"] is None and line["upstream_ms"] is None and line["latency_ms"] == 3.2
    assert len(line["time"]) == len("2026-01-01T00:00:00.000Z") and line["time"].endswith("Z")


async def test_a_full_buffer_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.open()
    try:
        n = 0
        while not path.read_bytes():
            one(log, n)
            n += 1
            assert n < 10_000
        assert FLUSH_BYTES <= path.stat().st_size < FLUSH_BYTES + 1000
        assert len(read(path)) == n
    finally:
        log.close()


def test_close_writes_what_is_left_and_a_second_close_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.open()  # no running loop: no timer, only size and close
    for n in range(3):
        one(log, n)
    log.close()
    log.close()
    assert len(read(path)) == 3


def test_lines_are_appended_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text('{"earlier": true}\n')
    log = AccessLog(str(path))
    log.open()
    one(log)
    log.close()
    assert [next(iter(line)) for line in read(path)] == ["earlier", "time"]


def test_reopen_after_a_rotation_writes_to_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.open()
    one(log, 1)
    path.rename(tmp_path / "access.log.1")
    one(log, 2)  # buffered before the rotation was signalled: it goes to the old file
    log.reopen()
    one(log, 3)
    log.close()
    assert [line["request_id"] for line in read(tmp_path / "access.log.1")] == [
        "req_0001",
        "req_0002",
    ]
    assert [line["request_id"] for line in read(path)] == ["req_0003"]


@pytest.mark.parametrize(
    ("destination", "level", "enabled"),
    [("-", "INFO", True), ("-", "debug", True), ("-", "WARNING", False), ("off", "INFO", False)],
)
def test_off_or_a_level_above_info_turns_it_off(
    destination: str, level: str, enabled: bool
) -> None:
    assert AccessLog(destination, level=level).enabled is enabled


def test_to_a_pipe_every_write_is_whole_lines_of_at_most_pipe_buf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers share one stderr: a write of at most PIPE_BUF bytes to a pipe is atomic, so
    their lines never interleave mid-line."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writes: list[bytes] = []
    real_write = os.write

    def recording(fd: int, data: Any) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording)
    log = AccessLog(str(fifo))
    log.open()
    try:
        for n in range(60):  # about 25 KB: it fits the pipe, so nothing blocks
            one(log, n, route="/v1/" + "r" * (n * 3))
        log.flush()
        got = os.read(reader, 1 << 20)
    finally:
        log.close()
        os.close(reader)
    assert len(writes) > 1
    assert all(len(w) <= select.PIPE_BUF and w.endswith(b"\n") for w in writes)
    assert [json.loads(line)["request_id"] for line in got.splitlines()] == [
        f"req_{n:04d}" for n in range(60)
    ]


def test_text_format_is_one_readable_line(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), fmt="text")
    log.open()
    one(log)
    log.close()
    text = path.read_text()
    assert text.count("\n") == 1
    assert " INFO gateway.access POST /v1/monitor/chatgpt 200 request_id=req_0000 " in text
    assert "credits=7" in text and "upstream_ms=1.5" in text


def test_a_string_orjson_refuses_still_gives_a_json_line(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.open()
    one(log, method="P\udcffST")
    log.close()
    [line] = read(path)
    assert line["message"].startswith("P\udcffST ")


@given(st.integers(min_value=0, max_value=4_102_444_800_000), st.floats(0, 0.999))
def test_the_time_is_written_as_the_clock_writes_it(ms: int, fraction: float) -> None:
    """To the millisecond, UTC, with a Z: the `time` of every other log line."""
    now = (ms + fraction) / 1000
    expected = iso(datetime.fromtimestamp(int(now * 1000) / 1000, UTC))
    assert AccessLog("off")._stamp(now) == expected
