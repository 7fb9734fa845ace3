"""The reloadable configuration: routes, prices, plans, limits."""

from gateway.catalog.models import Catalog, Plan, Price, Route, Upstream

__all__ = ["Catalog", "Plan", "Price", "Route", "Upstream"]
