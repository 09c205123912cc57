"""An ``NFULNL_MSG_PACKET`` message in pyroute2's terms: the tests' independent decoder.

Not used by the agent (``netlink.py`` walks the buffers with structs; importing pyroute2
would cost the agent ~15 MB of memory for nothing): tests and ``bench/nflog`` parse the
same buffers with it and compare.
"""

from __future__ import annotations

from pyroute2.netlink import nla
from pyroute2.netlink.nfnetlink import nfgen_msg


class nfulnl_msg(nfgen_msg):
    """An ``NFULNL_MSG_PACKET`` message in pyroute2 terms (not used on the packet path).

    ``struct nfgenmsg`` header followed by ``NFULA_*`` attributes::

        struct nfulnl_msg_packet_hdr { __be16 hw_protocol; __u8 hook; __u8 _pad; };
        struct nfulnl_msg_packet_hw { __be16 hw_addrlen; __u16 _pad; __u8 hw_addr[8]; };
        struct nfulnl_msg_packet_timestamp { __aligned_be64 sec; __aligned_be64 usec; };
    """

    nla_map = (
        ("NFULA_UNSPEC", "none"),
        ("NFULA_PACKET_HDR", "packet_hdr"),
        ("NFULA_MARK", "be32"),
        ("NFULA_TIMESTAMP", "timestamp"),
        ("NFULA_IFINDEX_INDEV", "be32"),
        ("NFULA_IFINDEX_OUTDEV", "be32"),
        ("NFULA_IFINDEX_PHYSINDEV", "be32"),
        ("NFULA_IFINDEX_PHYSOUTDEV", "be32"),
        ("NFULA_HWADDR", "hwaddr"),
        ("NFULA_PAYLOAD", "cdata"),
        ("NFULA_PREFIX", "asciiz"),
        ("NFULA_UID", "be32"),
        ("NFULA_SEQ", "be32"),
        ("NFULA_SEQ_GLOBAL", "be32"),
        ("NFULA_GID", "be32"),
        ("NFULA_HWTYPE", "be16"),
        ("NFULA_HWHEADER", "cdata"),
        ("NFULA_HWLEN", "be16"),
        ("NFULA_CT", "cdata"),
        ("NFULA_CT_INFO", "be32"),
        ("NFULA_VLAN", "cdata"),
        ("NFULA_L2HDR", "cdata"),
    )

    class packet_hdr(nla):
        fields = (("hw_protocol", ">H"), ("hook", "B"), ("pad", "B"))

    class timestamp(nla):
        fields = (("sec", ">Q"), ("usec", ">Q"))

    class hwaddr(nla):
        fields = (("hw_addrlen", ">H"), ("pad", "H"), ("hw_addr", "8s"))
