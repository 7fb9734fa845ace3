"""The deliverer: every gateway process runs one, and any of them delivers any account's due
webhooks (SPEC 11).

It wakes on the `gw:outbox_wake` channel (a task finished), and on a timer at the earliest due
time in the index (retries), at least every `webhook_poll_s`. For each due account it claims the
earliest due delivery, posts it, and records the answer, one delivery after another, so an
account's webhooks leave in completion order. Now and then it rescans every outbox
(`outbox.reconcile`). Store errors pause it; they never stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

import aiohttp

from gateway.catalog.models import WebhookOptions
from gateway.context import Gateway
from gateway.errors import StoreError, ValidationFailed
from gateway.queue.tasks import task_view
from gateway.store import keys
from gateway.webhooks import outbox, signing
from gateway.webhooks.targets import AllowPrivate, WebhookConnector, check_literal

log = logging.getLogger(__name__)
T = TypeVar("T")

ACCOUNTS_PER_ROUND = 100
ACCOUNTS_AT_ONCE = 16
SCAN_DEADLINE_S = 60.0  # the reconciliation scan of every outbox, all masters included
USER_AGENT = "gateway-webhooks/1"
DEFAULT_OPTIONS = WebhookOptions()
_TASK_FIELDS = ("org_id", "webhook_url", "webhook_attempts", "webhook_state")


def open_session(allow_private: AllowPrivate) -> aiohttp.ClientSession:
    """The deliveries' own HTTP client (not the upstream pool): no cookies, no proxy from the
    environment, the SSRF-checking connector; redirects and timeouts are set per request."""
    return aiohttp.ClientSession(
        connector=WebhookConnector(allow_private),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
        auto_decompress=False,
    )


class Deliverer:
    """Delivers the outbox of every account; one per process."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        # Whether private targets are allowed is read at each connection: reloads apply.
        self.session = open_session(lambda: self.options().allow_private_targets)
        self.wake = asyncio.Event()
        self._results = {
            result: gw.metrics.webhook_deliveries.labels(result)
            for result in ("ok", "retry", "failed")
        }

    def options(self) -> WebhookOptions:
        """The catalog's webhook options, read afresh: a reload applies to the next attempt."""
        options = self.gw.catalog.current.catalog.async_
        return options.webhooks if options is not None else DEFAULT_OPTIONS

    async def close(self) -> None:
        await self.session.close()

    async def run_forever(self) -> None:
        listener = asyncio.create_task(self._listen())
        settings = self.gw.settings
        next_scan = 0.0
        try:
            while True:
                self.wake.clear()  # a wake-up from here on starts another round
                delay = settings.webhook_poll_s
                try:
                    if time.monotonic() >= next_scan:
                        next_scan = time.monotonic() + settings.webhook_reconcile_s
                        scan = outbox.reconcile(self.gw.client)
                        await self._store(asyncio.wait_for(scan, SCAN_DEADLINE_S), deadline=False)
                    await self.round()
                    delay = await self._until_next_due(delay)
                except StoreError as exc:
                    log.warning("webhook deliveries paused: %s", exc)
                except Exception:  # a bug must not stop deliveries for the life of the process
                    log.exception("webhook delivery round failed")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.wake.wait()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def round(self) -> None:
        """Drain every account due now, a few at once."""
        due = await self._store(
            outbox.due_accounts(self.gw.client, now_ms=self.gw.now_ms(), limit=ACCOUNTS_PER_ROUND)
        )
        gate = asyncio.Semaphore(ACCOUNTS_AT_ONCE)

        async def one(account_id: str) -> None:
            async with gate:
                await self.drain(account_id)

        results = await asyncio.gather(*(one(a) for a in due), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def drain(self, account_id: str) -> None:
        """Deliver the account's due webhooks one by one, then index it by what is left."""
        client = self.gw.client
        try:
            while True:
                options = self.options()
                lease_ms = int((options.timeout_s + self.gw.settings.webhook_claim_margin_s) * 1000)
                task_id = await self._store(
                    outbox.claim(client, account_id, now_ms=self.gw.now_ms(), lease_ms=lease_ms)
                )
                if task_id is None:
                    break
                await self.deliver(account_id, task_id, options)
        finally:
            await self._store(outbox.reindex(client, account_id))

    async def deliver(self, account_id: str, task_id: str, options: WebhookOptions) -> None:
        """One attempt of one claimed delivery, and its record."""
        client = self.gw.client
        task = keys.task(account_id, task_id)
        org_id, url, made, state = await self._store(client.hmget(task, [*_TASK_FIELDS]))
        view = await self._store(task_view(client, account_id, task_id)) if url else None
        if not url or state != "pending" or view is None:
            # Gone (retention), never had a webhook, or already recorded: nothing to send.
            await self._store(outbox.drop(client, account_id, task_id))
            return
        attempt = int(made or 0) + 1
        body = json.dumps(view).encode()
        prefix = options.header_prefix
        headers = {
            "Content-Type": "application/json",
            f"{prefix}Webhook-Id": f"{task_id}-{attempt}",
        }
        secret = await self._store(signing.current(client, account_id, str(org_id)))
        if secret is not None:
            timestamp = int(self.gw.clock().timestamp())
            headers.update(signing.signed_headers(prefix, secret, timestamp, body))
        answer = await self._post(url, body, headers, options)
        where = {"account_id": account_id, "task_id": task_id, "attempt": attempt}
        if answer == "ok":
            if await self._store(outbox.ack(client, account_id, task_id, attempt)) == "DELIVERED":
                self._results["ok"].inc()
            log.info("webhook delivered", extra=where)
            return
        # backoff_s[attempt - 1] waits before attempt + 1; validation makes it long enough,
        # the min() only guards a reload that raised `attempts` mid-schedule.
        waits = options.backoff_s
        wait_s = waits[min(attempt, len(waits)) - 1] if waits else 0.0
        failed = await self._store(
            outbox.fail(
                client,
                account_id,
                task_id,
                attempt,
                now_ms=self.gw.now_ms(),
                attempts=options.attempts,
                wait_ms=int(wait_s * 1000),
            )
        )
        if failed.outcome == "RETRY":
            self._results["retry"].inc()
        elif failed.outcome == "FAILED":
            self._results["failed"].inc()
        log.info("webhook attempt failed: %s", answer, extra={**where, "outcome": failed.outcome})

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], options: WebhookOptions
    ) -> str:
        """One POST: `ok` for a 2xx, else why the attempt failed (a status, an error's class).
        Redirects are not followed; `timeout_s` bounds the whole exchange."""
        try:
            check_literal(url, allow_private=options.allow_private_targets)
        except ValidationFailed:
            return "forbidden target"
        try:
            async with self.session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=options.timeout_s),
            ) as response:
                return "ok" if 200 <= response.status < 300 else f"status {response.status}"
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            cause = getattr(exc, "os_error", None)  # a connector error: say what refused it
            return type(exc).__name__ + (f" ({type(cause).__name__})" if cause else "")

    async def _until_next_due(self, longest: float) -> float:
        """Seconds until the earliest indexed delivery is due, at most `longest`."""
        due = await self._store(outbox.next_due_ms(self.gw.client))
        if due is None:
            return longest
        return max(0.0, min(longest, (due - self.gw.now_ms()) / 1000))

    async def _listen(self) -> None:
        """Set `wake` on every message of the wake-up channel; resubscribe after a failure."""
        while True:
            pubsub = self.gw.client.pubsub()
            try:
                await pubsub.subscribe(keys.OUTBOX_WAKE)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the timer still delivers; try again shortly
                log.debug("webhook wake-up channel lost: %s", type(exc).__name__)
            finally:
                with contextlib.suppress(Exception):  # TimeoutError included
                    async with asyncio.timeout(1):
                        await pubsub.aclose()
            await asyncio.sleep(self.gw.settings.webhook_poll_s)

    async def _store(self, awaitable: Awaitable[T], *, deadline: bool = True) -> T:
        return await self.gw.ledger.call("webhooks", awaitable, deadline=deadline)
