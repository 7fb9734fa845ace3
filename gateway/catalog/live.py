"""The live catalog: an immutable snapshot with its route table, swapped whole on reload."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.catalog.models import Catalog, Route
from gateway.errors import MethodNotAllowed, NotFound


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One catalog plus the indexes a request needs; a request reads it once, at its start."""

    catalog: Catalog
    _exact: dict[str, dict[str, Route]] = field(init=False, repr=False)
    _prefixes: tuple[tuple[str, dict[str, Route]], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        exact: dict[str, dict[str, Route]] = {}
        prefixes: dict[str, dict[str, Route]] = {}
        for route in self.catalog.routes:
            table = (
                exact.setdefault(route.path, {})
                if route.path is not None
                else (prefixes.setdefault(route.path_prefix or "/", {}))
            )
            for method in route.methods:
                table[method] = route
        object.__setattr__(self, "_exact", exact)
        ordered = sorted(prefixes.items(), key=lambda item: len(item[0]), reverse=True)
        object.__setattr__(self, "_prefixes", tuple(ordered))

    @property
    def version(self) -> str:
        return self.catalog.version

    def match(self, path: str, method: str) -> Route:
        """The route for this request, or NotFound / MethodNotAllowed."""
        by_method = self._exact.get(path)
        if by_method is None:
            by_method = next(
                (table for prefix, table in self._prefixes if _under(path, prefix)), None
            )
        if by_method is None:
            raise NotFound(f"No route for {path}")
        route = by_method.get(method)
        if route is None:
            allowed = sorted(by_method)
            raise MethodNotAllowed(
                f"{method} is not allowed on {path}",
                details={"allowed": allowed},
                headers={"Allow": ", ".join(allowed)},
            )
        return route


def _under(path: str, prefix: str) -> bool:
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


class LiveCatalog:
    """Holds the current snapshot; assignment of one attribute is the atomic swap."""

    def __init__(self, catalog: Catalog) -> None:
        self.current = Snapshot(catalog)

    def swap(self, catalog: Catalog) -> Snapshot:
        self.current = Snapshot(catalog)
        return self.current
