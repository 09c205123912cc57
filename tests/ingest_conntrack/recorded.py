"""Load the recorded ctnetlink messages in ``data/`` (see :mod:`.record_messages`)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from netflow_agent.plugins.ingest_conntrack import ctnetlink
from netflow_agent.plugins.ingest_conntrack.ctnetlink import CtEntry

DATA = Path(__file__).parent / "data"


def datagrams(name: str) -> list[tuple[str, bytes]]:
    """``(label, datagram)`` pairs from ``data/<name>.hex``."""
    out = []
    for line in (DATA / f"{name}.hex").read_text().splitlines():
        label, hexdata = line.split()
        out.append((label, bytes.fromhex(hexdata)))
    return out


def entries(name: str) -> list[CtEntry]:
    """Every conntrack message in ``data/<name>.hex``, parsed."""
    out = []
    for _label, data in datagrams(name):
        for msg in ctnetlink.iter_messages(data, len(data)):
            if msg.msg_type in (ctnetlink.MSG_CT_NEW, ctnetlink.MSG_CT_DELETE):
                out.append(
                    ctnetlink.parse_conntrack(data, msg.start, msg.end, msg.msg_type, msg.flags)
                )
    return out


def meta() -> dict[str, object]:
    """The topology the recording ran on: addresses (packed bytes) and ports."""
    raw = json.loads((DATA / "meta.json").read_text())
    return {k: ipaddress.ip_address(v).packed if isinstance(v, str) else v for k, v in raw.items()}
