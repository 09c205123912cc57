"""Network namespaces, veth links and traffic with exact ground truth, for privileged tests.

What it owns (see ``ip-netns(8)``, ``ip-link(8)``, ``veth(4)``):

* :class:`Netns`: a uniquely named namespace (``nfa-<pid>-<n>``), ``lo`` up, commands run
  inside it with ``ip netns exec``; processes it started are ended by PID and the namespace is
  deleted on exit, also when the test failed.
* :func:`veth_pair`: a veth link between two namespaces, created directly inside them (it never
  appears in the host namespace), IPv4 and IPv6 addresses (``nodad``). Links are **quiet** by
  default: ARP off, static neighbour entries both ways, no IPv6 link-local address, no router
  solicitations, so the only packets on the wire are the ones a test sends (no ARP, no
  neighbour discovery, no MLD reports) and flow tables can be compared exactly.
* :func:`routed_topology`: client -- router -- server with forwarding on and default routes,
  for FORWARD and NAT tests. Subnets are unique per call (``10.A.B.0/24``, ``fd00:A:B::/64``).
* Traffic: :func:`send_udp`, :func:`send_icmp_echo` (exact counts computed from the sizes),
  :func:`tcp_connections` (counted from a capture taken by :class:`Capture`, because TCP
  segmentation is the kernel's choice). They run small Python scripts through ``ip netns
  exec`` and return :class:`Traffic` with a :class:`~tests.support.truth.GroundTruth`.

Fixtures (re-exported by ``tests/conftest.py``): ``netns``, ``veth_pair_ns``, ``routed``.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.truth import PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP, FlowId, GroundTruth

log = logging.getLogger("tests.support.netns")

_names = itertools.count(1)
_subnets = itertools.count(1)
_QUIET_SYSCTLS = {  # applied before interfaces exist, so they inherit the defaults
    "net.ipv6.conf.default.addr_gen_mode": "1",  # no link-local address (no MLD, no DAD)
    "net.ipv6.conf.default.router_solicitations": "0",
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv6.conf.all.accept_dad": "0",
}


class NetnsError(RuntimeError):
    """A command inside a namespace failed; the message has the command, code and stderr."""


def unique_name(prefix: str = "nfa") -> str:
    """A namespace name unique on this machine while this process lives: ``nfa-<pid>-<n>``."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def stale_names(names: Iterable[str], alive: Callable[[int], bool]) -> list[str]:
    """The names of ``names`` that a test process made (``nfa-<pid>-<n>``) and whose process
    is gone: what a test killed by a signal or a timeout leaves behind."""
    out = []
    for name in names:
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == "nfa" and parts[1].isdigit() and parts[2].isdigit():
            if not alive(int(parts[1])):
                out.append(name)
    return out


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _lock_dir() -> Path:
    """``/run/lock`` (the machine's lock directory), else ``/tmp``: one fixed place, whatever
    ``TMPDIR`` a session has (with ``tempfile.gettempdir()`` two sessions with different
    ``TMPDIR`` took different locks and reaped each other's namespaces)."""
    run_lock = Path("/run/lock")
    return run_lock if run_lock.is_dir() and os.access(run_lock, os.W_OK) else Path("/tmp")


#: held by every reaper (:func:`reaper_lock`): test sessions run side by side on one machine
#: (xdist workers, other checkouts' runs), and each one's start reaps
REAPER_LOCK = _lock_dir() / "nfa-netns-reaper.lock"
#: how long a reaper waits for the lock before it gives up and says who may hold it
REAPER_LOCK_TIMEOUT_S = 300.0


@contextlib.contextmanager
def reaper_lock(timeout: float = REAPER_LOCK_TIMEOUT_S,
                path: Path | None = None) -> Iterator[None]:
    """Exclusive against every other reaper on the machine (``flock``, released when the
    process dies). The reaper's own test holds it while a dead process's namespace exists:
    another session starting then would otherwise reap it first.

    :raises NetnsError: not obtained within ``timeout`` seconds (a hung test session holds
        it: the message names the file, ``fuser`` finds the holder).
    """
    path = REAPER_LOCK if path is None else path
    with open(path, "a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise NetnsError(
                        f"the namespace reaper lock {path} is still held after {timeout:g} s "
                        f"(another test session hung? `fuser -v {path}` shows who holds it)"
                    ) from None
                time.sleep(0.05)
        yield


def reap_stale(locked: bool = False) -> list[str]:
    """Delete the namespaces that killed test processes left (see :func:`stale_names`) and
    that hold no process any more; return their names. Names of live processes, and any other
    namespace, are left alone.

    :param locked: the caller holds :func:`reaper_lock` already (else it is taken here).
    """
    if not locked:
        with reaper_lock():
            return reap_stale(locked=True)
    listed = _run(["ip", "netns", "list"], check=False).stdout.split("\n")
    reaped = []
    for name in stale_names((line.split()[0] for line in listed if line.strip()), _pid_alive):
        if _run(["ip", "netns", "pids", name], check=False).stdout.strip():
            continue
        if _run(["ip", "netns", "del", name], check=False).returncode == 0:
            reaped.append(name)
    return reaped


def _run(
    cmd: Sequence[str], check: bool = True, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; raise :class:`NetnsError` on failure."""
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)!r} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def end_process(proc: subprocess.Popen, timeout: float = 5) -> None:
    """Stop a process we started, by PID: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout)


class Netns:
    """A network namespace owned by one test.

    Name: ``nfa-<pid>-<n>`` unless given. Use as a context manager, or through the ``netns``
    fixture. :attr:`interfaces` maps the names of links added by :func:`veth_pair` to ifindexes.

    :param name: explicit name (must not exist yet).
    :param quiet: apply the quiet-link sysctls (see the module docstring).
    """

    def __init__(self, name: str | None = None, quiet: bool = True):
        self.name = name or unique_name()
        self.quiet = quiet
        self.interfaces: dict[str, int] = {}
        self._procs: list[subprocess.Popen] = []
        self._created = False

    def __repr__(self) -> str:
        return f"<Netns {self.name}>"

    def __enter__(self) -> Netns:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def create(self) -> Netns:
        """``ip netns add``, ``lo`` up and the quiet sysctls; deletes it again on failure."""
        _run(["ip", "netns", "add", self.name])
        self._created = True
        try:
            self.run(["ip", "link", "set", "lo", "up"])
            if self.quiet:
                self.sysctl(_QUIET_SYSCTLS)
        except Exception:
            self.delete()
            raise
        return self

    def exec_args(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` prefixed with ``ip netns exec NAME``."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(
        self, cmd: Sequence[str], check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace and wait for it (text output captured).

        :raise NetnsError: when ``check`` and the command exits non-zero.
        """
        return _run(self.exec_args(cmd), check=check, timeout=timeout, input=input)

    def popen(self, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen:
        """Start ``cmd`` inside the namespace; :meth:`delete` ends it by PID if still running.

        ``ip netns exec`` execs the command, so the PID is the command's own. Defaults:
        stdout/stderr piped, text mode.
        """
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = subprocess.Popen(self.exec_args(cmd), **kwargs)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    def python(self, code: str, *args: str, timeout: float = 60) -> str:
        """Run a Python snippet inside the namespace with this interpreter; return stdout."""
        return self.run([sys.executable, "-c", code, *args], timeout=timeout).stdout

    def sysctl(self, values: dict[str, str]) -> None:
        """Set sysctls inside the namespace (per-netns keys only touch this namespace)."""
        self.run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())])

    def link(self, ifname: str) -> dict:
        """``ip -j link show dev IFNAME`` as a dict (``ifindex``, ``address``, ``mtu``...)."""
        return json.loads(self.run(["ip", "-j", "link", "show", "dev", ifname]).stdout)[0]

    def ifindex(self, ifname: str) -> int:
        """The interface index of ``ifname`` inside this namespace."""
        return int(self.link(ifname)["ifindex"])

    def pids(self) -> list[int]:
        """PIDs of processes running inside the namespace (``ip netns pids``)."""
        out = _run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split()]

    def delete(self) -> None:
        """End our processes (by PID), then any left inside the namespace, then delete it."""
        for proc in reversed(self._procs):
            end_process(proc)
        self._procs.clear()
        if not self._created:
            return
        for pid in self.pids():  # only this test's processes can live in its namespace
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc = _run(["ip", "netns", "del", self.name], check=False)
        if proc.returncode != 0:
            log.warning("could not delete netns %s: %s", self.name, proc.stderr.strip())
        self._created = False


# --- links and topologies -----------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One end of a veth link: namespace, interface and its addresses (without prefix)."""

    ns: Netns
    ifname: str
    ifindex: int
    mac: str
    addr: str
    addr6: str
    prefixlen: int = 24
    prefixlen6: int = 64


@dataclass(frozen=True)
class VethPair:
    """A veth link: :attr:`a` and :attr:`b` are the two ends."""

    a: Endpoint
    b: Endpoint


def next_subnet() -> tuple[str, str]:
    """A fresh ``(IPv4 /24 prefix, IPv6 /64 prefix)``, e.g. ``("10.142.7", "fd00:8e:7")``.

    Unique within this process; namespaces keep different processes apart anyway.
    """
    return subnet_for(os.getpid(), next(_subnets))


def subnet_for(pid: int, n: int) -> tuple[str, str]:
    """:func:`next_subnet`'s ``n``-th prefix in process ``pid``: inside ``10.64.0.0/10`` and
    ``fd00:40::/26``, clear of the flood generator's sources (``10.128.0.0/9``,
    ``fd00:80::/64``, tests/support/flowgen.py). A router with a connected subnet among the
    sources forwards the receiver's ICMP errors back to them and drops flows whose source
    is its own address, so a flood test then sees packets it never sent and loses some it
    did (16 process ids in 128 could before, the more the larger the flood)."""
    a = 64 + pid % 64
    return f"10.{a}.{n % 256}", f"fd00:{a:x}:{n:x}"


def veth_pair(
    ns_a: Netns,
    ns_b: Netns,
    addr_a: str | None = None,
    addr_b: str | None = None,
    addr6_a: str | None = None,
    addr6_b: str | None = None,
    *,
    name_a: str = "",
    name_b: str = "",
) -> VethPair:
    """Connect two namespaces with a veth link and bring it up.

    Addresses are CIDR strings (``"10.1.2.1/24"``, ``"fd00:1:2::1/64"``); omitted ones come from
    :func:`next_subnet` (``.1``/``.2``, ``::1``/``::2``). IPv6 addresses get ``nodad``. On quiet
    namespaces ARP is off and static neighbour entries are added both ways.

    :param name_a: interface name in ``ns_a`` (default ``v<n>a``; names are per namespace).
    """
    v4, v6 = next_subnet()
    addr_a, addr_b = addr_a or f"{v4}.1/24", addr_b or f"{v4}.2/24"
    addr6_a, addr6_b = addr6_a or f"{v6}::1/64", addr6_b or f"{v6}::2/64"
    name_a = name_a or f"v{len(ns_a.interfaces)}a"
    name_b = name_b or f"v{len(ns_b.interfaces)}b"
    ns_a.run(
        ["ip", "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b.name]
    )
    a = _configure_end(ns_a, name_a, addr_a, addr6_a)
    b = _configure_end(ns_b, name_b, addr_b, addr6_b)
    if ns_a.quiet and ns_b.quiet:
        _static_neighbours(a, b)
        _static_neighbours(b, a)
    for end in (a, b):
        end.ns.run(["ip", "link", "set", end.ifname, "up"])
    return VethPair(a, b)


def _configure_end(ns: Netns, ifname: str, addr: str, addr6: str) -> Endpoint:
    if ns.quiet:
        ns.run(["ip", "link", "set", ifname, "arp", "off"])
    ns.run(["ip", "addr", "add", addr, "dev", ifname])
    ns.run(["ip", "addr", "add", addr6, "dev", ifname, "nodad"])
    info = ns.link(ifname)
    ns.interfaces[ifname] = int(info["ifindex"])
    i4, i6 = ipaddress.ip_interface(addr), ipaddress.ip_interface(addr6)
    return Endpoint(
        ns,
        ifname,
        int(info["ifindex"]),
        info["address"],
        str(i4.ip),
        str(i6.ip),
        i4.network.prefixlen,
        i6.network.prefixlen,
    )


def set_offloads(end: Endpoint, enabled: bool) -> None:
    """Switch TSO/GSO/GRO on ``end`` (ethtool). Off: every TCP packet is wire-sized.

    veth passes GSO "super-packets" through, so with offloads on, a capture or a flow meter on
    the link counts one packet per skb (up to 64 KB), not per wire segment.
    """
    state = "on" if enabled else "off"
    end.ns.run(["ethtool", "-K", end.ifname, "tso", state, "gso", state, "gro", state])


def _static_neighbours(local: Endpoint, peer: Endpoint) -> None:
    """Permanent neighbour entries on ``local`` for ``peer``: no ARP or ND is ever sent."""
    for addr in (peer.addr, peer.addr6):
        local.ns.run(
            [
                "ip",
                "neigh",
                "replace",
                addr,
                "lladdr",
                peer.mac,
                "dev",
                local.ifname,
                "nud",
                "permanent",
            ]
        )


@dataclass
class RoutedTopology:
    """client -- router -- server. ``left`` is client<->router, ``right`` router<->server."""

    client_ns: Netns
    router_ns: Netns
    server_ns: Netns
    left: VethPair
    right: VethPair
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    @property
    def client(self) -> Endpoint:
        return self.left.a

    @property
    def router_client(self) -> Endpoint:
        """The router's interface towards the client (ingress for client->server traffic)."""
        return self.left.b

    @property
    def router_server(self) -> Endpoint:
        """The router's interface towards the server (egress for client->server traffic)."""
        return self.right.a

    @property
    def server(self) -> Endpoint:
        return self.right.b

    def close(self) -> None:
        """Delete the three namespaces (and everything started in them)."""
        self._stack.close()

    def __enter__(self) -> RoutedTopology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def routed_topology() -> RoutedTopology:
    """Build client -- router -- server with IPv4 and IPv6 forwarding in the router.

    The client and server have default routes through the router; all links are quiet.
    Close it (or use it as a context manager, or the ``routed`` fixture) to clean up.
    """
    stack = contextlib.ExitStack()
    try:
        client, router, server = (stack.enter_context(Netns()) for _ in range(3))
        router.sysctl({"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})
        left = veth_pair(client, router, name_a="c0", name_b="rc")
        right = veth_pair(router, server, name_a="rs", name_b="s0")
        for end, gw in ((left.a, left.b), (right.b, right.a)):
            end.ns.run(["ip", "route", "add", "default", "via", gw.addr])
            end.ns.run(["ip", "-6", "route", "add", "default", "via", gw.addr6])
        return RoutedTopology(client, router, server, left, right, stack)
    except BaseException:
        stack.close()
        raise


def vxlan_overlay(a: Endpoint, b: Endpoint, ifname: str = "vx0") -> tuple[str, str, str, str]:
    """A quiet VXLAN link ``ifname`` (VNI 42, UDP 4789) between ``a`` and ``b`` over their
    (underlay) addresses. This kernel has no GRE or Geneve links (/work/shared/KERNEL.md):
    tests of those write crafted frames (:func:`send_frames`, ``tests.support.pcapgen``).

    :return: the overlay addresses ``(a IPv4, b IPv4, a IPv6, b IPv6)``. ARP is off, the
        neighbours are permanent and IPv6 has no DAD, so only the traffic a test sends (and
        the MLD reports of the new addresses, to ``ff02::``) crosses the link.
    """
    ends = ((a, b, "192.168.77.1", "fd77::1"), (b, a, "192.168.77.2", "fd77::2"))
    for local, remote, addr, addr6 in ends:
        ns = local.ns
        ns.run(["ip", "link", "add", ifname, "type", "vxlan", "id", "42", "remote", remote.addr,
                "local", local.addr, "dstport", "4789", "dev", local.ifname])
        ns.run(["ip", "link", "set", ifname, "arp", "off"])
        # the MLD reports of the new address leave at once, before a test's agent starts
        ns.sysctl({f"net.ipv6.conf.{ifname}.mldv2_unsolicited_report_interval": "1",
                   f"net.ipv6.conf.{ifname}.mldv1_unsolicited_report_interval": "1"})
        ns.run(["ip", "addr", "add", f"{addr}/24", "dev", ifname])
        ns.run(["ip", "addr", "add", f"{addr6}/64", "dev", ifname, "nodad"])
    macs = {end.ns.name: end.ns.link(ifname)["address"] for end in (a, b)}
    for (local, remote, _a, _a6), (_l, _r, peer, peer6) in zip(ends, reversed(ends),
                                                               strict=True):
        for addr in (peer, peer6):
            local.ns.run(["ip", "neigh", "replace", addr, "lladdr", macs[remote.ns.name],
                          "dev", ifname, "nud", "permanent"])
        local.ns.run(["ip", "link", "set", ifname, "up"])
    return "192.168.77.1", "192.168.77.2", "fd77::1", "fd77::2"


_SEND_FRAMES = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for frame in sys.argv[2:]:
    s.send(bytes.fromhex(frame))
print(len(sys.argv) - 2, flush=True)
"""


def send_frames(end: Endpoint, frames: Iterable[bytes]) -> int:
    """Write link-layer frames as they are onto ``end``'s interface (``AF_PACKET``); the
    peer's tc/XDP hooks see them whatever their addresses. Returns how many were sent."""
    return send_frames_on(end.ns, end.ifname, frames)


def send_frames_on(ns: Netns, ifname: str, frames: Iterable[bytes]) -> int:
    """:func:`send_frames` onto interface ``ifname`` of namespace ``ns``."""
    out = ns.python(_SEND_FRAMES, ifname, *(frame.hex() for frame in frames))
    return int(out.split()[-1])


# --- traffic with ground truth ------------------------------------------------------------


@dataclass
class Traffic:
    """What a traffic helper sent: the ground truth and a few details.

    :ivar truth: per flow id the packets and IP bytes that crossed the link.
    :ivar sport: the source port used (TCP/UDP; 0 for ICMP).
    :ivar received: what the peer received (datagrams, echo replies, connections).
    """

    truth: GroundTruth
    sport: int = 0
    received: int = 0
    details: dict = field(default_factory=dict)


def _ip_header_len(addr: str) -> int:
    return 20 if ipaddress.ip_address(addr).version == 4 else 40


_UDP_SINK = r"""
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
want, n = int(sys.argv[3]), 0
print("ready", flush=True)
s.settimeout(float(sys.argv[4]))
try:
    while n < want:
        s.recv(65535); n += 1
except socket.timeout:
    pass
print(n, flush=True)
"""

_UDP_SEND = r"""
import socket, sys
dst, src = sys.argv[1], sys.argv[5]
dport, count, size, sport, tos = (int(sys.argv[i]) for i in (2, 3, 4, 6, 7))
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
if tos:
    if fam == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
s.bind((src, sport))
payload = bytes(size)
for _ in range(count):
    s.sendto(payload, (dst, dport))
print(s.getsockname()[1], flush=True)
"""


def send_udp(
    ns: Netns,
    dst: str,
    dport: int,
    count: int,
    payload: int = 32,
    *,
    peer: Netns | None = None,
    src: str = "",
    sport: int = 0,
    tos: int = 0,
    timeout: float = 10,
) -> Traffic:
    """Send exactly ``count`` UDP datagrams of ``payload`` bytes from ``ns`` to ``dst:dport``.

    With ``peer``, a sink bound to ``dst:dport`` in that namespace receives them first (no
    ICMP port-unreachable replies then); :attr:`Traffic.received` is its count. The truth is
    one flow of ``count`` packets of IP header + 8 + ``payload`` bytes (no fragmentation: keep
    ``payload`` below the MTU).
    """
    sink = None
    if peer is not None:
        sink = peer.popen(
            [sys.executable, "-c", _UDP_SINK, dst, str(dport), str(count), str(timeout)]
        )
        _wait_ready(sink)
    out = ns.python(
        _UDP_SEND,
        dst,
        str(dport),
        str(count),
        str(payload),
        src or "",
        str(sport),
        str(tos),
        timeout=timeout,
    )
    used_sport = int(out.split()[-1])
    received = int(sink.communicate(timeout=timeout + 5)[0].split()[-1]) if sink else 0
    src_addr = src or _source_address(ns, dst)
    truth = GroundTruth()
    size = _ip_header_len(dst) + 8 + payload
    truth.add(FlowId.make(PROTO_UDP, src_addr, dst, used_sport, dport), size * count, packets=count)
    return Traffic(truth, used_sport, received)


def _wait_ready(proc: subprocess.Popen, what: str = "ready") -> None:
    line = proc.stdout.readline() if proc.stdout else ""
    if what not in line:
        err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        raise NetnsError(f"helper did not start: {line!r} {err}")


def _source_address(ns: Netns, dst: str) -> str:
    """The source address the kernel picks in ``ns`` for ``dst`` (``ip route get``)."""
    out = ns.run(["ip", "-j", "route", "get", dst]).stdout
    return json.loads(out)[0]["prefsrc"]


_ICMP_ECHO = r"""
import os, socket, struct, sys, time
dst, count, size, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
v6 = ":" in dst
ident = os.getpid() & 0xFFFF
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF
if v6:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)  # kernel sums
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
payload = bytes(size)
for seq in range(count):
    t = 128 if v6 else 8
    hdr = struct.pack("!BBHHH", t, 0, 0, ident, seq)
    pkt = hdr + payload
    if not v6:
        pkt = struct.pack("!BBHHH", t, 0, csum(pkt), ident, seq) + payload
    s.sendto(pkt, (dst, 0))
replies, deadline = set(), time.time() + wait
s.settimeout(0.05)
while len(replies) < count and time.time() < deadline:
    try:
        data = s.recv(65535)
    except socket.timeout:
        continue
    icmp = data if v6 else data[(data[0] & 15) * 4:]
    typ, _, _, rid, rseq = struct.unpack_from("!BBHHH", icmp)
    if typ == (129 if v6 else 0) and rid == ident:
        replies.add(rseq)
print(len(replies), flush=True)
"""


def send_icmp_echo(
    ns: Netns, dst: str, count: int, payload: int = 56, *, wait: float = 3
) -> Traffic:
    """Send ``count`` ICMP (or ICMPv6) echo requests from ``ns`` and count the replies.

    The truth has the request flow (``dport`` 8<<8 or 128<<8) with ``count`` packets and the
    reply flow (0 or 129<<8) with :attr:`Traffic.received` packets, each of IP header + 8 +
    ``payload`` bytes.
    """
    out = ns.python(_ICMP_ECHO, dst, str(count), str(payload), str(wait), timeout=wait + 30)
    replies = int(out.split()[-1])
    src = _source_address(ns, dst)
    v6 = ipaddress.ip_address(dst).version == 6
    proto, req, rep = (PROTO_ICMPV6, 128 << 8, 129 << 8) if v6 else (PROTO_ICMP, 8 << 8, 0)
    size = _ip_header_len(dst) + 8 + payload
    truth = GroundTruth()
    truth.add(FlowId.make(proto, src, dst, 0, req), size * count, packets=count)
    if replies:
        truth.add(FlowId.make(proto, dst, src, 0, rep), size * replies, packets=replies)
    return Traffic(truth, 0, replies)


class Capture:
    """A tcpdump capture inside a namespace, turned into ground truth when stopped.

    ::

        with Capture(ns, "c0") as cap:
            ...traffic...
        cap.truth  # GroundTruth of every IP packet seen on c0 (both directions)

    :param direction: ``"inout"`` (default), ``"in"`` or ``"out"`` (tcpdump ``-Q``).
    :param bpf_filter: optional tcpdump filter expression.
    :param fragments: how the truth accounts non-first fragments (``"ports0"`` or ``"track"``,
        as the ingest under test: :class:`~tests.support.truth.GroundTruth`).
    :param buffer_kib: tcpdump's capture buffer (``-B``); 0 = its default.
    :param snaplen: bytes kept per packet; 0 = all. In immediate mode tcpdump's ring holds
        buffer / snaplen frames, so a burst of raw frames (``flowgen``) needs a small one.
    """

    def __init__(
        self,
        ns: Netns,
        ifname: str,
        path: str | Path | None = None,
        direction: str = "inout",
        bpf_filter: str = "",
        fragments: str = "ports0",
        buffer_kib: int = 0,
        snaplen: int = 0,
    ):
        self.ns, self.ifname, self.direction, self.bpf_filter = ns, ifname, direction, bpf_filter
        self.fragments, self.buffer_kib, self.snaplen = fragments, buffer_kib, snaplen
        self._tmp = None if path else tempfile.TemporaryDirectory(prefix="nfa-cap-")
        self.path = Path(path) if path else Path(self._tmp.name) / "capture.pcap"  # type: ignore[union-attr]
        self.proc: subprocess.Popen | None = None
        self.truth = GroundTruth()
        self.dropped = 0

    def start(self) -> Capture:
        cmd = [
            "tcpdump",
            "-i",
            self.ifname,
            "-Q",
            self.direction,
            "-nn",
            "-U",
            "--immediate-mode",
            "-s",
            str(self.snaplen),
            "-Z",
            "root",
            "-w",
            str(self.path),
        ]
        if self.buffer_kib:
            cmd[1:1] = ["-B", str(self.buffer_kib)]
        if self.bpf_filter:
            cmd.append(self.bpf_filter)
        self.proc = self.ns.popen(cmd, stdout=subprocess.DEVNULL)
        line = self.proc.stderr.readline() if self.proc.stderr else ""
        if "listening on" not in line:
            raise NetnsError(f"tcpdump did not start on {self.ifname}: {line.strip()}")
        return self

    def stop(self, settle: float = 0.3) -> GroundTruth:
        """Stop tcpdump (SIGINT by PID, so it flushes) and compute :attr:`truth`."""
        from tests.support.pcapgen import truth_from_file

        if self.proc is None:
            return self.truth
        time.sleep(settle)  # let the last packets reach the capture buffer
        self.proc.send_signal(signal.SIGINT)
        err = self.proc.communicate(timeout=10)[1]
        self.proc = None
        for line in err.splitlines():
            if "dropped by kernel" in line:
                self.dropped = int(line.split()[0])
        if self.dropped:
            raise NetnsError(f"tcpdump dropped {self.dropped} packets; truth would be wrong")
        self.truth = truth_from_file(self.path, self.fragments)
        return self.truth

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


_TCP_SERVER = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
srv = socket.socket(fam, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(64)
srv.settimeout(float(sys.argv[4]))
print("ready", flush=True)
total = 0
for _ in range(int(sys.argv[3])):
    c, _ = srv.accept()
    while True:
        data = c.recv(65536)
        if not data:
            break
        total += len(data)
    c.close()
print(total, flush=True)
"""

_TCP_CLIENT = r"""
import socket, sys
dst, dport, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
ports = []
for _ in range(n):
    c = socket.create_connection((dst, dport), timeout=10)
    ports.append(c.getsockname()[1])
    c.sendall(bytes(size))
    c.shutdown(socket.SHUT_WR)
    while c.recv(65536):
        pass
    c.close()
print(" ".join(map(str, ports)), flush=True)
"""


def tcp_connections(
    client: Netns,
    server: Netns,
    dst: str,
    dport: int,
    count: int,
    size: int,
    *,
    capture: tuple[Netns, str] | None = None,
    timeout: float = 20,
) -> Traffic:
    """Open ``count`` TCP connections from ``client`` to ``dst:dport`` and send ``size`` bytes.

    The server (in ``server``) reads until EOF and closes. The truth comes from a tcpdump
    capture on ``capture`` = ``(namespace, ifname)`` (default: the client's only interface),
    restricted to the connections' 5-tuples in both directions.
    :attr:`Traffic.details` has ``ports`` (client source ports) and ``bytes_received``.
    """
    cap_ns, cap_if = capture or (client, _only_interface(client))
    srv = server.popen(
        [sys.executable, "-c", _TCP_SERVER, dst, str(dport), str(count), str(timeout)]
    )
    _wait_ready(srv)
    cap = Capture(cap_ns, cap_if, bpf_filter=f"tcp port {dport}").start()
    try:
        out = client.python(_TCP_CLIENT, dst, str(dport), str(count), str(size), timeout=timeout)
        received = int(srv.communicate(timeout=timeout)[0].split()[-1])
    finally:
        truth = cap.stop()
        cap.close()
    ports = [int(p) for p in out.split()]
    return Traffic(
        truth, ports[0] if ports else 0, count, {"ports": ports, "bytes_received": received}
    )


def _only_interface(ns: Netns) -> str:
    if len(ns.interfaces) != 1:
        raise ValueError(f"{ns.name} has {len(ns.interfaces)} interfaces; pass capture=")
    return next(iter(ns.interfaces))


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[Netns]:
    """Name: netns. Scope: function. Depends: root.

    A fresh, quiet namespace with ``lo`` up; deleted (and its processes ended) afterwards.
    """
    with Netns() as ns:
        yield ns


@pytest.fixture
def veth_pair_ns() -> Iterator[VethPair]:
    """Name: veth_pair_ns. Scope: function. Depends: root.

    Two fresh namespaces joined by a quiet veth link with IPv4 and IPv6 addresses:
    ``pair.a.ns``/``pair.b.ns``, ``pair.a.addr``, ``pair.b.addr6``, ``pair.a.ifindex``...
    """
    with Netns() as a, Netns() as b:
        yield veth_pair(a, b)


@pytest.fixture
def routed() -> Iterator[RoutedTopology]:
    """Name: routed. Scope: function. Depends: root.

    client -- router -- server namespaces (see :func:`routed_topology`).
    """
    with routed_topology() as topo:
        yield topo
