"""Key names. Every key of an account carries the hash tag {acct:<id>} so that one script
touching several of them stays inside one Redis Cluster slot."""

from __future__ import annotations

HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def account(account_id: str) -> str:
    return f"gw:{{acct:{account_id}}}:account"


def leases(account_id: str, org_id: str) -> str:
    return f"gw:{{acct:{account_id}}}:leases:{org_id}"


def holds(account_id: str) -> str:
    return f"gw:{{acct:{account_id}}}:holds"


def reclaimed(account_id: str) -> str:
    """Requests whose lease was reclaimed before they settled (zset, score: reclaim time ms)."""
    return f"gw:{{acct:{account_id}}}:reclaimed"


def request_log(account_id: str) -> str:
    return f"gw:{{acct:{account_id}}}:requests"


def usage_hours(account_id: str, now_ms: int) -> str:
    """The hourly usage of one UTC day, fields `<hour start ms>|<route>|<org>|n` (and `|c`):
    one key per day, so a range of hours costs one read per day, not one per hour."""
    return f"gw:{{acct:{account_id}}}:usage:hd:{now_ms - now_ms % DAY_MS}"


def usage_day(account_id: str, now_ms: int) -> str:
    return f"gw:{{acct:{account_id}}}:usage:d:{now_ms - now_ms % DAY_MS}"


def idempotency(account_id: str, org_id: str, key_hash: str) -> str:
    """The record of one Idempotency-Key of an org (a key belongs to the org that sent it,
    SPEC 4); `-` names a key that is never written."""
    return f"gw:{{acct:{account_id}}}:idem:{org_id}:{key_hash}"


def billing(account_id: str) -> str:
    return f"gw:{{acct:{account_id}}}:billing"


def subscription_changes(account_id: str) -> str:
    """The self-service subscription changes of the last hour (rate.lua)."""
    return f"gw:{{acct:{account_id}}}:changes"


def task(account_id: str, task_id: str) -> str:
    """An async task's record (a hash, owned by the queue; the webhook fields are ours)."""
    return f"gw:{{acct:{account_id}}}:task:{task_id}"


def outbox(account_id: str) -> str:
    """Webhook deliveries of an account (zset, member = task id, score = due time ms)."""
    return f"gw:{{acct:{account_id}}}:outbox"


def webhook_secret(account_id: str, org_id: str) -> str:
    """An org's webhook signing secret (hash: secret, created_at ms)."""
    return f"gw:{{acct:{account_id}}}:whsec:{org_id}"


# Indexes that lead from an id to its account. They are written once and never change.
def api_key(key_hash: str) -> str:
    return f"gw:apikey:{key_hash}"


def org_index(org_id: str) -> str:
    return f"gw:org:{org_id}"


def key_index(key_id: str) -> str:
    return f"gw:key:{key_id}"


# When each account's current cycle ends (score, ms): the renewal sweeper's work list.
CYCLE_ENDS = "gw:cycle_ends"

# Accounts that may have webhook deliveries due (score: earliest due time, ms), and the channel
# that wakes the deliverers when a task finishes. Not atomic with the accounts' outboxes (another
# Cluster slot): see gateway/webhooks/outbox.py for how nothing is lost.
OUTBOX_ACCOUNTS = "gw:outbox_accounts"
OUTBOX_WAKE = "gw:outbox_wake"
# What the reconciliation scan looks for: every account's outbox.
OUTBOX_PATTERN = "gw:{acct:*}:outbox"
