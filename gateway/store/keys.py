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

# The queues (SPEC 10). Per-task keys are named inside the scripts from the account's prefix.
def prefix(account_id: str) -> str:
    """What every key of the account starts with (scripts build per-task keys from it)."""
    return f"gw:{{acct:{account_id}}}:"


def task(account_id: str, task_id: str) -> str:
    """A task's record (hash): fields org_id, type, status, ... (enqueue.lua, tasks.lua); the
    webhook fields webhook_attempts and webhook_state are the deliverer's."""
    return f"gw:{{acct:{account_id}}}:task:{task_id}"


def queue(account_id: str, org_id: str) -> str:
    """An org's queued tasks (zset): score (10 - priority) * 10^13 + sequence."""
    return f"gw:{{acct:{account_id}}}:queue:{org_id}"


def org_tasks(account_id: str, org_id: str) -> str:
    """Every retained task of an org (zset by sequence): the newest-first listing."""
    return f"gw:{{acct:{account_id}}}:tasks:{org_id}"


def waiting(account_id: str, org_id: str) -> str:
    """An org's sync requests waiting for a slot (zset by arrival)."""
    return f"gw:{{acct:{account_id}}}:waiting:{org_id}"


def waiters(account_id: str) -> str:
    """The waiting requests' records (hash, request id -> record); see dispatch.lua."""
    return f"gw:{{acct:{account_id}}}:waiters"


def running(account_id: str) -> str:
    """PROCESSING tasks (hash, task id -> org id)."""
    return f"gw:{{acct:{account_id}}}:running"


def finished(account_id: str) -> str:
    """Terminal tasks by completion time (zset, ms): deleted after retention."""
    return f"gw:{{acct:{account_id}}}:finished"


def task_idempotency(account_id: str) -> str:
    """sha256(idempotencyKey) -> task id (hash), while the task is retained."""
    return f"gw:{{acct:{account_id}}}:taskidem"


def outbox(account_id: str) -> str:
    """Tasks whose webhook is due (zset, score = due time ms): the webhooks side's work list."""
    return f"gw:{{acct:{account_id}}}:outbox"


# Accounts that keep tasks (zset, score = when first added, ms): the queue sweeper's work list.
TASK_ACCOUNTS = "gw:task_accounts"
# Accounts whose outbox may hold due deliveries (zset, score = earliest due ms); see contract.
OUTBOX_ACCOUNTS = "gw:outbox_accounts"
OUTBOX_WAKE = "gw:outbox_wake"
# "<account>|<org>": a slot is free and entries are queued; any process may dispatch them.
DISPATCH_CHANNEL = "gw:dispatch"


def wake_channel(process_id: str) -> str:
    """Where a process hears that a waiting request of its own was decided."""
    return f"gw:wake:{process_id}"
