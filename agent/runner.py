"""Hook runners: every hook is called through pluggy, each implementation isolated and counted.

The agent's plugin manager (:class:`agent.plugins.AgentPluginManager`) registers every plugin
(a plugin module, a component instance such as ``export.netflow[0]``, a core observer)
through a :class:`HookRunner`: one small object per plugin that pluggy sees in its place.
For each hook implementation of the plugin, the runner holds a function with the same
signature and the same ``@hookimpl`` options (``tryfirst``, ``trylast``, ``wrapper``,
``hookwrapper``, ``specname``, ``optionalhook``) that calls the plugin's implementation and
owns, for that plugin and hook:

* **isolation**: for the hooks in :data:`ISOLATED`, an exception is logged (one traceback
  per 10 s per plugin), counted, and the call gives ``None``, so the other implementations
  still run. Elsewhere (:data:`RAISING`) the exception propagates as :class:`HookFailed`,
  which names the plugin;
* **counters**: calls, errors and seconds spent (:class:`HookCounters`), shown by
  ``agent stats --json`` (``hooks``) and the metrics endpoint;
* **tracing**: with ``AGENT_TRACE_HOOKS=1`` each implementation call is logged at DEBUG,
  next to pluggy's own hook call monitoring (:mod:`agent.plugins`).

Because pluggy itself calls the runners, its documented semantics hold for every hook:
last registered runs first, ``tryfirst``/``trylast`` move an implementation, wrappers wrap
the whole call, and ``pm.add_hookcall_monitoring`` sees every stage call.

``agent_aggregate_flows`` is a chain on one list (:data:`CHAINED`): a list an implementation
returns replaces the content of the ``records`` list in place, so the next implementation,
and the exporters, see it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Generator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("agent.runner")
_TRACE = os.environ.get("AGENT_TRACE_HOOKS", "") in ("1", "true", "yes")

#: Hooks whose implementations are isolated: a raise is logged and counted, the others run.
ISOLATED = frozenset({
    "agent_tick", "agent_stop", "agent_cache_packets", "agent_cache_flows",
    "agent_cache_expire", "agent_aggregate_flows", "agent_export_flows",
    "agent_export_nat_events", "agent_export_room", "agent_collect_stats",
})
#: Hooks whose raise stops the caller (start-up, registration, configuration checks).
RAISING = frozenset({"agent_start", "agent_register_components", "agent_check_config"})
#: Hooks run as a chain over one list argument: hook name -> argument name.
CHAINED = {"agent_aggregate_flows": "records"}
#: Hooks whose last result the runner keeps, so the caller can tell which plugin gave it.
RECORDED = frozenset({"agent_collect_stats"})

#: The name of the plugin whose hook implementation is running (``""`` outside of one).
current_plugin: ContextVar[str] = ContextVar("agent_current_plugin", default="")


class HookFailed(Exception):
    """A hook implementation raised where that stops the caller (:data:`RAISING`).

    :ivar plugin: the plugin's registered name (``export.netflow[0]``).
    :ivar hook: the hook name.
    :ivar error: the original exception (also the ``__cause__``).
    """

    def __init__(self, plugin: str, hook: str, error: BaseException):
        super().__init__(f"{plugin}: {hook} raised {type(error).__name__}: {error}")
        self.plugin, self.hook, self.error = plugin, hook, error


@dataclass(slots=True)
class HookCounters:
    """One plugin's calls of one hook."""

    calls: int = 0
    errors: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """``{"calls": n, "errors": n, "seconds": s}``."""
        return {"calls": self.calls, "errors": self.errors, "seconds": self.seconds}


class ErrorLog:
    """Exceptions raised by hook implementations, counted per plugin, logged rate-limited.

    The counts outlive runners: a plugin replaced at reload keeps its history.
    """

    def __init__(self) -> None:
        #: plugin name -> implementations of it that raised
        self.errors: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}

    def failed(self, hook: str, plugin: str) -> None:
        """Count and log (one traceback per 10 s per plugin) the exception being handled."""
        self.errors[plugin] += 1
        now = time.monotonic()
        if now - self._logged_at.get(plugin, -1e9) >= 10:
            self._logged_at[plugin] = now
            log.exception("%s raised in %s (error %d; repeats are counted, logged every 10 s)",
                          plugin, hook, self.errors[plugin])


class HookRunner:
    """What pluggy registers in place of one plugin (see the module docstring).

    :param target: the plugin: a module, a component instance, any object with
        ``@hookimpl`` functions.
    :param name: its registered name.
    :param impls: attribute name -> hookimpl options of ``target``, as pluggy parsed them.
    :param errors: where isolated failures are counted and logged.
    """

    def __init__(self, target: Any, name: str, impls: dict[str, dict[str, Any]],
                 errors: ErrorLog):
        self.target = target
        self.name = name
        self.errors = errors
        #: hook name -> this plugin's counters
        self.counters: dict[str, HookCounters] = {}
        #: hook name -> the last result (hooks in :data:`RECORDED` only)
        self.results: dict[str, Any] = {}
        for attr, opts in impls.items():
            if attr in _OWN_NAMES:
                raise ValueError(f"{name}: hook implementation name {attr!r} is reserved")
            hook = opts.get("specname") or attr
            method = getattr(target, attr)
            if opts.get("wrapper") or opts.get("hookwrapper"):
                if not inspect.isgeneratorfunction(method):
                    raise ValueError(f"{name}: wrapper {attr} of {hook} is not a generator "
                                     "function (it must yield once)")
                run = self._wrapper(hook, method)
            else:
                run = self._plain(hook, method)
            functools.update_wrapper(run, method)  # pluggy reads the signature through it
            run.agent_impl = dict(opts)  # type: ignore[attr-defined]
            setattr(self, attr, run)

    def __repr__(self) -> str:
        return f"<HookRunner {self.name} for {self.target!r}>"

    def implements(self, hook: str) -> bool:
        """Whether the plugin implements ``hook``."""
        return hook in self.counters

    def succeeded(self, hook: str) -> bool:
        """Whether the plugin's ``hook`` implementation ran at least once without raising."""
        c = self.counters.get(hook)
        return c is not None and c.calls > c.errors

    def stats(self) -> dict[str, dict[str, float]]:
        """Hook name -> calls, errors and seconds of this plugin."""
        return {hook: c.as_dict() for hook, c in self.counters.items()}

    # --- the functions pluggy calls -------------------------------------------------------

    def _failed(self, hook: str, counters: HookCounters, exc: Exception) -> None:
        """Count a raise; re-raise it as :class:`HookFailed` unless ``hook`` is isolated."""
        counters.errors += 1
        if hook not in ISOLATED:
            raise HookFailed(self.name, hook, exc) from exc
        self.errors.failed(hook, self.name)

    def _plain(self, hook: str, method: Callable[..., Any]) -> Callable[..., Any]:
        counters = self.counters.setdefault(hook, HookCounters())
        if not _TRACE and hook in ISOLATED and hook not in CHAINED and hook not in RECORDED:
            return self._isolated(hook, method, counters)
        chain_at = _position(method, CHAINED[hook]) if hook in CHAINED else None
        record = hook in RECORDED
        name, results = self.name, self.results

        def run(*args: Any, **kwargs: Any) -> Any:
            if _TRACE:
                log.debug("hook %s -> %s", hook, name)
            counters.calls += 1
            token = current_plugin.set(name)
            start = time.perf_counter()
            try:
                result = method(*args, **kwargs)
            except Exception as exc:
                result = None
                self._failed(hook, counters, exc)
            finally:
                counters.seconds += time.perf_counter() - start
                current_plugin.reset(token)
            if chain_at is not None and result is not None:
                chained = args[chain_at] if chain_at < len(args) else kwargs[CHAINED[hook]]
                if result is not chained:
                    chained[:] = result  # the next implementation sees it
            if record:
                results[hook] = result
            return result

        return run

    def _isolated(self, hook: str, method: Callable[..., Any],
                  counters: HookCounters) -> Callable[..., Any]:
        """The common case, kept short because it runs per batch: an isolated stage hook."""
        clock = time.perf_counter

        def run(*args: Any, **kwargs: Any) -> Any:
            counters.calls += 1
            start = clock()
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                self._failed(hook, counters, exc)
                return None
            finally:
                counters.seconds += clock() - start

        return run

    def _wrapper(self, hook: str, method: Callable[..., Any]) -> Callable[..., Any]:
        """A ``wrapper=True`` or ``hookwrapper=True`` implementation: a generator around the
        plugin's generator; its code before and after ``yield`` is isolated and counted."""
        counters = self.counters.setdefault(hook, HookCounters())

        def run(*args: Any, **kwargs: Any) -> Generator[None, Any, Any]:
            counters.calls += 1
            gen = method(*args, **kwargs)
            if not self._start(hook, counters, gen):
                return (yield)  # it failed before its yield: the call goes on without it
            try:
                inner = yield
            except BaseException as exc:  # the implementations inside raised
                return _finish(gen.throw, exc)
            ok, value = self._finish_step(hook, counters, gen, inner)
            return value if ok else inner

        return run

    def _start(self, hook: str, counters: HookCounters, gen: Generator[Any, Any, Any]) -> bool:
        """Run a wrapper up to its ``yield``; ``False`` when it raised or never yielded."""
        start = time.perf_counter()
        try:
            next(gen)
            return True
        except StopIteration:
            self._failed(hook, counters, RuntimeError(f"wrapper of {hook} did not yield"))
        except Exception as exc:
            self._failed(hook, counters, exc)
        finally:
            counters.seconds += time.perf_counter() - start
        return False

    def _finish_step(self, hook: str, counters: HookCounters, gen: Generator[Any, Any, Any],
                     inner: Any) -> tuple[bool, Any]:
        """Resume a wrapper after its ``yield``: ``(True, its return value)``, or
        ``(False, None)`` when it raised or yielded twice."""
        start = time.perf_counter()
        try:
            gen.send(inner)
        except StopIteration as stop:
            return True, stop.value
        except Exception as exc:
            self._failed(hook, counters, exc)
            return False, None
        finally:
            counters.seconds += time.perf_counter() - start
        gen.close()
        self._failed(hook, counters, RuntimeError(f"wrapper of {hook} yielded twice"))
        return False, None


_OWN_NAMES = frozenset(dir(HookRunner)) | {"target", "name", "errors", "counters", "results"}


def _finish(throw: Callable[[BaseException], Any], exc: BaseException) -> Any:
    """Hand an exception from inside a wrapped call to the plugin's wrapper, as pluggy would."""
    try:
        throw(exc)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("a wrapper yielded again after an exception")


def _position(method: Callable[..., Any], argument: str) -> int | None:
    """Where pluggy puts ``argument`` among the positional arguments of ``method``."""
    names = list(inspect.signature(method).parameters)
    return names.index(argument) if argument in names else None
