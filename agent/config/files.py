"""Checks of the local files a configuration names: who may change them, who may write them.

Used by :func:`agent.config.check.validate` (every dry-run, start and reload) and by the
``agent_check_config`` hooks under ``--check-env`` (docs/operations.md, "Local files and
permissions"):

* :func:`config_permission_issues`: a configuration file others may change configures what
  root runs. As root (or at a reload after root was dropped), a world-writable file is an
  error (the agent refuses to start or reload with it, ``--dry-run`` exits 78); a file in a
  directory anyone may replace it in (world-writable without the sticky bit), a file or
  directory writable by a non-root user or group, or a conf.d directory others may add files
  to, is a warning (an error under ``--strict``). As another user, a world-writable file is a
  warning;
* :func:`agent_file_issues`: the control socket path must be free or a socket; a state file
  that would be quarantined at start is announced;
* :func:`output_issues`: an output file (IPFIX file, ``export.log``) must be writable by the
  user the agent runs as after the drop (``[agent] user``), or by this process.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from netflow_agent import localfiles, privileges
from netflow_agent.errors import ConfigIssue, Severity


def config_permission_issues(path: str | Path, files: list[str]) -> list[ConfigIssue]:
    """Issues for configuration files (and their directories) others may change.

    "As root" includes a reload after root was dropped (the agent still acts for root).
    """
    root = privileges.started_as_root()
    issues: list[ConfigIssue] = []
    if Path(path).is_dir():
        issues += _conf_dir_issues(str(path), root)
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            continue  # the loader reports missing or unreadable files
        issues += _file_issues(f, st, root)
        if not Path(path).is_dir():
            issues += _dir_issues(f, root)
    return issues


def _file_issues(f: str, st: os.stat_result, root: bool) -> list[ConfigIssue]:
    mode = stat.S_IMODE(st.st_mode)
    if st.st_mode & stat.S_IWOTH:
        severity: Severity = "error" if root else "warning"
        return [ConfigIssue("", f"configuration file is writable by everyone (mode {mode:04o}): "
                            "anyone could change what the agent runs; chmod o-w it",
                            severity=severity, file=f)]
    others = localfiles.writers(st)
    if root and others:
        return [ConfigIssue("", f"configuration file is writable by {', '.join(others)} (mode "
                            f"{mode:04o}, running as root): they configure what root runs; "
                            "make it root's, chmod go-w", severity="warning", file=f)]
    return []


def _dir_issues(f: str, root: bool) -> list[ConfigIssue]:
    directory = str(Path(f).resolve().parent)
    st = os.stat(directory)
    if st.st_mode & stat.S_ISVTX:
        return []  # others may add files there, not replace this one
    others = localfiles.writers(st)
    if others and (root or "everyone" in others):
        return [ConfigIssue("", f"its directory {directory} is writable by {', '.join(others)} "
                            "without the sticky bit: they can replace the file", "warning",
                            file=f)]
    return []


def _conf_dir_issues(directory: str, root: bool) -> list[ConfigIssue]:
    others = localfiles.writers(os.stat(directory))
    if others and (root or "everyone" in others):
        return [ConfigIssue("", f"configuration directory is writable by {', '.join(others)}: "
                            "they can add *.toml files to it", "warning", file=directory)]
    return []


# --- [agent] files (--check-env) -------------------------------------------------------------


def agent_file_issues(section: Any) -> list[ConfigIssue]:
    """The control socket path and the state file, as the start will find them."""
    issues = []
    if section.control_socket:
        problem = localfiles.socket_path_problem(section.control_socket)
        if problem:
            issues.append(ConfigIssue("agent.control_socket", problem))
    if section.state_file:
        issues += _state_file_issues(section.state_file)
    return issues


def _state_file_issues(path: str) -> list[ConfigIssue]:
    try:
        st = os.lstat(path)
    except OSError:
        return []
    problem = ""
    if not stat.S_ISREG(st.st_mode):
        problem = f"it is a {localfiles.file_kind(st.st_mode)}"
    elif os.geteuid() == 0 and (st.st_uid != 0 or st.st_mode & 0o022):
        problem = f"it is not root's alone (uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
    if not problem:
        return []
    return [ConfigIssue("agent.state_file", f"{path}: {problem}; the start will refuse it and "
                        "move it aside (its flows are not restored)", "warning")]


# --- output files (--check-env) --------------------------------------------------------------


def _runner(section: Any) -> tuple[localfiles.Who | None, str]:
    """Who writes output files after start-up: the ``[agent] user`` the agent drops to (when
    running as root), else this process (``None``)."""
    if section.user and os.geteuid() == 0:
        try:
            ident = privileges.resolve(section.user, section.group)
        except privileges.PrivilegeError:
            return None, "this user"  # reported by the [agent] user check
        return localfiles.Who(ident.uid, ident.gid, ident.groups), f"user {ident.user!r}"
    return None, "this user"


def output_issues(key: str, path: str, section: Any, *, opened_at_start: bool,
                  rotated: bool = False) -> list[ConfigIssue]:
    """Can the agent write the output file ``path`` once it runs as its user?

    :param key: the option's dotted path, e.g. ``export.ipfix[0].path``.
    :param opened_at_start: the component opens the file in ``agent_start``, before the
        drop (as root, which hands a file it creates to the user): a problem then only shows
        when a reload reopens it, so it is a warning; otherwise an error.
    :param rotated: the file is renamed and recreated by the user (needs the directory).
    """
    if not path or path == "-":
        return []
    who, name = _runner(section)
    dropping = who is not None
    severity: Severity = "warning" if (opened_at_start and dropping) else "error"
    problem = _write_problem(Path(path).absolute(), who, name, rotated=rotated,
                             root_creates=opened_at_start and dropping)
    issues = [ConfigIssue(key, problem, severity)] if problem else []
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return issues
    if mode & stat.S_IROTH and stat.S_ISREG(mode):
        issues.append(ConfigIssue(key, f"{path} is readable by every user (mode "
                                  f"{stat.S_IMODE(mode):04o}): flow data; chmod o-r it "
                                  "(files the agent creates are 0640)", "warning"))
    return issues


def _write_problem(path: Path, who: localfiles.Who | None, name: str, *, rotated: bool,
                   root_creates: bool) -> str:
    parent = path.parent
    if not parent.is_dir():
        return f"directory {parent} does not exist"
    blocked = localfiles.unreachable_dir(str(parent), who)
    if blocked:
        return f"{name} cannot reach {path}: no search permission on {blocked}"
    exists = path.exists()
    if exists and not localfiles.may_access(str(path), who, os.W_OK):
        return f"{name} cannot write {path}"
    needs_dir = rotated or not (exists or root_creates)
    if needs_dir and not localfiles.may_access(str(parent), who, os.W_OK | os.X_OK):
        verb = "rotate" if exists else "create"
        return f"{name} cannot {verb} files in {parent} (directory not writable)"
    return ""
