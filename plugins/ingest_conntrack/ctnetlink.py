"""ctnetlink on a raw ``NETLINK_NETFILTER`` socket: event subscription, table dump, parsing.

This module owns the wire side of conntrack: opening sockets (in another network namespace if
asked), subscribing to the ``NFNLGRP_CONNTRACK_NEW`` and ``NFNLGRP_CONNTRACK_DESTROY``
multicast groups, requesting a table dump, and turning ``IPCTNL_MSG_CT_NEW`` /
``IPCTNL_MSG_CT_DELETE`` messages into :class:`CtEntry` tuples.

References: ``include/uapi/linux/netfilter/nfnetlink.h``,
``include/uapi/linux/netfilter/nfnetlink_conntrack.h``,
``include/uapi/linux/netfilter/nf_conntrack_common.h`` (status bits) and
``net/netfilter/nf_conntrack_netlink.c`` (what each event carries). Names are the kernel's.

Parsing is table driven with precompiled :class:`struct.Struct` objects and walks the nested
attributes once; it decodes only what a NAT event needs (tuples, status, id, counters,
timestamps) and skips everything else by length.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

# --- netlink / nfnetlink constants (linux/netlink.h, linux/netfilter/nfnetlink.h) ------------

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_BROADCAST_ERROR = 4
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x001
NLM_F_MULTI = 0x002
NLM_F_ACK = 0x004
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
MSG_CT_NEW = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
MSG_CT_GET = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
MSG_CT_DELETE = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE

NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3

NFNETLINK_V0 = 0

# --- ctnetlink attributes (linux/netfilter/nfnetlink_conntrack.h) ---------------------------

CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_ID = 12
CTA_TIMESTAMP = 20

CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2

CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4

CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTO_ICMP_ID = 4
CTA_PROTO_ICMP_TYPE = 5
CTA_PROTO_ICMP_CODE = 6
CTA_PROTO_ICMPV6_ID = 7
CTA_PROTO_ICMPV6_TYPE = 8
CTA_PROTO_ICMPV6_CODE = 9

CTA_COUNTERS_PACKETS = 1
CTA_COUNTERS_BYTES = 2

CTA_TIMESTAMP_START = 1
CTA_TIMESTAMP_STOP = 2

# enum ip_conntrack_status (linux/netfilter/nf_conntrack_common.h)
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
IPS_NAT_MASK = IPS_SRC_NAT | IPS_DST_NAT

NLA_TYPE_MASK = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

# --- layouts ---------------------------------------------------------------------------------

# struct nlmsghdr: nlmsg_len u32, nlmsg_type u16, nlmsg_flags u16, nlmsg_seq u32, nlmsg_pid u32
NLMSGHDR = struct.Struct("=IHHII")
# struct nfgenmsg: nfgen_family u8, version u8, res_id be16
NFGENMSG = struct.Struct("=BBH")
# struct nlattr: nla_len u16, nla_type u16
NLATTR = struct.Struct("=HH")
# struct nlmsgerr: error s32 (then the offending header)
NLMSGERR = struct.Struct("=i")
BE8 = struct.Struct("!B")
BE16 = struct.Struct("!H")
BE32 = struct.Struct("!I")
BE64 = struct.Struct("!Q")

#: what the parsers accept: a receive buffer or a copy of one
Buffer = bytes | bytearray | memoryview


class Tuple(NamedTuple):
    """One conntrack tuple as the kernel reports it (addresses packed, ports host order).

    For ICMP/ICMPv6, ``src_port`` is the echo identifier and ``dst_port`` is
    ``type << 8 | code``, matching the flow-key convention in :mod:`agent.model`.
    """

    src_addr: bytes
    dst_addr: bytes
    protocol: int
    src_port: int
    dst_port: int


class CtEntry(NamedTuple):
    """The parts of one ctnetlink conntrack message that NAT events need.

    :ivar msg_type: ``MSG_CT_NEW`` or ``MSG_CT_DELETE``.
    :ivar flags: ``nlmsg_flags``; ``NLM_F_CREATE`` marks a NEW event (without it, an update).
    :ivar family: ``AF_INET`` or ``AF_INET6`` (``nfgen_family``).
    :ivar start_ns: ``CTA_TIMESTAMP_START`` (wall clock) or 0 when absent.
    :ivar stop_ns: ``CTA_TIMESTAMP_STOP`` or 0 when absent.
    :ivar reply: the REPLY tuple; the ORIGINAL one when the kernel sent none.
    """

    msg_type: int
    flags: int
    family: int
    orig: Tuple
    reply: Tuple
    status: int
    ct_id: int
    packets_orig: int
    octets_orig: int
    packets_reply: int
    octets_reply: int
    start_ns: int
    stop_ns: int


class NetlinkError(OSError):
    """An ``NLMSG_ERROR`` with a non-zero error code in answer to one of our requests."""


class MalformedMessage(ValueError):
    """A message whose lengths do not add up; the caller counts and skips it."""


# --- attribute walking -----------------------------------------------------------------------


def iter_attrs(buf: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Walk netlink attributes in ``buf[start:end]``.

    :return: ``(type, payload_start, payload_end)`` per attribute, type without flag bits.
    :raises MalformedMessage: when an attribute length runs past ``end``.
    """
    unpack = NLATTR.unpack_from
    pos = start
    while pos + 4 <= end:
        length, kind = unpack(buf, pos)
        if length < 4 or pos + length > end:
            raise MalformedMessage(f"attribute length {length} at offset {pos} exceeds message")
        yield kind & NLA_TYPE_MASK, pos + 4, pos + length
        pos += (length + 3) & ~3


def _fixed(buf: Buffer, a: int, b: int, layout: struct.Struct) -> int:
    """The value of a fixed-size attribute payload ``buf[a:b]``; a short payload is malformed
    (reading it anyway would take the next attribute's bytes, or fail at the buffer end)."""
    if b - a < layout.size:
        raise MalformedMessage(f"attribute payload of {b - a} bytes at offset {a}, "
                               f"expected {layout.size}")
    return layout.unpack_from(buf, a)[0]  # type: ignore[no-any-return]


def _parse_ip(buf: Buffer, start: int, end: int) -> tuple[bytes, bytes]:
    src = dst = b""
    for kind, a, b in iter_attrs(buf, start, end):
        if kind in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
            src = bytes(buf[a:b])
        elif kind in (CTA_IP_V4_DST, CTA_IP_V6_DST):
            dst = bytes(buf[a:b])
        else:
            continue
        if b - a != (4 if kind <= CTA_IP_V4_DST else 16):
            raise MalformedMessage(f"address attribute of {b - a} bytes at offset {a}")
    if src and dst and len(src) != len(dst):
        raise MalformedMessage("IPv4 and IPv6 addresses mixed in one tuple")
    return src, dst


def _parse_proto(buf: Buffer, start: int, end: int) -> tuple[int, int, int]:
    """``(protocol, src_port, dst_port)``; ICMP id/type/code folded into the ports."""
    proto = sport = dport = icmp_type = icmp_code = 0
    for kind, a, b in iter_attrs(buf, start, end):
        if kind == CTA_PROTO_NUM:
            proto = _fixed(buf, a, b, BE8)
        elif kind == CTA_PROTO_SRC_PORT or kind == CTA_PROTO_ICMP_ID or kind == CTA_PROTO_ICMPV6_ID:
            sport = _fixed(buf, a, b, BE16)
        elif kind == CTA_PROTO_DST_PORT:
            dport = _fixed(buf, a, b, BE16)
        elif kind == CTA_PROTO_ICMP_TYPE or kind == CTA_PROTO_ICMPV6_TYPE:
            icmp_type = _fixed(buf, a, b, BE8)
        elif kind == CTA_PROTO_ICMP_CODE or kind == CTA_PROTO_ICMPV6_CODE:
            icmp_code = _fixed(buf, a, b, BE8)
    if icmp_type or icmp_code:
        dport = icmp_type << 8 | icmp_code
    return proto, sport, dport


def parse_tuple(buf: Buffer, start: int, end: int) -> Tuple:
    """Decode a ``CTA_TUPLE_ORIG`` / ``CTA_TUPLE_REPLY`` nest."""
    src = dst = b""
    proto = sport = dport = 0
    for kind, a, b in iter_attrs(buf, start, end):
        if kind == CTA_TUPLE_IP:
            src, dst = _parse_ip(buf, a, b)
        elif kind == CTA_TUPLE_PROTO:
            proto, sport, dport = _parse_proto(buf, a, b)
    return Tuple(src, dst, proto, sport, dport)


def _parse_pair(buf: Buffer, start: int, end: int, first: int, second: int) -> tuple[int, int]:
    """Two u64 attributes of one nest (counters: packets/bytes; timestamps: start/stop)."""
    one = two = 0
    for kind, a, b in iter_attrs(buf, start, end):
        value = BE64.unpack_from(buf, a)[0] if b - a == 8 else _fixed(buf, a, b, BE32)
        if kind == first:
            one = value
        elif kind == second:
            two = value
    return one, two


def parse_conntrack(buf: Buffer, start: int, end: int, msg_type: int, flags: int) -> CtEntry:
    """Decode one conntrack message body (``nfgenmsg`` plus attributes) at ``buf[start:end]``.

    :raises MalformedMessage: on inconsistent lengths or a missing tuple.
    """
    if end - start < NFGENMSG.size:
        raise MalformedMessage("conntrack message shorter than nfgenmsg")
    family = buf[start]
    orig = reply = None
    status = ct_id = 0
    counters_orig = counters_reply = times = (0, 0)
    for kind, a, b in iter_attrs(buf, start + NFGENMSG.size, end):
        if kind == CTA_TUPLE_ORIG:
            orig = parse_tuple(buf, a, b)
        elif kind == CTA_TUPLE_REPLY:
            reply = parse_tuple(buf, a, b)
        elif kind == CTA_STATUS:
            status = _fixed(buf, a, b, BE32)
        elif kind == CTA_ID:
            ct_id = _fixed(buf, a, b, BE32)
        elif kind == CTA_COUNTERS_ORIG:
            counters_orig = _parse_pair(buf, a, b, CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES)
        elif kind == CTA_COUNTERS_REPLY:
            counters_reply = _parse_pair(buf, a, b, CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES)
        elif kind == CTA_TIMESTAMP:
            times = _parse_pair(buf, a, b, CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP)
    if orig is None or not orig.src_addr or not orig.dst_addr:
        raise MalformedMessage("conntrack message without an original tuple")
    return CtEntry(
        msg_type,
        flags,
        family,
        orig,
        reply or orig,
        status,
        ct_id,
        *counters_orig,
        *counters_reply,
        *times,
    )


class Message(NamedTuple):
    """One netlink message header in a receive buffer (payload is ``buf[start:end]``)."""

    msg_type: int
    flags: int
    seq: int
    start: int
    end: int


def iter_messages(buf: Buffer, length: int) -> Iterator[Message]:
    """Walk the netlink messages in the first ``length`` bytes of ``buf``.

    :raises MalformedMessage: when a header length is impossible (the rest is unusable).
    """
    unpack = NLMSGHDR.unpack_from
    pos = 0
    while pos + NLMSGHDR.size <= length:
        msg_len, msg_type, flags, seq, _pid = unpack(buf, pos)
        if msg_len < NLMSGHDR.size or pos + msg_len > length:
            raise MalformedMessage(f"netlink message length {msg_len} at offset {pos}")
        yield Message(msg_type, flags, seq, pos + NLMSGHDR.size, pos + msg_len)
        pos += (msg_len + 3) & ~3


def error_code(buf: Buffer, msg: Message) -> int:
    """The (negative errno or 0) code of an ``NLMSG_ERROR`` message."""
    return NLMSGERR.unpack_from(buf, msg.start)[0]


# --- requests --------------------------------------------------------------------------------


def dump_request(seq: int, family: int = socket.AF_UNSPEC) -> bytes:
    """An ``IPCTNL_MSG_CT_GET`` dump request for the whole table (``AF_UNSPEC`` = v4 and v6)."""
    body = NFGENMSG.pack(family, NFNETLINK_V0, 0)
    return (
        NLMSGHDR.pack(NLMSGHDR.size + len(body), MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        + body
    )


# --- sockets ---------------------------------------------------------------------------------


def open_event_socket(rcvbuf: int, reliable: bool = False) -> socket.socket:
    """A ctnetlink socket subscribed to NEW and DESTROY events, in the calling thread's netns.

    :param rcvbuf: receive buffer in bytes (``SO_RCVBUFFORCE`` as root, else ``SO_RCVBUF``);
        0 keeps the system default.
    :param reliable: set ``NETLINK_BROADCAST_ERROR``, conntrack's "reliable event mode": a
        DESTROY event that does not fit is not dropped; the kernel keeps the entry on its
        dying list and redelivers the event (with any missed NEW bit) until it fits
        (``nf_conntrack_ecache.c``). Overruns are still reported with ``ENOBUFS``.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        set_rcvbuf(sock, rcvbuf)
        if reliable:
            sock.setsockopt(SOL_NETLINK, NETLINK_BROADCAST_ERROR, 1)
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_CONNTRACK_NEW)
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_CONNTRACK_DESTROY)
    except OSError:
        sock.close()
        raise
    return sock


def open_dump_socket(rcvbuf: int) -> socket.socket:
    """An unsubscribed ctnetlink socket for table dumps."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        set_rcvbuf(sock, rcvbuf)
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def set_rcvbuf(sock: socket.socket, size: int) -> None:
    """Set the receive buffer, beyond ``rmem_max`` when privileged.

    :param size: bytes; 0 leaves the default.
    """
    if size <= 0:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def dump_table(
    sock: socket.socket, seq: int, bufsize: int = 1 << 20
) -> Iterator[tuple[bytes, Message]]:
    """Send a table dump request and yield ``(buffer, message)`` for each conntrack entry.

    :raises NetlinkError: when the kernel answers with an error.
    """
    sock.send(dump_request(seq))
    buf = bytearray(bufsize)
    while True:
        n = sock.recv_into(buf)
        data = bytes(buf[:n])
        for msg in iter_messages(data, n):
            if msg.seq != seq:
                continue
            if msg.msg_type == NLMSG_DONE:
                return
            if msg.msg_type == NLMSG_ERROR:
                code = error_code(data, msg)
                if code:
                    raise NetlinkError(-code, f"conntrack dump failed: {os.strerror(-code)}")
                return
            if msg.msg_type == MSG_CT_NEW:
                yield data, msg


