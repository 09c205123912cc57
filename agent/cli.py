"""The ``agent`` command line.

::

    agent -c FILE|DIR                 run in the foreground until SIGTERM/SIGINT
    agent --dry-run -c FILE|DIR       validate, start nothing; exit 0 valid, 78 invalid
    agent plugins                     list plugins with version and origin
    agent config sample [NAME]        print a commented sample (all, or one component)
    agent config import-ipt-netflow --modprobe F --sysctl F [-o OUT]
                                      ipt_NETFLOW settings as TOML
    agent stats [--json] [--socket P] the running agent's statistics (control socket)
    agent reload [--socket P]         re-read the configuration; 0 applied, 1 not (reason)
    agent top [--once] [--json] ...   the running agent's biggest flows, live (control socket)

Exit codes: 0 success, 1 runtime failure, 2 usage error, 78 (EX_CONFIG) invalid configuration.
"""

from __future__ import annotations

if __name__ == "__main__":
    # ``python -m netflow_agent.cli`` (the benches, tests/support/agentproc.py) takes the
    # console script's path, so that the daemon's run path drops NumPy's freshly written page
    # cache before the imports below map it (agent/launch.py); it imports this module anew
    # and never returns.
    from netflow_agent.launch import entry as _launch

    _launch()

import atexit
import gc
import logging
import os
import signal
import sys
import threading
from typing import Any, NoReturn

import pluggy

from netflow_agent import heap, logutil
from netflow_agent.cliargs import parser as _parser
from netflow_agent.config.check import validate
from netflow_agent.config.load import load
from netflow_agent.config.model import AgentSection, FlowSection
from netflow_agent.config.sample import section_sample
from netflow_agent.discovery import AgentPluginManager, build_registry, make_manager
from netflow_agent.errors import ConfigIssue
from netflow_agent.ops import Operations
from netflow_agent.pipeline import Pipeline, StartupError
from netflow_agent.privileges import PrivilegeError
from netflow_agent.registry import ComponentRegistry
from netflow_agent.reloading import START_ONLY_KEYS

EX_OK, EX_FAIL, EX_USAGE, EX_CONFIG = 0, 1, 2, 78
log = logging.getLogger("agent")

#: example values the ``[agent]`` sample shows instead of an empty default
AGENT_EXAMPLES = {
    "state_dir": '"/var/lib/netflow-agent"', "control_socket_mode": "0o600",
    "metrics_listen": '"127.0.0.1:9184"', "user": '"netflow"',
    "state_file": '"/var/lib/netflow-agent/flows.state"',
}
#: ... and the ``[flow]`` sample
FLOW_EXAMPLES = {"mpls_labels": "3", "physdev": '"export"'}



def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` without the interpreter's teardown.

    Once :func:`main` returned, every component has stopped, exported and closed what it
    owns; what is left is freeing every module and object one by one (a garbage collection
    over all of them, then each deallocated): 35-50 ms of CPU for an idle agent, more with
    a big flow table, for memory the kernel frees at once. The exit handlers still run and
    the log and standard streams are flushed first. While a non-daemon thread still runs
    (a plugin's), the ordinary exit waits for it as Python does.
    """
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive()
           for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to say there
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """The command line (returns its exit code; :func:`entry` exits with it)."""
    args = _parser().parse_args(argv)
    level = args.log_level
    logging.basicConfig(level=(level or "info").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logutil.install()  # rate-limited repeats; journald priorities under systemd
    if args.command == "plugins":
        return cmd_plugins()
    if args.command == "config" and args.config_command == "import-ipt-netflow":
        from netflow_agent.config.ipt_netflow import cmd_import

        return cmd_import(args.modprobe, args.sysctl, args.output, args.nflog_group,
                          args.manage_rules)
    if args.command == "config":
        return cmd_sample(args.name)
    if args.command == "top":
        from netflow_agent.control import socket_path
        from netflow_agent.topview import cmd_top

        return cmd_top(socket_path(args.socket, args.config), args.n, args.sort, args.filter,
                       args.once, args.json, args.interval)
    if args.command in ("stats", "reload"):
        from netflow_agent.control import cmd_control

        return cmd_control(args.command, args.socket, args.config, getattr(args, "json", False))
    if not args.config:
        print("agent: error: -c/--config is required (or a COMMAND)", file=sys.stderr)
        return EX_USAGE
    if args.dry_run:
        return cmd_dry_run(args.config, args.check_env, args.strict)
    return cmd_run(args.config, level, args.progress)


def _manager_for(path: str | None) -> tuple[AgentPluginManager, ComponentRegistry, list[Any]]:
    disabled: list[str] = []
    if path:
        raw, _ = load(path)
        section = raw.data.get("agent", {})
        value = section.get("disabled_plugins", []) if isinstance(section, dict) else []
        disabled = [str(v) for v in value] if isinstance(value, list) else []
    pm, loaded = make_manager(disabled)
    return pm, build_registry(pm), loaded


def _print_issues(issues: list[ConfigIssue], strict: bool) -> int:
    """Print every issue; return the errors (> 0), else minus the warnings (notes count
    as neither; ``strict`` makes warnings errors)."""
    failing = ("error", "warning") if strict else ("error",)
    errors = sum(1 for i in issues if i.severity in failing)
    warnings = sum(1 for i in issues if i.severity == "warning" and not strict)
    for issue in issues:
        print(issue.format(), file=sys.stderr)
    return errors if errors else -warnings


def cmd_dry_run(path: str, check_env: bool, strict: bool) -> int:
    """Validate and report every issue; start nothing."""
    try:
        pm, registry, _ = _manager_for(path)
    except Exception as exc:  # a plugin that fails to import or register
        print(f"{path}: plugin loading failed: {exc}", file=sys.stderr)
        return EX_CONFIG
    _, issues = validate(path, registry, pm.hook, check_env=check_env)
    issues += [ConfigIssue("", f"plugin '{f.name}' failed to load ({f.error}); its components "
                           "are unavailable", severity="warning", file=path)
               for f in pm.load_failures]
    n = _print_issues(issues, strict)
    if n > 0:
        warnings = 0 if strict else sum(1 for i in issues if i.severity == "warning")
        print(f"{n} error(s), {warnings} warning(s): configuration is invalid",
              file=sys.stderr)
        return EX_CONFIG
    print(f"configuration OK ({-n} warning(s))", file=sys.stderr)
    return EX_OK


def cmd_plugins() -> int:
    """Print one line per plugin module and the component types it registered."""
    pm, registry, loaded = _manager_for(None)
    for info in loaded:
        origin = "builtin" if info.builtin else f"{info.distribution} (entry point)"
        types = [t.table for t in registry.types.values() if t.plugin == info.name]
        print(f"{info.name:<18} {info.version:<10} {origin:<40} {', '.join(types)}")
        for t in registry.types.values():
            if t.plugin == info.name:
                reason = t.unavailable_reason()
                status = f"  UNAVAILABLE: {reason}" if reason else ""
                print(f"    [{t.table}] {t.doc}{status}")
    return EX_OK


def cmd_sample(name: str | None) -> int:
    """Print the sample of one component, or of the whole agent."""
    _, registry, _ = _manager_for(None)
    if name:
        stage, _, short = name.rpartition(".")
        matches = [t for t in registry.types.values()
                   if t.name == short and (not stage or t.stage == stage)]
        if not matches:
            known = ", ".join(sorted(t.table for t in registry.types.values()))
            print(f"agent: unknown component '{name}'; known: {known}", file=sys.stderr)
            return EX_USAGE
        for t in matches:
            print(t.sample.rstrip() or f"# {t.table}: no sample provided")
        return EX_OK
    restart = "Restart to change it (a reload refuses)."
    parts = [section_sample("agent", AgentSection, AGENT_EXAMPLES, active=("debug",),
                            note=dict.fromkeys(START_ONLY_KEYS, restart))]
    parts.append(section_sample("flow", FlowSection, FLOW_EXAMPLES, note={
        "mac": "Ingests that cannot see a field leave it 0 (a --dry-run warning names them). "
               "Restart to change [flow] (a reload refuses)."}))
    parts += [t.sample for t in registry.types.values()  # [aggregate] rules: cache's now
              if t.stage in ("cache", "aggregate") and t.table != "aggregate.rules"]
    parts += [t.sample for t in registry.types.values()
              if t.stage in ("ingest", "export") and t.sample]
    print("\n".join(p.rstrip() + "\n" for p in parts), end="")
    return EX_OK


def _revalidate(path: str, registry: ComponentRegistry,
                pm: pluggy.PluginManager) -> tuple[Any, list[ConfigIssue]]:
    """Re-read the configuration for a reload (:mod:`agent.reloading` logs the issues)."""
    return validate(path, registry, pm.hook, check_env=True)


def cmd_run(path: str, level: str | None, progress: bool | None = None) -> int:
    """Validate, start, run until a signal or until finite ingests end, then flush.

    :param progress: replay progress on stderr: forced on/off, or ``None`` (on a terminal).
    """
    pm, registry, _ = _manager_for(path)
    config, issues = validate(path, registry, pm.hook, check_env=True)
    if _print_issues(issues, strict=False) > 0 or config is None:
        return EX_CONFIG
    if level:
        logutil.pin_level()  # --log-level wins over [agent] debug, at reloads too
    else:
        logutil.apply_debug(config.agent.debug)
    heap.pin()  # big flow tables return memory (agent.heap)
    try:
        ops = Operations(config)  # before any thread starts (privilege drop preparation)
    except PrivilegeError as exc:
        log.error("%s", exc)
        return EX_CONFIG
    pipeline = Pipeline(config, pm)
    _show_progress(pipeline, progress)
    try:
        pipeline.build()
        pipeline.start()
    except StartupError as exc:
        log.error("%s", exc)
        return EX_FAIL
    try:
        ops.start(pipeline)  # control socket, metrics, drop root, READY=1
    except (OSError, PrivilegeError) as exc:
        log.error("start-up failed: %s", exc)
        stop(ops, pipeline)
        return EX_FAIL
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: pipeline.request_stop())
    pipeline.reloader = lambda: _revalidate(path, registry, pm)
    signal.signal(signal.SIGHUP, lambda *_: pipeline.request_reload())
    # loading the eBPF programs (libbpf parses the kernel's BTF) and the configuration leave
    # freed blocks glibc would otherwise keep
    heap.trim()
    log.info("running with %d components (%s)", len(pipeline.components),
             ", ".join(pipeline.components))
    # what start-up built (modules, configuration, plugins) lives until exit: leave it out of
    # every later garbage collection, which otherwise walks all of it at each full pass
    gc.freeze()
    try:
        pipeline.run()
    finally:
        stop(ops, pipeline)
        gc.unfreeze()
    log.info("stopped; %s", final_summary(pipeline))
    return EX_OK


def stop(ops: Operations, pipeline: Pipeline) -> None:
    """Close the local interfaces (STOPPING=1, control socket, metrics), then flush and stop
    the pipeline: a failure in the first (a bug, a thread that would not join) is logged and
    never skips the flush, which exports or saves the flows in the cache."""
    try:
        ops.stopping()
    except Exception:
        log.exception("closing the control socket and metrics failed; stopping anyway")
    pipeline.shutdown()


def _show_progress(pipeline: Pipeline, flag: bool | None) -> None:
    """Install the replay progress line on stderr when wanted (agent.progress)."""
    from netflow_agent import progress

    if progress.wanted(sys.stderr, flag):
        line = progress.Progress(sys.stderr)
        line.install()
        pipeline.context.progress = line.update


def final_summary(pipeline: Pipeline) -> str:
    """The totals of the run, for the last log line (a finite replay has no later chance to
    ask ``agent stats``): flows exported, traffic accounted, what was lost or refused, and
    what ``hash:N`` discarded on entry: packets seen = traffic + dropped + sampler discarded."""
    core = pipeline.core_stats()
    return (f"{pipeline.exported_flows} flows exported; traffic "
            f"{core.get('traffic_packets', 0)} packets, {core.get('traffic_bytes', 0)} bytes; "
            f"dropped {core.get('drop_packets', 0)} packets, {core.get('drop_bytes', 0)} bytes "
            f"(refused at maxflows {core.get('maxflows', 0)}, truncated "
            f"{core.get('trunc', 0)}); sampler discarded "
            f"{core.get('sampler_discarded_packets', 0)} packets, "
            f"{core.get('sampler_discarded_bytes', 0)} bytes; fragments {core.get('frag', 0)}"
            f"{_state_summary(pipeline)}")


def _state_summary(pipeline: Pipeline) -> str:
    """What the start took from ``[agent] state_file``, when it had a file to read."""
    st = pipeline.state_restore
    if not (st.flows or st.rejected or st.quarantined):
        return ""
    moved = f", file quarantined as {st.moved_to or '(not moved)'}" if st.quarantined else ""
    return (f"; state file: restored {st.flows} flows, rejected {st.rejected}, clamped "
            f"{st.clamped}{moved}")
