"""What a failed BPF load tells the user: the loader's error, plus the tables' sizes when the
kernel refused a map, plus the memlock limit where it can be the cause.

``flow_bpf__load`` creates the maps and runs the verifier, so its errno alone does not say
which failed: EPERM also comes from missing CAP_BPF, lockdown, ``unprivileged_bpf_disabled``,
seccomp or an LSM, and the verifier returns E2BIG for a program too large. Only a libbpf log
that names a map ("map 'flows_a': failed to create", libbpf's only wording for it) blames the
sizes, and then only for an errno the map's size can cause: ENOMEM or E2BIG, or EPERM where
RLIMIT_MEMLOCK still applies (:func:`memlock_may_refuse`; from 5.11 maps are charged to the
memory cgroup, which answers ENOMEM, so EPERM there is capabilities, lockdown or an LSM).
"""

from __future__ import annotations

import errno
import os
import re

from . import CAP_BPF, CAP_SYS_ADMIN, effective_caps
from .sizing import KernelSizes

#: errnos of a map the kernel could not create: no memory for it (ENOMEM; EPERM from
#: RLIMIT_MEMLOCK before kernel 5.11) or a size it refuses (E2BIG)
MAP_SIZE_ERRNOS = (errno.ENOMEM, errno.EPERM, errno.E2BIG)
#: a libbpf log line naming a map it could not create (every libbpf version's wording; its
#: "Error in bpf_create_map_xattr(...) Retrying without BTF" is a notice before a retry)
MAP_FAILED = re.compile(r"map '[^']*': failed to create")
#: the first kernel that charges BPF maps to the memory cgroup instead of RLIMIT_MEMLOCK
MEMCG_ACCOUNTING = (5, 11)
MEMLOCK_HINT = ("kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK: LimitMEMLOCK=infinity "
                "in the systemd unit")


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel (or of ``release``, ``uname -r``'s form)."""
    numbers = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(numbers[1]), int(numbers[2])) if numbers else (0, 0)


def memlock_may_refuse(release: str | None = None, caps: int | None = None) -> bool:
    """EPERM can be RLIMIT_MEMLOCK here: a kernel before 5.11 and the BPF privileges held (so
    EPERM is not about them)."""
    caps = effective_caps() if caps is None else caps
    return (kernel_version(release) < MEMCG_ACCOUNTING
            and bool(caps & (1 << CAP_BPF | 1 << CAP_SYS_ADMIN)))


def load_error(exc: OSError, sizes: KernelSizes, release: str | None = None,
               caps: int | None = None) -> OSError:
    """``exc`` from the loader, or (when the kernel refused a map's memory or size) a new error
    that keeps the loader's message first and adds the sizes and the keys that set them; an
    EPERM counts only where the memlock limit can be the cause, and names it too."""
    if exc.errno not in MAP_SIZE_ERRNOS:
        return exc
    text = exc.strerror or str(exc)
    extra = []
    memlock = exc.errno == errno.EPERM and memlock_may_refuse(release, caps)
    if MAP_FAILED.search(text) and (exc.errno != errno.EPERM or memlock):
        extra.append(f"{sizes.describe()}, {sizes.total_bytes >> 20} MiB of kernel memory: "
                     f"lower [[ingest.ebpf]] cpu_slots / maxflows or [cache] maxflows")
    if memlock:
        extra.append(MEMLOCK_HINT)
    if not extra:
        return exc
    first, newline, log = text.partition("\n")  # the libbpf log stays below
    return OSError(exc.errno, "; ".join([first, *extra]) + newline + log)
