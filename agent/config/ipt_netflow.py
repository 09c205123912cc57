"""``agent config import-ipt-netflow``: ipt_NETFLOW's module options and sysctls as TOML.

Input, in the order given (a later value of an option wins, as when sysctls change what the
module was loaded with):

* modprobe.d files: ``options ipt_NETFLOW destination=... protocol=9`` lines (several, quoted
  values, ``\\`` continuations); ``install``/``alias``/``softdep`` lines for ipt_NETFLOW are
  reported, other modules' lines and ``#`` comments ignored;
* ``sysctl -a`` (or sysctl.conf) lines: ``net.netflow.NAME = VALUE``.

Option names are compared as the kernel does (``refresh-rate`` = ``refresh_rate``). Every
option either lands in a table (the mapping is :data:`SIMPLE`, :func:`convert` and
:func:`_exporters`; `snmp-rules=` becomes `[agent] snmp_rules`) or in a
comment at the top that says why it was not converted. The result is checked with the same
code as ``agent --dry-run``: a value our tables refuse (out of range, malformed) is taken out
and becomes such a comment too, so what is written validates.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import toml

from netflow_agent.config.check import build
from netflow_agent.config.load import RawConfig
from netflow_agent.errors import ConfigIssue
from netflow_agent.registry import ComponentRegistry

MODULE = "ipt_NETFLOW"
DEFAULT_DESTINATION = "127.0.0.1:2055"
DEFAULT_PORT = 2055
#: option -> (table, key) for values copied as integers
SIMPLE = {
    "inactive_timeout": ("cache", "inactive_timeout"),
    "active_timeout": ("cache", "active_timeout"),
    "maxflows": ("cache", "maxflows"),
    "hashsize": ("cache", "hashsize"),
    "debug": ("agent", "debug"),
}
#: options the exporters take (see :func:`_exporters`)
EXPORT_OPTIONS = ("protocol", "destination", "sndbuf", "engine_id", "refresh_rate",
                  "timeout_rate", "natevents")
#: options without an equivalent: (values that mean "off", why)
UNSUPPORTED = {
    "promisc": (("0",), "accounting promiscuous-mode traffic (promisc) is not supported by "
                "the NFLOG ingest; the eBPF ingest accounts a SPAN/mirror port with "
                "[[ingest.ebpf]] promisc = true"),
    "scan_min": (("1",), "the agent scans flows every [agent] scan_interval_ms (default 1000); "
                 "ipt_NETFLOW's jiffies do not translate"),
    "exportcpu": (("-1",), "the agent exports from its pipeline thread; pin the process "
                  "instead (systemd CPUAffinity=, taskset)"),
}
#: write-only actions in sysctl -a output: nothing to configure
ACTIONS = ("flush",)
TEMPLATE_DEFAULTS = {"refresh_rate": "20", "timeout_rate": "30"}


@dataclass(frozen=True, slots=True)
class Setting:
    """One option as written: ``name`` normalised (``refresh_rate``), ``spelled`` as given."""

    name: str
    spelled: str
    value: str
    origin: str

    def label(self) -> str:
        """``refresh-rate=20 (file:3)``."""
        return f"{self.spelled}={self.value} ({self.origin})"


class InputError(ValueError):
    """An input cannot be used at all (the message names the file and line)."""


# --- reading ---------------------------------------------------------------------------------


def _lines(text: str) -> Iterable[tuple[int, str]]:
    """Logical lines (``\\`` continuations joined) with the number of their first line."""
    pending, start = "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def _normal(name: str) -> str:
    return name.strip().replace("-", "_")


def parse_modprobe(text: str, source: str) -> tuple[list[Setting], list[str]]:
    """``options ipt_NETFLOW ...`` settings (then ``sysctl -w net.netflow.X=Y`` found in an
    ``install ipt_NETFLOW`` command) and notes about other ipt_NETFLOW lines."""
    settings: list[Setting] = []
    late: list[Setting] = []  # sysctl -w in install commands: applied after the options
    notes: list[str] = []
    for n, line in _lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise InputError(f"{source}:{n}: {exc}") from None
        if len(words) < 2 or _normal(words[1]) != MODULE:
            continue
        where = f"{source}:{n}"
        if words[0] == "options":
            for word in words[2:]:
                name, eq, value = word.partition("=")
                settings.append(Setting(_normal(name), name, value if eq else "1", where))
        elif words[0] == "install":  # runs instead of a plain load: its sysctls count
            found = parse_sysctl("\n".join(w for w in words[2:] if "=" in w), where)
            late += [Setting(x.name, x.spelled, x.value, where) for x in found]
            notes.append(f"install {MODULE} ... ({where}): a command modprobe runs to load "
                         f"the module; {len(found)} net.netflow sysctl(s) in it converted, "
                         "the rest of the command not")
        else:
            notes.append(f"{' '.join(words)} ({where}): not converted ({words[0]} lines have "
                         "no meaning without the module)")
    return settings + late, notes


def parse_sysctl(text: str, source: str) -> list[Setting]:
    """``net.netflow.NAME = VALUE`` lines (``sysctl -a`` output or sysctl.conf)."""
    settings = []
    for n, line in _lines(text):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        key, eq, value = stripped.partition("=")
        key = key.strip().replace("/", ".").lstrip("-")
        if not eq or not key.startswith("net.netflow.") or " " in key:
            continue
        name = key.removeprefix("net.netflow.")
        settings.append(Setting(_normal(name), name, value.strip(), f"{source}:{n}"))
    return settings


# --- converting ------------------------------------------------------------------------------


@dataclass
class Draft:
    """The TOML being built: tables by path (``cache``, ``export.netflow[0]``), which setting
    set each key, and the notes for what was not converted."""

    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    setters: dict[tuple[str, str], Setting] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    comments: dict[str, str] = field(default_factory=dict)

    def put(self, path: str, key: str, value: Any, setting: Setting | None) -> None:
        """Set ``[path] key = value``, remembering the option it came from."""
        self.tables.setdefault(path, {})[key] = value
        if setting is not None:
            self.setters[(path, key)] = setting

    def skip(self, setting: Setting, why: str) -> None:
        """Record an option that has no equivalent."""
        self.notes.append(f"{setting.label()}: {why}")


def convert(settings: list[Setting], nflog_group: int = 5, manage_rules: bool = False,
            registry: ComponentRegistry | None = None) -> Draft:
    """Map ``settings`` (later ones win) to netflow-agent tables; see the module docstring."""
    final: dict[str, Setting] = {}
    for s in settings:
        final[s.name] = s
    draft = Draft()
    for name, s in final.items():
        if name in SIMPLE:
            table, key = SIMPLE[name]
            number = _int(draft, s)
            if number is not None:
                draft.put(table, key, number, s)
        elif name == "sampler":  # "" and "0" mean off
            if s.value.strip() not in ("", "0"):
                draft.put("cache", "sampler", s.value.strip(), s)
        elif name == "aggregation":
            rules = [r.strip() for r in s.value.split(",") if r.strip()]
            if rules:
                draft.put("cache", "aggregation", rules, s)
        elif name == "snmp_rules":  # ipt_NETFLOW accepts any separator between rules
            rules = [r for r in re.split(r"[\s,;]+", s.value) if r]
            if rules:
                draft.put("agent", "snmp_rules", rules, s)
        elif name in UNSUPPORTED:
            off, why = UNSUPPORTED[name]
            if s.value.strip() not in off:
                draft.skip(s, f"no equivalent: {why}")
        elif name not in EXPORT_OPTIONS and name not in ACTIONS:
            draft.skip(s, "unknown ipt_NETFLOW option; not converted")
    _ingests(draft, final, nflog_group, manage_rules)
    _exporters(draft, final)
    if registry is not None:
        drop_refused(draft, registry)
    return draft


def _int(draft: Draft, s: Setting) -> int | None:
    try:
        return int(s.value, 0)
    except ValueError:
        draft.skip(s, "not converted: not an integer")
        return None


def _ingests(draft: Draft, final: dict[str, Setting], group: int, manage_rules: bool) -> None:
    path = "ingest.nflog[0]"
    draft.put(path, "group", group, None)
    draft.put(path, "manage_rules", manage_rules, None)
    draft.comments[path] = (
        "ipt_NETFLOW counted what iptables sent to -j NETFLOW. Send the same packets to this "
        f"NFLOG group instead: replace '-j NETFLOW' with '-j NFLOG --nflog-group {group}' "
        "(iptables and ip6tables), or set manage_rules = true and the agent installs "
        "nftables rules on input, forward and output itself.")
    nat = final.get("natevents")
    if nat is not None and _flag(nat.value):
        draft.tables["ingest.conntrack[0]"] = {}
        draft.comments["ingest.conntrack[0]"] = "natevents=1: NAT events from conntrack."


def _flag(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "n", "no", "false", "off")


def split_destination(text: str) -> tuple[str, str, str]:
    """``addr:port[@source][%iface]`` -> (endpoint with a port, source, interface)."""
    base, source, iface, marker, buf = "", "", "", "", ""
    for ch in text.strip() + "\0":
        if ch in "@%\0":
            if marker == "@":
                source = buf
            elif marker == "%":
                iface = buf
            else:
                base = buf
            marker, buf = ch, ""
        else:
            buf += ch
    if base.startswith("["):
        endpoint = base if "]:" in base else f"{base}:{DEFAULT_PORT}"
    elif base.count(":") == 1:
        endpoint = base
    elif ":" in base and _is_ipv6(base):  # a bare IPv6 address
        endpoint = f"[{base}]:{DEFAULT_PORT}"
    elif ":" in base:
        endpoint = base  # not an address: validation refuses it with the reason
    else:
        endpoint = f"{base}:{DEFAULT_PORT}"
    return endpoint, source, iface


def _is_ipv6(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _exporters(draft: Draft, final: dict[str, Setting]) -> None:
    """One exporter per source address (ipt_NETFLOW's ``@source`` is per destination)."""
    proto_s = final.get("protocol")
    protocol = 5
    if proto_s is not None:
        value = _int(draft, proto_s)
        if value in (5, 9, 10):
            protocol = value
        elif value is not None:
            draft.skip(proto_s, "not converted: protocol must be 5, 9 or 10; using 5")
    dest_s = final.get("destination")
    text = dest_s.value if dest_s is not None else DEFAULT_DESTINATION
    groups: dict[str, list[str]] = {}
    for item in [d for d in text.split(",") if d.strip()]:
        endpoint, source, iface = split_destination(item)
        if iface and dest_s is not None:
            draft.skip(dest_s, f"'%{iface}' of {item.strip()!r} not converted: binding the "
                       "export socket to an interface is not supported; the routing table "
                       "picks it (pin the address with @source = our `source`)")
        groups.setdefault(source, []).append(endpoint)
    kind = "ipfix" if protocol == 10 else "netflow"
    for n, (source, endpoints) in enumerate(groups.items()):
        path = f"export.{kind}[{n}]"
        draft.put(path, "destination", endpoints, dest_s)
        if kind == "netflow":
            draft.put(path, "protocol", protocol, proto_s)
        if source:
            draft.put(path, "source", source, dest_s)
        if len(groups) > 1:
            sender = source or "the routed address"
            draft.comments[path] = (f"The destinations sending from {sender} (one exporter "
                                    "per @source address).")
        _exporter_options(draft, final, path, protocol)
    if dest_s is None:
        draft.comments["export"] = f"destination: ipt_NETFLOW's default {DEFAULT_DESTINATION}"


def _exporter_options(draft: Draft, final: dict[str, Setting], path: str,
                      protocol: int) -> None:
    ipfix = protocol == 10
    for name, key in (("sndbuf", "sndbuf"),
                      ("engine_id", "observation_domain_id" if ipfix else "engine_id")):
        s = final.get(name)
        if s is not None and (value := _int(draft, s)) is not None and value:
            draft.put(path, key, value, s)
    for name in ("refresh_rate", "timeout_rate"):
        s = final.get(name)
        if s is None:
            continue
        if protocol == 5:
            if s.value.strip() != TEMPLATE_DEFAULTS[name] and path.endswith("[0]"):
                draft.skip(s, "no equivalent: NetFlow v5 has no templates to refresh")
            continue
        value = _int(draft, s)
        if value is None:
            continue
        if name == "timeout_rate" and ipfix:
            draft.put(path, "template_refresh_s", value * 60, s)  # minutes -> seconds
        else:
            draft.put(path, name, value, s)
    nat = final.get("natevents")
    if nat is not None and _flag(nat.value):
        draft.put(path, "natevents", True, nat)


# --- checking with the agent's own validation ------------------------------------------------


def as_data(draft: Draft) -> dict[str, Any]:
    """The draft as the nested data TOML would load into."""
    data: dict[str, Any] = {}
    for path, table in draft.tables.items():
        if "[" in path:
            stage_name = path.partition("[")[0]
            stage, _, name = stage_name.partition(".")
            data.setdefault(stage, {}).setdefault(name, []).append(table)
        else:
            data[path] = table
    return data


def validate_draft(draft: Draft, registry: ComponentRegistry) -> list[ConfigIssue]:
    """What ``agent --dry-run`` would say about the draft (without machine checks)."""
    _, issues = build(RawConfig(data=as_data(draft)), registry)
    return issues


def drop_refused(draft: Draft, registry: ComponentRegistry) -> None:
    """Take out every value the agent's validation refuses, noting why (repeat until clean
    or until nothing more can be attributed to an option)."""
    for _ in range(20):
        errors = [i for i in validate_draft(draft, registry) if i.severity == "error"]
        if not errors or not any(_drop(draft, issue) for issue in errors):
            return


def _drop(draft: Draft, issue: ConfigIssue) -> bool:
    for (path, key), setting in list(draft.setters.items()):
        prefix = f"{path}.{key}"
        if issue.path != prefix and not issue.path.startswith((prefix + "[", prefix + ".")):
            continue
        table = draft.tables[path]
        rest = issue.path[len(prefix):]
        if rest.startswith("[") and isinstance(table.get(key), list):
            index = int(rest[1:rest.index("]")])
            item = table[key].pop(index)
            draft.skip(setting, f"{item!r} not converted: {issue.message}")
            if table[key]:
                return True
        else:
            draft.skip(setting, f"not converted: {issue.message}")
        del table[key]
        del draft.setters[(path, key)]
        if key == "destination" or (not table and "[" not in path):
            del draft.tables[path]  # an exporter without collectors; an empty [cache]
        return True
    return False


# --- writing ---------------------------------------------------------------------------------


class _Encoder(toml.TomlEncoder):  # type: ignore[misc]
    """toml's encoder with arrays written as ``["a", "b"]``."""

    def dump_list(self, v: list[Any]) -> str:
        return "[" + ", ".join(str(self.dump_value(u)) for u in v) + "]"


def render(draft: Draft, sources: list[str]) -> str:
    """The TOML text: a header, every not-converted option as a comment, then the tables."""
    out = ["# netflow-agent configuration converted from ipt_NETFLOW settings",
           f"# by `agent config import-ipt-netflow` ({', '.join(sources) or 'no input'}).",
           "# Check it with: agent --dry-run -c THIS_FILE"]
    if draft.notes:
        out += ["#", "# Not converted:"]
        for note in draft.notes:
            out += _wrap(note, "#   ", "#       ")
    if "export" in draft.comments:
        out += ["#", f"# {draft.comments['export']}"]
    encoder = _Encoder()
    order = ("agent", "cache", "aggregate", "ingest", "export")
    for path in sorted(draft.tables, key=lambda p: order.index(p.partition(".")[0])):
        out.append("")
        if path in draft.comments:
            out += _wrap(draft.comments[path])
        out.append(f"[[{path.partition('[')[0]}]]" if "[" in path else f"[{path}]")
        for key, value in draft.tables[path].items():
            line = toml.dumps({key: value}, encoder=encoder).strip()
            setting = draft.setters.get((path, key))
            out.append(f"{line}  # {_origin_comment(setting)}" if setting else line)
    return "\n".join(out) + "\n"


def _origin_comment(setting: Setting) -> str:
    if len(setting.value) <= 40:
        return f"{setting.spelled}={setting.value}"
    return f"from {setting.spelled}= ({setting.origin})"


def _wrap(text: str, first: str = "# ", rest: str = "# ") -> list[str]:
    import textwrap

    return textwrap.wrap(text, 95, initial_indent=first, subsequent_indent=rest,
                         break_on_hyphens=False, break_long_words=False)


# --- the command -----------------------------------------------------------------------------


def _read(path: str) -> str:
    import sys

    try:
        return sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None


def cmd_import(modprobe: list[str], sysctl: list[str], output: str | None,
               nflog_group: int = 5, manage_rules: bool = False) -> int:
    """``agent config import-ipt-netflow``: 0 written and valid, 1 written but the agent
    would refuse it (issues on stderr), 2 unusable input (nothing written)."""
    import sys

    from netflow_agent.discovery import build_registry, make_manager

    if not modprobe and not sysctl:
        print("agent config import-ipt-netflow: give --modprobe FILE and/or --sysctl FILE "
              "('-' = standard input)", file=sys.stderr)
        return 2
    settings: list[Setting] = []
    notes: list[str] = []
    try:
        for path in modprobe:
            found, more = parse_modprobe(_read(path), "stdin" if path == "-" else path)
            settings += found
            notes += more
        for path in sysctl:
            settings += parse_sysctl(_read(path), "stdin" if path == "-" else path)
    except InputError as exc:
        print(f"agent config import-ipt-netflow: {exc}", file=sys.stderr)
        return 2
    pm, _ = make_manager([])
    registry = build_registry(pm)
    draft = convert(settings, nflog_group, manage_rules, registry)
    draft.notes[:0] = notes
    text = render(draft, ["stdin" if p == "-" else p for p in [*modprobe, *sysctl]])
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    issues = validate_draft(draft, registry)
    for issue in issues:
        print(issue.format(), file=sys.stderr)
    print(f"{len(settings)} option(s) read, {len(draft.notes)} not converted (see the "
          "comments at the top)", file=sys.stderr)
    return 1 if any(i.severity == "error" for i in issues) else 0
