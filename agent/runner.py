"""Hook calls with per-implementation error isolation.

:meth:`HookCalls.call` calls every implementation of a stage hook separately: one that raises
is logged (one traceback per 10 s per plugin) and counted in :attr:`HookCalls.errors`, and
the others still run.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Any

import pluggy

log = logging.getLogger("agent.pipeline")
_TRACE = os.environ.get("AGENT_TRACE_HOOKS", "") in ("1", "true", "yes")


class HookCalls:
    """Calls stage hooks one implementation at a time and counts the ones that raise."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        #: plugin name -> implementations of it that raised
        self.errors: Counter[str] = Counter()
        self._error_log_at: dict[str, float] = {}

    def call(self, name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of hook ``name`` separately; isolate failures.

        :return: the non-``None`` results, in registration order.
        """
        results = []
        for impl in getattr(self.pm.hook, name).get_hookimpls():
            res = self.call_one(impl, name, kwargs)
            if res is not None:
                results.append(res)
        return results

    def call_one(self, impl: Any, name: str, kwargs: dict[str, Any]) -> Any:
        """Call one implementation; a raise is logged and counted and gives ``None``."""
        if _TRACE:
            log.debug("hook %s -> %s", name, impl.plugin_name)
        try:
            return impl.function(*[kwargs[a] for a in impl.argnames])
        except Exception:
            self.failed(name, impl.plugin_name)
            return None

    def failed(self, hook: str, plugin: str) -> None:
        """Count and log (rate-limited) the exception being handled."""
        self.errors[plugin] += 1
        now = time.monotonic()
        if now - self._error_log_at.get(plugin, -1e9) >= 10:  # one traceback per 10 s
            self._error_log_at[plugin] = now
            log.exception("%s raised in %s (error %d; repeats are counted, logged every 10 s)",
                          plugin, hook, self.errors[plugin])
