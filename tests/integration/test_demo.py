"""`make run` on this checkout: the demo starts and the printed key works."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import aiohttp

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


async def test_make_run_serves_the_printed_key() -> None:
    port, admin_port = free_port(), free_port()
    env = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        "GATEWAY_ADMIN_PORT": str(admin_port),
        "GATEWAY_HOST": "127.0.0.1",
    }
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        output = ""
        deadline = time.monotonic() + 60
        while "Press Ctrl-C" not in output:
            line = process.stdout.readline()
            assert line or process.poll() is None, output
            output += line
            assert time.monotonic() < deadline, output
        key = re.search(r"sk_live_[0-9A-Za-z]{32}", output)
        assert key is not None, output
        assert f"curl -s -X POST http://127.0.0.1:{port}/v1/monitor/chatgpt" in output
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{port}/v1/monitor/chatgpt",
                headers={"Authorization": f"Bearer {key.group(0)}"},
                json={"prompt": "best running shoes"},
            ) as reply:
                body = await reply.json()
                assert reply.status == 200, body
                assert body["success"] is True
                assert reply.headers["X-Credits-Charged"] == "7"
            # The printed async task line: its body, sent as printed, runs and is charged the
            # route's price minus the sync surcharge.
            task_line = re.search(r"async task: +curl -s -X POST (\S+) .* -d '(.+)'", output)
            assert task_line is not None, output
            url, body = task_line.groups()
            assert url == f"http://127.0.0.1:{port}/v1/async/task"
            async with http.post(
                url,
                headers={"Authorization": f"Bearer {key.group(0)}"},
                data=body,
            ) as reply:
                created = await reply.json()
                assert reply.status == 200, created
            task_url = f"{url}/{created['task']['id']}"
            for _ in range(100):
                async with http.get(
                    task_url, headers={"Authorization": f"Bearer {key.group(0)}"}
                ) as reply:
                    view = await reply.json()
                if view["task"]["status"] == "COMPLETED":
                    break
                await asyncio.sleep(0.05)
            assert view["credits"] == {"creditsToCharge": 5, "creditsCharged": 5}
            async with http.get(f"http://127.0.0.1:{admin_port}/healthz") as reply:
                assert reply.status == 200
            # The printed admin call answers, with the printed token.
            admin = re.search(r"admin: +curl -s (\S+) -H 'Authorization: Bearer (\S+)'", output)
            assert admin is not None, output
            url, token = admin.groups()
            assert url.startswith(f"http://127.0.0.1:{admin_port}/admin/accounts/acct_")
            async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as reply:
                account = await reply.json()
                assert reply.status == 200, account
                assert account["credits"]["used"] == 7 + 5
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
