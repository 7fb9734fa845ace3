"""Catalog reload (SIGHUP or POST /admin/reload): validate the whole file, then swap at once."""

from __future__ import annotations

import logging
import os
import signal
import time

from gateway.catalog.live import Snapshot
from gateway.catalog.load import load_catalog
from gateway.context import Gateway
from gateway.errors import CatalogInvalid

log = logging.getLogger(__name__)

# Set by the supervisor in its workers: a reload asked of one worker is relayed to all.
SUPERVISED_ENV = "GATEWAY_SUPERVISED"


def reload_catalog(gw: Gateway) -> Snapshot:
    """Swap in the catalog file as it is now; a bad file raises CatalogInvalid, changing nothing.

    Requests already running keep the snapshot they started with."""
    try:
        catalog = gw.prepare_catalog(load_catalog(gw.settings.config))
    except CatalogInvalid as exc:
        gw.metrics.config_reloads.labels("error").inc()
        log.error(
            "catalog reload rejected; the old catalog stays", extra={"problems": exc.problems}
        )
        raise
    snapshot = gw.catalog.swap(catalog)
    gw.metrics.config_reloads.labels("ok").inc()
    gw.metrics.config_last_reload.set(time.time())
    log.info("catalog reloaded", extra={"version": snapshot.version})
    return snapshot


def tell_siblings() -> None:
    """Under a supervisor, ask it to relay SIGHUP so every worker reloads the same file."""
    if os.environ.get(SUPERVISED_ENV) == "1":
        os.kill(os.getppid(), signal.SIGHUP)
