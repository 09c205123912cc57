"""nfnetlink_log on a raw ``NETLINK_NETFILTER`` socket: bind, configure, read, decode.

This module owns the wire side of NFLOG: opening the socket (inside another network namespace
when asked), binding one log group with copy mode, snap length, queue threshold, buffer size,
flush timeout and the ``NFULNL_CFG_F_SEQ`` flag in a single config request, and decoding the
``NFULNL_MSG_PACKET`` messages of a receive buffer into packet observations.

References: ``include/uapi/linux/netfilter/nfnetlink_log.h`` (attribute and config names,
kept verbatim below), ``include/uapi/linux/netfilter/nfnetlink.h`` (``nfgenmsg``) and
``net/netfilter/nfnetlink_log.c`` (what the kernel puts in a message and in which order:
PACKET_HDR, [PREFIX], [INDEV], [OUTDEV], [PHYS*], [MARK], [HWADDR], [HWTYPE, HWLEN, HWHEADER],
[TIMESTAMP], [UID, GID], [SEQ], [SEQ_GLOBAL], [VLAN, L2HDR], PAYLOAD; batches end with
``NLMSG_DONE``). Facts checked on this machine are in ``shared/KERNEL.md`` section 4.

Hot path: pyroute2's message objects cost about 35 us per message, so :class:`NflogDecoder`
walks the buffer with precompiled :class:`struct.Struct` objects instead. Messages of one
rule and hook all have the same attribute chain (types and lengths) up to the payload, so the
decoder learns each chain once ("shape") and then reads a message with a single
``unpack_from`` whose result also carries every attribute header for verification; a message
that does not match a known shape is walked attribute by attribute. The same layout in
pyroute2's terms (the tests' independent decoder) is in :mod:`.reference`, apart, so the agent
never imports pyroute2 (~15 MB of RSS and 0.1 s of start-up for its whole package).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from netflow_agent.api import (
    DIRECTION_EGRESS,
    DIRECTION_INGRESS,
    L2KeyPacker,
    Packet,
    PacketParser,
    netns_path,
    run_in_netns,
)

# --- netlink / nfnetlink (linux/netlink.h, linux/netfilter/nfnetlink.h) ----------------------

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8  # enum sk_meminfo (linux/sock_diag.h): datagrams the socket dropped
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x001
NLM_F_ACK = 0x004
NFNETLINK_V0 = 0
NLA_TYPE_MASK = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

# --- nfnetlink_log (linux/netfilter/nfnetlink_log.h) -----------------------------------------

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
MSG_PACKET = NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET
MSG_CONFIG = NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG

NFULA_UNSPEC = 0
NFULA_PACKET_HDR = 1  # struct nfulnl_msg_packet_hdr
NFULA_MARK = 2  # __be32 nfmark
NFULA_TIMESTAMP = 3  # struct nfulnl_msg_packet_timestamp
NFULA_IFINDEX_INDEV = 4  # __be32 ifindex
NFULA_IFINDEX_OUTDEV = 5  # __be32 ifindex
NFULA_IFINDEX_PHYSINDEV = 6  # __be32 ifindex
NFULA_IFINDEX_PHYSOUTDEV = 7  # __be32 ifindex
NFULA_HWADDR = 8  # struct nfulnl_msg_packet_hw
NFULA_PAYLOAD = 9  # opaque data payload, starts at the network header
NFULA_PREFIX = 10  # string prefix
NFULA_UID = 11  # user id of socket
NFULA_SEQ = 12  # __be32 instance-local sequence number
NFULA_SEQ_GLOBAL = 13  # __be32 global sequence number
NFULA_GID = 14  # group id of socket
NFULA_HWTYPE = 15  # hardware type
NFULA_HWHEADER = 16  # hardware header
NFULA_HWLEN = 17  # hardware header length
NFULA_CT = 18  # nfnetlink_conntrack.h
NFULA_CT_INFO = 19  # enum ip_conntrack_info
NFULA_VLAN = 20  # nested attribute: packet vlan info
NFULA_L2HDR = 21  # full L2 header

NFULNL_CFG_CMD_NONE = 0
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_CFG_CMD_PF_BIND = 3
NFULNL_CFG_CMD_PF_UNBIND = 4

NFULA_CFG_UNSPEC = 0
NFULA_CFG_CMD = 1  # struct nfulnl_msg_config_cmd { __u8 command; }
NFULA_CFG_MODE = 2  # struct nfulnl_msg_config_mode { __be32 copy_range; __u8 copy_mode; _pad }
NFULA_CFG_NLBUFSIZ = 3  # __be32 buffer size
NFULA_CFG_TIMEOUT = 4  # __be32 in 1/100 s
NFULA_CFG_QTHRESH = 5  # __be32
NFULA_CFG_FLAGS = 6  # __be16

NFULNL_COPY_NONE = 0x00
NFULNL_COPY_META = 0x01
NFULNL_COPY_PACKET = 0x02

NFULNL_CFG_F_SEQ = 0x0001
NFULNL_CFG_F_SEQ_GLOBAL = 0x0002
NFULNL_CFG_F_CONNTRACK = 0x0004

# netfilter hooks (linux/netfilter.h: enum nf_inet_hooks)
NF_INET_PRE_ROUTING = 0
NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
NF_INET_LOCAL_OUT = 3
NF_INET_POST_ROUTING = 4

# --- layouts -------------------------------------------------------------------------------

# struct nlmsghdr { __u32 nlmsg_len; __u16 nlmsg_type; __u16 nlmsg_flags; __u32 nlmsg_seq;
#                   __u32 nlmsg_pid; }   (host byte order)
NLMSGHDR = struct.Struct("=IHHII")
_NLMSG_LEN_TYPE = struct.Struct("=IH")
# struct nfgenmsg { __u8 nfgen_family; __u8 version; __be16 res_id; }   res_id = group
NFGENMSG = struct.Struct("=BB2s")
# struct nlattr { __u16 nla_len; __u16 nla_type; }   (host byte order)
NLATTR = struct.Struct("=HH")
# struct nlmsgerr { int error; struct nlmsghdr msg; }
NLMSGERR = struct.Struct("=i")
_BE32 = struct.Struct(">I")
_BE16 = struct.Struct(">H")
# struct nfulnl_msg_packet_hdr { __be16 hw_protocol; __u8 hook; __u8 _pad; }
PACKET_HDR = struct.Struct(">HBx")
# struct nfulnl_msg_packet_timestamp { __aligned_be64 sec; __aligned_be64 usec; }
TIMESTAMP = struct.Struct(">QQ")
# struct nfulnl_msg_config_mode { __be32 copy_range; __u8 copy_mode; __u8 _pad; } (packed)
CFG_MODE = struct.Struct(">IBx")

_HDRLEN = NLMSGHDR.size + NFGENMSG.size  # 20: where a message's attributes start


# --- config requests ------------------------------------------------------------------------


def _attr(atype: int, payload: bytes) -> bytes:
    length = NLATTR.size + len(payload)
    return NLATTR.pack(length, atype) + payload + b"\0" * (-length % 4)


def config_request(group: int, seq: int, attrs: list[bytes]) -> bytes:
    """One ``NFULNL_MSG_CONFIG`` request for ``group`` (REQUEST|ACK).

    :param attrs: encoded ``NFULA_CFG_*`` attributes (see :func:`bind_attrs`).
    """
    body = NFGENMSG.pack(socket.AF_UNSPEC, NFNETLINK_V0, _BE16.pack(group)) + b"".join(attrs)
    head = NLMSGHDR.pack(NLMSGHDR.size + len(body), MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
    return head + body


def bind_attrs(snaplen: int, qthreshold: int, nlbufsiz: int, timeout_cs: int,
               flags: int = NFULNL_CFG_F_SEQ) -> list[bytes]:
    """BIND plus the whole instance config, so no packet is ever logged with defaults.

    The kernel creates the instance for the CMD attribute and then applies MODE, TIMEOUT,
    NLBUFSIZ, QTHRESH and FLAGS from the same request (``nfulnl_recv_config``).
    """
    return [
        _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])),
        _attr(NFULA_CFG_MODE, CFG_MODE.pack(snaplen, NFULNL_COPY_PACKET)),
        _attr(NFULA_CFG_NLBUFSIZ, _BE32.pack(nlbufsiz)),
        _attr(NFULA_CFG_TIMEOUT, _BE32.pack(timeout_cs)),
        _attr(NFULA_CFG_QTHRESH, _BE32.pack(qthreshold)),
        _attr(NFULA_CFG_FLAGS, _BE16.pack(flags)),
    ]


def unbind_attrs() -> list[bytes]:
    """UNBIND: the kernel flushes what it still holds for the group, then forgets it."""
    return [_attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND]))]


# --- the socket ----------------------------------------------------------------------------


class NflogError(OSError):
    """A config request was refused (EPERM: another process holds the group)."""


class NflogSocket:
    """One ``NETLINK_NETFILTER`` socket bound to one NFLOG group.

    :param group: the log group (``--nflog-group`` / nft ``log group``).
    :param netns: network namespace name or path; ``""`` = the agent's own.
    :param rcvbuf: receive buffer in bytes (SO_RCVBUFFORCE, falling back to SO_RCVBUF);
        0 keeps the system default.
    """

    def __init__(self, group: int, netns: str = "", rcvbuf: int = 0):
        self.group = group
        self.netns = netns
        self._seq = 0
        self.sock = run_in_netns(netns, self._open)
        #: the netlink port id the kernel gave this socket (what nfnetlink_log lists)
        self.portid: int = self.sock.getsockname()[0]
        if rcvbuf:
            self._set_rcvbuf(rcvbuf)

    @staticmethod
    def _open() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)
        # Without this, an overrun sets ENOBUFS *and* marks the socket congested; on 6.18 an
        # ENOBUFS read from an empty queue left it congested for good (every later batch,
        # even the UNBIND ack, was dropped). Overruns are still counted (sk_drops, below)
        # and the lost packets exactly by NFULA_SEQ gaps.
        sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        sock.bind((0, 0))
        return sock

    def _set_rcvbuf(self, size: int) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except PermissionError:  # no CAP_NET_ADMIN: capped by net.core.rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    @property
    def rcvbuf(self) -> int:
        """The receive buffer the kernel granted (it doubles the requested value)."""
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def overruns(self) -> int:
        """Batches the kernel could not queue for us (``sk_drops``: the ENOBUFS events)."""
        raw = self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
        return struct.unpack_from(f"={SK_MEMINFO_DROPS + 1}I", raw)[SK_MEMINFO_DROPS]

    def request(self, attrs: list[bytes], pending: list[bytes] | None = None) -> None:
        """Send a config request and wait for its ack.

        Packets may be queued before the ack (the instance exists from the moment the kernel
        handles BIND); such datagrams are appended to ``pending`` for the reader.

        :raises NflogError: the kernel refused (errno from the ack).
        """
        self._seq += 1
        seq = self._seq
        self.sock.send(config_request(self.group, seq, attrs))
        buf = bytearray(1 << 18)
        while True:
            n = self.sock.recv_into(buf)
            err = find_ack(buf, n, seq)
            if err is None:
                if pending is not None:
                    pending.append(bytes(buf[:n]))
                continue
            if err:
                raise NflogError(err, f"NFLOG group {self.group}: {os.strerror(err)}"
                                 + (" (another process is bound to this group)"
                                    if err == errno.EPERM else ""))
            if pending is not None and _has_packets(buf, n):
                pending.append(bytes(buf[:n]))
            return

    def bind(self, snaplen: int, qthreshold: int, nlbufsiz: int, timeout_cs: int) -> list[bytes]:
        """Bind the group and configure it; returns datagrams that arrived before the ack."""
        pending: list[bytes] = []
        self.request(bind_attrs(snaplen, qthreshold, nlbufsiz, timeout_cs), pending)
        _OWN_BINDINGS[_binding_key(self.netns, self.group)] = self.portid
        return pending

    @property
    def last_seq(self) -> int:
        """The netlink sequence number of the last request sent."""
        return self._seq

    def unbind_request(self) -> None:
        """Ask the kernel to flush and release the group; the ack arrives with the data."""
        self._seq += 1
        self.sock.send(config_request(self.group, self._seq, unbind_attrs()))

    def close(self) -> None:
        """Close the socket (the kernel also releases the group on close)."""
        key = _binding_key(self.netns, self.group)
        if _OWN_BINDINGS.get(key) == self.portid:
            del _OWN_BINDINGS[key]
        self.sock.close()


#: the groups this process has bound: (namespace path, group) -> netlink port id
_OWN_BINDINGS: dict[tuple[str, int], int] = {}


def _binding_key(netns: str, group: int) -> tuple[str, int]:
    return (netns_path(netns) if netns else "", group)


def own_portid(netns: str, group: int) -> int | None:
    """The port id of this process's socket bound to ``group`` in ``netns``, else ``None``.

    A reload re-checks the environment while the running ingest still holds its groups;
    ``/proc/.../nfnetlink_log`` then lists the agent's own sockets, which are not a conflict.
    """
    return _OWN_BINDINGS.get(_binding_key(netns, group))


def find_ack(buf: bytearray, n: int, seq: int) -> int | None:
    """The errno of the NLMSG_ERROR answering ``seq`` in ``buf[:n]`` (0 = ok), else ``None``."""
    off = 0
    while off + NLMSGHDR.size <= n:
        mlen, mtype, _flags, mseq, _pid = NLMSGHDR.unpack_from(buf, off)
        if mlen < NLMSGHDR.size:
            break
        if mtype == NLMSG_ERROR and mseq == seq:
            return -NLMSGERR.unpack_from(buf, off + NLMSGHDR.size)[0]
        off += (mlen + 3) & ~3
    return None


def _has_packets(buf: bytearray, n: int) -> bool:
    off = 0
    while off + NLMSGHDR.size <= n:
        mlen, mtype = _NLMSG_LEN_TYPE.unpack_from(buf, off)
        if mtype == MSG_PACKET:
            return True
        if mlen < NLMSGHDR.size:
            break
        off += (mlen + 3) & ~3
    return False


# --- decoding ------------------------------------------------------------------------------

_LITTLE_ENDIAN = sys.byteorder == "little"
#: the values a message contributes, in this order; absent attributes read as these defaults
_WANTED = ("hook", "indev", "outdev", "sec", "usec", "seq")
_ABSENT = (0, 0, 0, 0, 0, -1)  # seq -1: the message carries no NFULA_SEQ
_TS_MAX = 2**63 - 1  # latest wall-clock ns a timestamp may give (int64, as in _nflog.c)
#: attribute -> (big-endian struct code of its value, names of the values it holds)
_FIELD_ATTRS: dict[int, tuple[str, tuple[str, ...]]] = {
    NFULA_PACKET_HDR: ("2xBx", ("hook",)),
    NFULA_IFINDEX_INDEV: ("I", ("indev",)),
    NFULA_IFINDEX_OUTDEV: ("I", ("outdev",)),
    NFULA_TIMESTAMP: ("QQ", ("sec", "usec")),
    NFULA_SEQ: ("I", ("seq",)),
}
#: ... and with layer-2 fields on ([flow] mac, vlan, physdev): read only then
_L2_WANTED = ("physin", "physout", "hwtype", "hwheader", "vlan")
_L2_ABSENT = (0, 0, 0, b"", b"")
_L2_ATTRS: dict[int, tuple[str, tuple[str, ...]]] = {
    NFULA_IFINDEX_PHYSINDEV: ("I", ("physin",)),
    NFULA_IFINDEX_PHYSOUTDEV: ("I", ("physout",)),
    NFULA_HWTYPE: ("H", ("hwtype",)),
    NFULA_HWHEADER: ("14s", ("hwheader",)),  # an Ethernet header: destination, source, type
    NFULA_VLAN: ("16s", ("vlan",)),  # nested NFULA_VLAN_TCI and NFULA_VLAN_PROTO, 2 bytes each
}
ARPHRD_ETHER = 1
NFULA_VLAN_PROTO = 1
NFULA_VLAN_TCI = 2


class _Attrs:
    """The attributes a decoder reads, their structs and the values they give (in order)."""

    __slots__ = ("attrs", "structs", "wanted", "absent")

    def __init__(self, l2: bool) -> None:
        self.attrs = {**_FIELD_ATTRS, **_L2_ATTRS} if l2 else _FIELD_ATTRS
        self.structs = {t: struct.Struct(">" + code) for t, (code, _n) in self.attrs.items()}
        self.wanted = _WANTED + _L2_WANTED if l2 else _WANTED
        self.absent = _ABSENT + _L2_ABSENT if l2 else _ABSENT


_BASE_ATTRS = _Attrs(False)


def _nla_len_from_be(header_be: int) -> int:
    """``nla_len`` (host order) of an attribute header that was read as a big-endian u32."""
    if _LITTLE_ENDIAN:
        return ((header_be >> 24) & 0xFF) | ((header_be >> 8) & 0xFF00)
    return header_be >> 16


class _Shape:
    """A learned attribute chain, read with one big-endian struct, headers included.

    Each attribute header before the payload is read as a big-endian u32 and compared with
    the value seen when the shape was learned; so a match is exactly the chain that a full
    walk would find. For the payload header only the type half is compared (its length
    varies with the packet). The values tuple is extended as
    ``struct values + (payload type half,) + _ABSENT``, so that ``fields`` can point absent
    attributes at their defaults.
    """

    __slots__ = ("struct", "headers", "expected", "fields", "l2", "payload_at")

    def __init__(self, chain: list[tuple[int, int, int]], attrs: _Attrs = _BASE_ATTRS):
        """:param chain: ``(nla_type, nla_len, header as big-endian u32)`` of every attribute
            of the message, the payload attribute last; at least two attributes.
        :param attrs: the attributes whose values the shape reads."""
        fmt = [">"]
        header_idx: list[int] = []
        expected: list[int] = []
        where: dict[str, int] = {}
        offset = 0
        count = 0
        for atype, alen, header_be in chain[:-1]:
            fmt.append("I")
            header_idx.append(count)
            expected.append(header_be)
            count += 1
            padded = ((alen + 3) & ~3) - NLATTR.size
            field = attrs.structs.get(atype & NLA_TYPE_MASK)
            if field is not None and field.size == alen - NLATTR.size:
                code, names = attrs.attrs[atype & NLA_TYPE_MASK]
                fmt.append(f"{code}{padded - field.size}x")
                for name in names:
                    where[name] = count
                    count += 1
            else:
                fmt.append(f"{padded}x")
            offset += NLATTR.size + padded
        fmt.append("I")  # the payload header: values[count]
        self.struct = struct.Struct("".join(fmt))
        self.payload_at = offset  # from the first attribute to the payload header
        type_half = count + 1
        self.headers = itemgetter(*header_idx, type_half)
        self.expected = (*expected, chain[-1][2] & 0xFFFF)
        at = [where.get(name, type_half + 1 + i) for i, name in enumerate(attrs.wanted)]
        self.fields = itemgetter(*at[:len(_WANTED)])
        #: the layer-2 values (:data:`_L2_WANTED`), when the decoder reads them
        self.l2 = itemgetter(*at[len(_WANTED):]) if len(at) > len(_WANTED) else None


class NflogL2:
    """The layer-2 key fields of NFLOG messages (``[flow]`` mac, vlan, physdev).

    What the kernel sends (``net/netfilter/nfnetlink_log.c``, checked in tests): the Ethernet
    header of a received frame (NFULA_HWTYPE 1, NFULA_HWHEADER of 14 bytes: destination,
    source, EtherType); the tag the kernel took off the frame (``skb->vlan_tci``) as
    NFULA_VLAN, for ``bridge`` family rules only; the bridge ports as
    NFULA_IFINDEX_PHYSINDEV/PHYSOUTDEV (bridge family rules, and IP rules that see bridged
    packets through br_netfilter). ``physdev = "override"`` puts the bridge ports in place of
    the interfaces (as ipt_NETFLOW's ``--enable-physdev-override``); other fields go into
    the key after the base (:class:`~agent.l2key.L2KeyPacker`). Only the message's own packet
    gets them: fragments released later and the outer flow of a tunnel keep zeros, as with
    the C decoder.

    :param packer: packs the schema's layer-2 key fields.
    :param override: ``physdev = "override"``.
    """

    __slots__ = ("packer", "override", "wanted", "_vlans")

    def __init__(self, packer: L2KeyPacker, override: bool = False) -> None:
        self.packer = packer
        self.override = override
        self.wanted = packer.active or override
        self._vlans: dict[bytes, tuple[tuple[int, int, int], ...]] = {}

    def parse(self, parse: Callable[..., Packet | None], data: memoryview, ts: int,
              hook: int, indev: int, outdev: int, l2vals: tuple) -> Packet | None:
        """The message's packet with its layer-2 fields (as :meth:`NflogDecoder.decode`)."""
        physin, physout, hwtype, hwheader, vlan = l2vals
        if self.override:
            indev, outdev = physin or indev, physout or outdev
        if hook >= NF_INET_LOCAL_OUT and not indev:
            pkt = parse(data, ts, outdev, outdev, DIRECTION_EGRESS)
        else:
            pkt = parse(data, ts, indev, outdev, DIRECTION_INGRESS)
        packer = self.packer
        if pkt is None or not packer.active:
            return pkt
        src = dst = b""
        if hwtype == ARPHRD_ETHER and hwheader:
            dst, src = hwheader[:6], hwheader[6:12]
        vlans = self._vlans.get(vlan) if vlan else ()
        if vlans is None:
            if len(self._vlans) >= 4096:  # bounded: tags and protocols, not per packet
                self._vlans.clear()
            vlans = self._vlans[vlan] = _vlan_tags(vlan)
        ext = packer.pack(pkt[0][0], src, dst, vlans, (), physin, physout)
        return (pkt[0] + ext, *pkt[1:])


def _vlan_tags(nested: bytes) -> tuple[tuple[int, int, int], ...]:
    """``((tpid, id, priority),)`` from NFULA_VLAN's nested attributes (``()`` without TCI)."""
    tci, proto, off = -1, 0, 0
    while off + NLATTR.size <= len(nested):
        alen, atype = NLATTR.unpack_from(nested, off)
        if alen < NLATTR.size or off + alen > len(nested):
            break
        if alen == 6 and atype & NLA_TYPE_MASK == NFULA_VLAN_TCI:
            tci = _BE16.unpack_from(nested, off + 4)[0]
        elif alen == 6 and atype & NLA_TYPE_MASK == NFULA_VLAN_PROTO:
            proto = _BE16.unpack_from(nested, off + 4)[0]
        off += (alen + 3) & ~3
    return ((proto, tci & 0x0FFF, tci >> 13),) if tci >= 0 else ()


class NflogDecoder:
    """Turns receive buffers of one group into :data:`~agent.model.Packet` tuples.

    Owns the per-group state: the next expected ``NFULA_SEQ``, the learned shapes, the
    :class:`~agent.packet.PacketParser` and the counters. One decoder per reader thread.

    Direction follows the hook: PREROUTING, INPUT and FORWARD are ingress keyed on the input
    interface; OUTPUT and POSTROUTING (no input interface) are egress keyed on the output
    interface. Time is ``NFULA_TIMESTAMP`` (wall clock; the kernel sends it for PREROUTING,
    INPUT and FORWARD) or else the receive time of the buffer.
    """

    MAX_SHAPES = 16

    def __init__(self, parser: PacketParser | None = None, l2: NflogL2 | None = None) -> None:
        """:param l2: the layer-2 key fields to fill (``[flow]`` mac, vlan, physdev); ``None``
            reads none of their attributes."""
        self.parser = parser if parser is not None else PacketParser()
        self.l2 = l2 if l2 is not None and l2.wanted else None
        self.attrs = _Attrs(self.l2 is not None)
        self.expect_seq = 0  # a fresh instance numbers its packets from 0
        self.seq_gaps = 0  # packets the kernel logged that never reached us
        self.seq_resets = 0  # the sequence jumped backwards (instance re-created)
        self.malformed = 0  # messages whose lengths did not add up (skipped)
        self.messages = 0
        self.shapes: list[_Shape] = []

    def decode(self, buf: bytearray | bytes, n: int, recv_ns: int, out: list[Packet]) -> None:
        """Decode the NFLOG messages in ``buf[:n]`` and append their packets to ``out``.

        This is the per-packet hot path: one flat loop with locals on purpose (see the module
        docstring); the generic attribute walk is the fallback for unknown shapes.

        :param recv_ns: wall-clock receive time, for messages without a timestamp.
        """
        view = memoryview(buf)
        parse = self.parser.parse
        extra = self.parser.extra  # released fragments, outer flows of tunnels
        append = out.append
        unpack_head = _NLMSG_LEN_TYPE.unpack_from
        shapes = self.shapes
        expect = self.expect_seq
        absent = self.attrs.absent
        payload_header = -len(absent) - 2  # in vals: before the type half and the defaults
        l2 = self.l2
        l2vals: tuple = ()
        nla_len = _nla_len_from_be
        messages = 0
        off = 0
        while off + NLMSGHDR.size <= n:
            mlen, mtype = unpack_head(buf, off)
            if mlen < NLMSGHDR.size or off + mlen > n:
                self.malformed += 1
                off = n
                break
            if mtype != MSG_PACKET:  # NLMSG_DONE ends each batch; acks; nothing else
                off += (mlen + 3) & ~3
                continue
            a = off + _HDRLEN
            end = off + mlen
            off += (mlen + 3) & ~3
            for shape in shapes:
                p = a + shape.payload_at
                if p + 4 > end:
                    continue
                vals = shape.struct.unpack_from(buf, a)
                vals = (*vals, vals[-1] & 0xFFFF, *absent)
                if shape.headers(vals) != shape.expected:
                    continue
                plen = nla_len(vals[payload_header]) - 4
                p += 4
                if plen < 0 or p + plen > end:
                    continue
                hook, indev, outdev, sec, usec, seq = shape.fields(vals)
                if l2 is not None:
                    l2vals = shape.l2(vals)  # type: ignore[misc]
                break
            else:
                found = self._walk(buf, a, end)
                if found is None:
                    continue
                hook, indev, outdev, sec, usec, seq, p, plen, l2vals = found
            messages += 1
            if seq >= 0:
                if seq != expect:
                    gap = (seq - expect) & 0xFFFFFFFF
                    if gap < 0x80000000:
                        self.seq_gaps += gap
                    else:
                        self.seq_resets += 1
                expect = (seq + 1) & 0xFFFFFFFF
            ts = sec * 1_000_000_000 + usec * 1000 if sec else recv_ns
            if ts > _TS_MAX:  # garbage: the cache's time columns are int64 ns
                ts = recv_ns
            if l2 is not None:
                pkt = l2.parse(parse, view[p:p + plen], ts, hook, indev, outdev, l2vals)
            elif hook >= NF_INET_LOCAL_OUT and not indev:
                pkt = parse(view[p:p + plen], ts, outdev, outdev, DIRECTION_EGRESS)
            else:
                pkt = parse(view[p:p + plen], ts, indev, outdev, DIRECTION_INGRESS)
            if extra:
                out.extend(extra)
                extra.clear()
            if pkt is not None:
                append(pkt)
        if off < n and not self.padding_only(buf, off, n):
            self.malformed += 1  # bytes left that cannot hold a netlink header
        self.expect_seq = expect
        self.messages += messages

    @staticmethod
    def padding_only(buf: bytearray | bytes, off: int, n: int) -> bool:
        """``True`` when ``buf[off:n]`` is only zero padding (not an error)."""
        return not any(memoryview(buf)[off:n])

    def _walk(self, buf: bytearray | bytes, a: int, end: int) -> tuple[Any, ...] | None:
        """Read one message attribute by attribute and learn its shape when it is regular.

        :return: ``(hook, indev, outdev, sec, usec, seq, payload_offset, payload_len,
            layer-2 values)``, or ``None`` when the message has no payload or its lengths do
            not add up (counted as malformed).
        """
        attrs = self.attrs
        values = dict(zip(attrs.wanted, attrs.absent, strict=True))
        chain: list[tuple[int, int, int]] = []
        while a + NLATTR.size <= end:
            alen, raw_type = NLATTR.unpack_from(buf, a)
            if alen < NLATTR.size or a + alen > end:
                break
            chain.append((raw_type, alen, _BE32.unpack_from(buf, a)[0]))
            atype = raw_type & NLA_TYPE_MASK
            if atype == NFULA_PAYLOAD:
                last = a + ((alen + 3) & ~3) >= end
                if last and len(chain) >= 2 and len(self.shapes) < self.MAX_SHAPES:
                    self.shapes.append(_Shape(chain, attrs))
                return (*(values[k] for k in _WANTED), a + NLATTR.size, alen - NLATTR.size,
                        tuple(values[k] for k in attrs.wanted[len(_WANTED):]))
            field = attrs.structs.get(atype)
            if field is not None and field.size == alen - NLATTR.size:
                names = attrs.attrs[atype][1]
                values.update(zip(names, field.unpack_from(buf, a + 4), strict=True))
            a += (alen + 3) & ~3
        self.malformed += 1
        return None

    def stats(self) -> dict[str, int]:
        """Decoder counters (cumulative)."""
        return {"messages": self.messages, "seq_gaps": self.seq_gaps,
                "seq_resets": self.seq_resets, "malformed": self.malformed,
                "shapes": len(self.shapes)}
