"""Unprivileged: what the eBPF ingest says about its kernel tables' sizes at start.

A kernel that refuses the maps' memory (ENOMEM, EPERM from RLIMIT_MEMLOCK before 5.11, E2BIG)
makes the loader name a map; the start error keeps the loader's message and adds the sizes and
the keys that set them (only then: EPERM and E2BIG from a program, and EPERM from a map on a
kernel that charges maps to the memory cgroup, pass unchanged). The sizes
are in ``agent stats`` (``kernel_memory_bytes``) and in ``agent --dry-run`` (a note), and
explicit sizes over the host's share of memory get a warning at start.
"""

from __future__ import annotations

import errno
import logging
import os

import pytest

from netflow_agent.plugins.ingest_ebpf import CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN, _loader, sizing
from netflow_agent.plugins.ingest_ebpf.component import EbpfIngest
from netflow_agent.plugins.ingest_ebpf.config import Config
from netflow_agent.plugins.ingest_ebpf.load_error import (
    MEMCG_ACCOUNTING,
    kernel_version,
    load_error,
)
from netflow_agent.plugins.ingest_ebpf.sizing import kernel_sizes
from netflow_agent.runtime import RunContext
from tests.ops.helpers import cli

LOADER_ENOMEM = ("load BPF programs (verifier log below): Cannot allocate memory\n"
                 "libbpf: map 'slots_a': failed to create: -ENOMEM")


class RefusingLoader:
    """The loader as a kernel without room for the maps leaves it: the constructor fails."""

    def __init__(self, *args: object, **kwargs: object):
        raise OSError(errno.ENOMEM, LOADER_ENOMEM)


def start(monkeypatch: pytest.MonkeyPatch, mem: int,
          **options: object) -> tuple[EbpfIngest, OSError]:
    """``agent_start`` of an instance with ``options`` on a 4-CPU host of ``mem`` bytes whose
    kernel refuses the maps: the instance and the error it raised."""
    monkeypatch.setattr(_loader, "Loader", RefusingLoader)
    monkeypatch.setattr(sizing, "mem_total", lambda path="": mem)
    monkeypatch.setattr(sizing, "possible_cpus", lambda path="": 4)
    comp = EbpfIngest(Config(interfaces=["eth0"], **options), "ingest.ebpf[0]")
    with pytest.raises(OSError) as caught:
        comp.agent_start(context=RunContext(core_stats=lambda: {"maxflows_limit": 2_000_000}))
    return comp, caught.value


def test_a_refused_map_names_the_sizes_and_the_keys(monkeypatch):
    comp, exc = start(monkeypatch, 24 << 30)
    assert exc.errno == errno.ENOMEM
    text = str(exc)
    # 4 CPUs: 524,288 flows (152 MiB) and 262,144 line slots per CPU (130 MiB)
    assert "kernel tables 152 MiB" in text and "slots 130 MiB (262144 per CPU on 4 CPUs)" in text
    assert "282 MiB of kernel memory" in text
    assert "cpu_slots" in text and "[cache] maxflows" in text
    assert "Cannot allocate memory" in text  # the loader's own words stay
    assert comp.stats["kernel_memory_bytes"] == 2 * 524_288 * 152 + 2 * 262_144 * 4 * 65


def test_other_loader_errors_pass_unchanged(monkeypatch):
    class NoBtf:
        def __init__(self, *args: object, **kwargs: object):
            raise OSError(errno.ENOENT, "open BPF object: No such file or directory")

    monkeypatch.setattr(_loader, "Loader", NoBtf)
    comp = EbpfIngest(Config(interfaces=["eth0"]), "ingest.ebpf[0]")
    with pytest.raises(OSError, match=r"^\[Errno 2\] open BPF object") as caught:
        comp.agent_start(context=RunContext())
    assert caught.value.__cause__ is None  # the loader's own error, not its own cause


def test_a_small_host_gets_small_tables_and_explicit_ones_a_warning(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING):
        comp, _ = start(monkeypatch, 1 << 30)  # a 1 GB router: 1/8 of it
    assert comp.maxflows == 262_144 and comp.cpu_slots == 65_536
    assert comp.stats["kernel_memory_bytes"] >> 20 == 108
    assert "take more than" not in caplog.text
    with caplog.at_level(logging.WARNING):
        comp, exc = start(monkeypatch, 1 << 30, maxflows=524_288, cpu_slots=262_144)
    assert "take more than 1/8 of this host's 1024 MiB" in caplog.text
    assert comp.stats["kernel_memory_bytes"] >> 20 == 282
    assert "LimitMEMLOCK" not in str(exc)  # ENOMEM: not the memlock limit


def failing_loader(err: int, message: str) -> type:
    """A loader whose constructor fails with ``err`` and ``message`` (libbpf log included)."""

    class Failing:
        def __init__(self, *args: object, **kwargs: object):
            raise OSError(err, message)

    return Failing


def start_error(monkeypatch: pytest.MonkeyPatch, err: int, message: str) -> OSError:
    """The error ``agent_start`` raises when the loader fails with ``err`` and ``message``."""
    monkeypatch.setattr(_loader, "Loader", failing_loader(err, message))
    comp = EbpfIngest(Config(interfaces=["eth0"]), "ingest.ebpf[0]")
    with pytest.raises(OSError) as caught:
        comp.agent_start(context=RunContext())
    return caught.value


PROG_REFUSED = ("load BPF programs (verifier log below): {}\n"
                "libbpf: prog 'flow_tc': BPF program load failed: {}\n"
                "libbpf: prog 'flow_tc': failed to load: -{}")


@pytest.mark.parametrize("err, name", [(errno.EPERM, "EPERM"), (errno.E2BIG, "E2BIG")])
def test_a_refused_program_passes_unchanged(monkeypatch, err, name):
    """EPERM (no CAP_BPF, lockdown, seccomp, an LSM) or E2BIG (a program too large for the
    verifier) from a program, not a map: the loader's message, not the sizes."""
    message = PROG_REFUSED.format(os.strerror(err), os.strerror(err), name)
    exc = start_error(monkeypatch, err, message)
    assert exc.errno == err and exc.strerror == message
    assert exc.__cause__ is None  # not its own cause
    assert "cpu_slots" not in str(exc) and "LimitMEMLOCK" not in str(exc)


def map_refused(err: int) -> str:
    """The loader's message for ``err`` when libbpf could not create map ``flows_a``."""
    return (f"load BPF programs (verifier log below): {os.strerror(err)}\n"
            f"libbpf: map 'flows_a': failed to create: {os.strerror(err)}(-{err})")


@pytest.mark.parametrize("err", [errno.ENOMEM, errno.E2BIG])
def test_a_refused_map_gets_the_sizes_after_the_loaders_message(monkeypatch, err):
    exc = start_error(monkeypatch, err, map_refused(err))
    assert exc.errno == err and isinstance(exc.__cause__, OSError)
    first, _, log = exc.strerror.partition("\n")
    assert first.startswith(f"load BPF programs (verifier log below): {os.strerror(err)}; "
                            "kernel tables ")
    assert "cpu_slots / maxflows" in first and log.startswith("libbpf: map 'flows_a'")
    assert "LimitMEMLOCK" not in exc.strerror  # this kernel charges maps to the cgroup


def test_eperm_from_a_map_on_a_memcg_kernel_passes_unchanged(monkeypatch):
    """From 5.11 a map too large for the memory cgroup is ENOMEM: EPERM is capabilities,
    lockdown or an LSM, never the sizes (this machine's kernel is 6.18)."""
    assert kernel_version() >= MEMCG_ACCOUNTING
    exc = start_error(monkeypatch, errno.EPERM, map_refused(errno.EPERM))
    assert exc.errno == errno.EPERM and exc.strerror == map_refused(errno.EPERM)
    assert exc.__cause__ is None


def test_a_retry_notice_before_a_program_failure_passes_unchanged(monkeypatch):
    """libbpf's "Error in bpf_create_map_xattr(...)" is followed by a retry without BTF that
    creates the map: the program, not a map, failed."""
    message = ("load BPF programs (verifier log below): Cannot allocate memory\n"
               "libbpf: Error in bpf_create_map_xattr(flows_a):Invalid argument(-22). "
               "Retrying without BTF.\n"
               "libbpf: prog 'flow_tc': BPF program load failed: Cannot allocate memory\n"
               "libbpf: prog 'flow_tc': failed to load: -12")
    exc = start_error(monkeypatch, errno.ENOMEM, message)
    assert exc.strerror == message and "cpu_slots" not in str(exc)


@pytest.mark.parametrize("release, caps, hint", [
    ("5.10.0-28-amd64", 1 << CAP_BPF, True),
    ("5.10.0-28-amd64", 1 << CAP_SYS_ADMIN, True),
    ("5.10.0-28-amd64", 1 << CAP_NET_ADMIN, False),  # EPERM: the missing capability
    ("5.11.0", 1 << CAP_SYS_ADMIN, False),  # memory cgroup, not RLIMIT_MEMLOCK
])
def test_eperm_mentions_the_memlock_limit_only_where_it_applies(release, caps, hint):
    sizes = kernel_sizes(0, "auto", 0, False, ncpu=2, mem_bytes=8 << 30)
    message = ("load BPF programs (verifier log below): Operation not permitted\n"
               "libbpf: map 'slots_a': failed to create: Operation not permitted(-1)")
    exc = load_error(OSError(errno.EPERM, message), sizes, release, caps)
    assert ("LimitMEMLOCK=infinity" in exc.strerror) == hint
    assert ("cpu_slots" in exc.strerror) == hint  # EPERM is the sizes only under memlock


def test_dry_run_notes_the_kernel_memory(tmp_path):
    conf = tmp_path / "agent.toml"
    conf.write_text('[[ingest.ebpf]]\ninterfaces = ["lo"]\ncpu_slots = 4096\n'
                    '[[export.netflow]]\ndestination = ["127.0.0.1:2055"]\n')
    proc = cli("--dry-run", "-c", str(conf))
    assert proc.returncode == 0, proc.stderr
    ncpu = sizing.possible_cpus()
    assert ("ingest.ebpf[0]: note: on this host: kernel tables" in proc.stderr
            and f"(4096 per CPU on {ncpu} CPUs)" in proc.stderr), proc.stderr


@pytest.mark.parametrize("poll_ms, lag_ms", [(1000, 1500), (250, 750)])
def test_the_start_declares_the_poll_interval_as_its_delivery_lag(monkeypatch, poll_ms, lag_ms):
    """A packet waits in the kernel table up to a poll interval (plus the drain's own time):
    the cache waits as long past inactive_timeout before it calls a flow idle, so a flow
    pausing for just under the timeout stays one record. Declared before the maps are made
    (the core forgets it when the start fails)."""
    monkeypatch.setattr(_loader, "Loader", RefusingLoader)
    context = RunContext(core_stats=lambda: {"maxflows_limit": 2_000_000})
    comp = EbpfIngest(Config(interfaces=["eth0"], poll_interval_ms=poll_ms), "ingest.ebpf[0]")
    with pytest.raises(OSError):
        comp.agent_start(context=context)
    assert context.delivery_lags == {"ingest.ebpf[0]": lag_ms * 1_000_000}
