"""Per-account price books (enterprise contract prices and price locks), cached in-process.

The cache needs no expiry: every admission carries the pricing version it priced with, and the
admit script answers REPRICE when the account's version moved on."""

from __future__ import annotations

from collections import OrderedDict

from gateway.billing.contract import PriceBook
from gateway.store.accounts import Accounts
from gateway.store.ledger import Ledger


class PriceBooks:
    def __init__(self, accounts: Accounts, ledger: Ledger, max_entries: int = 100_000) -> None:
        self._accounts = accounts
        self._ledger = ledger
        self._max_entries = max_entries
        self._books: OrderedDict[str, tuple[str, PriceBook | None]] = OrderedDict()

    async def get(self, account_id: str) -> tuple[str, PriceBook | None]:
        """(pricing version, price book or None for catalog prices)."""
        cached = self._books.get(account_id)
        if cached is not None:
            return cached
        fetched = await self._ledger.call("lookup", self._accounts.pricebook(account_id))
        self._books[account_id] = fetched
        if len(self._books) > self._max_entries:
            self._books.popitem(last=False)
        return fetched

    def forget(self, account_id: str) -> None:
        self._books.pop(account_id, None)
