"""Model names resolved against the registry, as the gateway resolves a client's: a registered version or an alias
is itself, anything else is ``unknown`` (never the caller's text, so no record can create a label value).

The gateway resolves what a client asks for before it serves it. Telemetry written by someone else (OpenTelemetry
spans, docs/ingest-otel.md) names a model after the fact, as the request asked for it and as the server answered it:
:meth:`ModelNames.resolve` takes both, without I/O. The names are read from the registry (``names()``,
``alias_table()``) when made and by :meth:`ModelNames.refresh_if_due`, at most every ``refresh_s`` (the ingestor
calls it between polls); a failed read keeps the names in hand.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Protocol

from driftwatch.metrics import UNKNOWN

log = logging.getLogger(__name__)


class Registry(Protocol):
    def names(self) -> frozenset[str]: ...
    def alias_table(self) -> tuple[int, dict[str, dict[str, float]]]: ...


class ModelNames:
    """The registry's names: versions (and ``extra``, e.g. the base model when the gateway serves it) and aliases."""

    def __init__(self, registry: Registry, *, extra: frozenset[str] = frozenset(), refresh_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry, self.extra, self.refresh_s, self.clock = registry, frozenset(extra), refresh_s, clock
        self._versions: frozenset[str] = self.extra
        self._aliases: dict[str, tuple[str, ...]] = {}  # alias -> the versions it sends traffic to
        self._read_at = float("-inf")
        self._failing = False
        self.refresh()

    def refresh_if_due(self) -> None:
        if self.clock() - self._read_at >= self.refresh_s:
            self.refresh()

    def refresh(self) -> None:
        """Read the names again (the registry's I/O); on failure keep those in hand and log once."""
        self._read_at = self.clock()
        try:
            table = self.registry.alias_table()[1]
            names = self.registry.names()
        except Exception as exc:  # noqa: BLE001 - the store's error: resolve with the names in hand, read again later
            if not self._failing:
                log.warning("cannot read the registry's model names (resolving with those read before): %s", exc)
            self._failing = True
            return
        if self._failing:
            log.info("the registry's model names are readable again")
        self._failing = False
        aliases = {alias: tuple(v for v, w in weights.items() if w > 0) for alias, weights in table.items()}
        self._versions, self._aliases = (frozenset(names) - aliases.keys()) | self.extra, aliases

    def resolve(self, requested: str | None, served: str | None) -> tuple[str | None, str]:
        """(alias, adapter version) of a request that asked for ``requested`` and was answered by ``served``.

        The version is the first of (served, requested) the registry knows as a version; else the alias's version
        when the alias sends all its traffic to one; else ``unknown`` (a weighted alias does not say which of its
        versions answered). The alias is the first of (requested, served) that is one, else None."""
        versions, aliases = self._versions, self._aliases
        alias = next((n for n in (requested, served) if n is not None and n in aliases), None)
        version = next((n for n in (served, requested) if n is not None and n in versions), None)
        if version is None:
            targets = aliases.get(alias, ()) if alias is not None else ()
            version = targets[0] if len(targets) == 1 else UNKNOWN
        return alias, version
