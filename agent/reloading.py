"""Reloads: apply a re-read configuration, keep the outcome, and say it honestly.

A reload (SIGHUP, or ``agent reload`` over the control socket) ends in one of three results:

* ``ok``: the new configuration runs (a new *generation*; generation 1 is the one the agent
  started with);
* ``unchanged``: the files say what already runs; nothing was touched (a success);
* ``failed``: nothing of the new configuration runs, and the reason says why: validation
  errors (``file: key: message``, an unreadable file after the privilege drop included), an
  ``[agent]`` key that is read at start only, or a component that failed to start (the
  previous configuration is then restored; if even that fails, the reason lists what runs).

Every outcome is logged: ``ok``/``unchanged`` at INFO, ``failed`` at ERROR with every reason,
never folded by :class:`agent.logutil.RepeatFilter` (each failed reload is a new event an
operator must see). Reloads not attempted are ``failed`` too, logged at WARNING (routine
races, nothing wrong with the configuration): one asked while the agent stops
(:func:`refuse`), one its asker withdrew before the pipeline got to it (:func:`withdrawn`,
logged by the asker when it gives up). :class:`ReloadHistory` keeps the counts and the last
outcome for ``agent stats`` and the Prometheus metrics. Runs on the pipeline thread.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from netflow_agent import logutil
from netflow_agent.config.model import AgentConfig, AgentSection, FlowSection
from netflow_agent.errors import ConfigIssue

log = logging.getLogger("agent.reload")

Result = Literal["ok", "unchanged", "failed"]
#: what re-reads and validates the configuration: (config or None when invalid, issues)
Reader = Callable[[], tuple[AgentConfig | None, list[ConfigIssue]]]
#: ``[agent]`` keys a running agent cannot change (sockets bound, root dropped, plugins
#: loaded, state restored): a reload that changes one is refused, a restart applies it
START_ONLY_KEYS = ("control_socket", "control_socket_mode", "metrics_listen", "user", "group",
                   "keep_capabilities", "state_dir", "state_file", "disabled_plugins")


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """The result of one reload.

    :ivar reason: one line; ``details`` holds one line per issue or change.
    :ivar generation: the generation running after this reload.
    :ivar time: wall-clock seconds when the reload finished.
    """

    result: Result
    reason: str
    details: tuple[str, ...] = ()
    generation: int = 1
    time: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        """Applied, or nothing to apply."""
        return self.result != "failed"

    def text(self) -> str:
        """The reason, then one indented line per detail."""
        return "\n".join([self.reason, *(f"  {d}" for d in self.details)])


class ReloadHistory:
    """Counts per result, the running generation and the last outcome."""

    def __init__(self) -> None:
        self.generation = 1
        self.started = time.time()
        self.counts: Counter[str] = Counter()
        self.last: ReloadOutcome | None = None

    def record(self, outcome: ReloadOutcome) -> None:
        """Count ``outcome`` and remember it as the last one."""
        self.counts[outcome.result] += 1
        self.generation = outcome.generation
        self.last = outcome

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the stats snapshot (``agent stats --json`` key ``reload``)."""
        last = self.last
        return {
            "generation": self.generation,
            "ok": self.counts["ok"], "unchanged": self.counts["unchanged"],
            "failed": self.counts["failed"],
            "last_result": last.result if last else "",
            "last_time": last.time if last else 0.0,
            "last_reason": last.text() if last else "",
            "config_loaded_time": last.time if last and last.result == "ok" else self.started,
        }


class ReloadRequest:
    """One reload asked through the control socket, between its asker (a control worker)
    and the pipeline thread. Whichever comes first decides, under a lock: the pipeline
    starts it (:meth:`start`; its outcome is then the answer), or the asker, no longer
    waiting (its timeout, the agent stopping), withdraws it (:meth:`withdraw`): then it is
    never applied, and the asker can say "not applied" instead of "unknown".

    :param reply: called with the outcome (on the pipeline thread).
    """

    def __init__(self, reply: Callable[[ReloadOutcome], None]):
        self.reply = reply
        self._lock = threading.Lock()
        self._state = "queued"
        #: why it was withdrawn (for the reload history)
        self.reason = ""

    def start(self) -> bool:
        """The pipeline is about to apply it: ``False`` when it was withdrawn (skip it)."""
        with self._lock:
            if self._state == "withdrawn":
                return False
            self._state = "started"
            return True

    def withdraw(self, reason: str = "") -> bool:
        """The asker gives up (``reason``: why): ``True`` when the pipeline had not started
        it (it never will), ``False`` when it has (the outcome comes or came)."""
        with self._lock:
            if self._state == "started":
                return False
            self._state = "withdrawn"
            self.reason = reason
            return True

    def __call__(self, outcome: ReloadOutcome) -> None:
        self.reply(outcome)


def reload(pipeline: Any, reader: Reader | None) -> ReloadOutcome:
    """Re-read the configuration with ``reader``, apply it to ``pipeline``, record and log the
    outcome. Never raises."""
    history: ReloadHistory = pipeline.reload_history
    if reader is None:
        outcome = _failed(history, "no configuration source to reload from")
    else:
        outcome = _attempt(pipeline, reader, history)
    history.record(outcome)
    _log(outcome)
    release_frozen()
    return outcome


def refuse(pipeline: Any, reason: str) -> ReloadOutcome:
    """A reload not even attempted (the configuration is not read): record it as failed for
    ``reason`` and log it at WARNING (a reload asked as the agent stops: a routine race)."""
    history: ReloadHistory = pipeline.reload_history
    outcome = _failed(history, reason)
    history.record(outcome)
    log.warning("reload: %s", outcome.text(), extra=logutil.NEVER_FOLD)
    return outcome


def withdrawn(pipeline: Any, request: ReloadRequest) -> ReloadOutcome:
    """A reload its asker withdrew (:meth:`ReloadRequest.withdraw`): record it as failed, as
    its asker answered, so that ``agent stats`` (Reload:) shows it. Not logged again: the
    asker logged it when it gave up."""
    history: ReloadHistory = pipeline.reload_history
    outcome = _failed(history, f"withdrawn before it started: {request.reason or 'no reason'}")
    history.record(outcome)
    return outcome


def release_frozen() -> None:
    """Let the garbage collector have what a reload replaced. Start-up's objects are frozen
    out of collection (``gc.freeze`` in agent/cli.py) and a frozen reference cycle (an
    exporter and its destinations' callbacks) is never collected: collect once with them
    unfrozen, then freeze what is still alive again. Nothing to do when nothing is frozen."""
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
        gc.freeze()


def _attempt(pipeline: Any, reader: Reader, history: ReloadHistory) -> ReloadOutcome:
    try:
        new, issues = reader()
    except Exception as exc:  # a plugin's check raising: still an honest answer
        log.debug("reading the configuration raised", exc_info=True)
        return _failed(history, f"could not read the configuration: {exc}")
    for issue in issues:
        if issue.severity == "warning":
            log.warning("reload: %s", issue.format())
    if new is None:
        errors = [i.format() for i in issues if i.severity == "error"]
        return _failed(history, f"the new configuration is invalid ({len(errors)} error(s))",
                       errors)
    restart = start_only_changes(pipeline.config.agent, new.agent)
    flow = flow_changes(pipeline.config.flow, new.flow)
    if restart or flow:
        tables = " and ".join(t for t, c in (("[agent]", restart), ("[flow]", flow)) if c)
        return _failed(history, f"the new configuration changes {tables} keys that are read "
                       "at start only; restart the agent to apply them", restart + flow)
    changes = describe_changes(pipeline.config, new)
    if not changes:
        return ReloadOutcome("unchanged", f"configuration unchanged (generation "
                             f"{history.generation})", generation=history.generation)
    previous = pipeline.config
    try:
        pipeline.reload(new)
    except Exception as exc:
        log.debug("reload raised", exc_info=True)
        return _roll_back(pipeline, previous, history, exc)
    apply_log_settings(new.agent)
    generation = history.generation + 1
    return ReloadOutcome("ok", f"reloaded: generation {generation} applied "
                         f"({len(new.instances)} components)", tuple(changes),
                         generation=generation)


def _failed(history: ReloadHistory, reason: str, details: list[str] | tuple[str, ...] = ()
            ) -> ReloadOutcome:
    return ReloadOutcome("failed", f"not applied: {reason}; still running generation "
                         f"{history.generation}", tuple(details), generation=history.generation)


def _roll_back(pipeline: Any, previous: AgentConfig, history: ReloadHistory,
               exc: Exception) -> ReloadOutcome:
    """A component failed to start half way: bring the previous configuration back."""
    try:
        pipeline.reload(previous)
    except Exception as again:
        running = ", ".join(pipeline.components) or "nothing"
        return ReloadOutcome("failed", f"not applied: {exc}; restoring generation "
                             f"{history.generation} failed too ({again}); running now: "
                             f"{running}", generation=history.generation)
    return _failed(history, f"{exc} (the previous configuration was restored)")


def start_only_changes(old: AgentSection, new: AgentSection) -> list[str]:
    """One line per :data:`START_ONLY_KEYS` key whose value differs."""
    return [f"agent.{key}: {getattr(old, key)!r} -> {getattr(new, key)!r} (read at start only)"
            for key in START_ONLY_KEYS if getattr(old, key) != getattr(new, key)]


def flow_changes(old: FlowSection, new: FlowSection) -> list[str]:
    """One line per ``[flow]`` key whose value differs (all are read at start only: every
    key in the flow table has the width they choose)."""
    return [f"flow.{f.name}: {getattr(old, f.name)!r} -> {getattr(new, f.name)!r} (read at "
            "start only)" for f in dataclasses.fields(new)
            if getattr(old, f.name) != getattr(new, f.name)]


def describe_changes(old: AgentConfig, new: AgentConfig) -> list[str]:
    """What a reload from ``old`` to ``new`` changes, one line each; empty = nothing."""
    before = {i.path: i for i in old.instances}
    after = {i.path: i for i in new.instances}
    changes = [f"{path}: removed" for path in before if path not in after]
    for path, inst in after.items():
        prev = before.get(path)
        if prev is None:
            changes.append(f"{path}: added")
        elif prev.type_name != inst.type_name or prev.config != inst.config:
            changes.append(f"{path}: changed")
    for key in ("debug", "scan_interval_ms", "log_repeat_interval", "snmp_rules"):
        if getattr(old.agent, key) != getattr(new.agent, key):
            changes.append(f"agent.{key}: {getattr(old.agent, key)!r} -> "
                           f"{getattr(new.agent, key)!r}")
    return changes


def apply_log_settings(section: AgentSection) -> None:
    """Take a new ``debug`` level (unless ``--log-level`` pinned it) and
    ``log_repeat_interval`` (the other ``[agent]`` keys are the pipeline's)."""
    logutil.apply_debug(section.debug)
    repeat = logutil.find_filter()
    if repeat is not None:
        repeat.interval = section.log_repeat_interval


def _log(outcome: ReloadOutcome) -> None:
    if outcome.ok:
        log.info("reload: %s", outcome.text())
    else:  # every failure is an event of its own: never folded with the previous one
        log.error("reload: %s", outcome.text(), extra=logutil.NEVER_FOLD)
