"""Process settings: read once from GATEWAY_* variables and CLI flags, never reloaded."""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a process needs before it can load the catalog."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    config: str = "config/gateway.yaml"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    redis_sentinel_master: str = "mymaster"
    # One outer deadline per store call; short so a dead Redis fails closed fast.
    redis_timeout_s: float = 0.8
    redis_pool_size: int = 64
    host: str = "0.0.0.0"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 9090
    admin_token: SecretStr | None = None
    workers: int = 1
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    # The access log: a file path (appended to; reopened on SIGHUP), "-" for stderr (with the
    # other logs, as containers collect them), "off". Written in batches (gateway/accesslog.py).
    access_log: str = "-"
    # How long an API key's identity is cached in-process. Revocation is checked by the
    # admit script itself, so this only bounds how long a deleted key's lookup lingers.
    key_cache_ttl_s: float = 60.0
    # How often each process looks for accounts whose cycle ended (they also renew on touch).
    renewal_sweep_s: float = 30.0
    # How often each process requeues the tasks of dead gateways and deletes expired tasks;
    # dispatch itself never waits for it.
    queue_sweep_s: float = 5.0
    # Settlements that could not reach the store wait here (fsync'd) until they land. Keep it
    # on a disk that survives a restart of the process.
    spool_dir: str = "var/spool"
    # Webhook deliveries (SPEC 11). A claimed delivery is due again, for any process, after the
    # catalog's `timeout_s` plus this margin: only a process that died mid-delivery (or hung
    # longer than that) ever has its attempt repeated.
    webhook_claim_margin_s: float = 20.0
    # The longest a deliverer sleeps without a wake-up message (a lost message costs this).
    webhook_poll_s: float = 1.0
    # How often each process scans for outboxes missing from the index (a process died
    # between finishing a task and indexing its delivery).
    webhook_reconcile_s: float = 300.0
