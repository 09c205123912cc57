"""Flow columns as big-endian wire bytes: what the v9/IPFIX encoders write from a FlowBatch.

This module owns the conversion of :class:`~agent.model.FlowBatch` columns into the byte
layout of template fields, for the fields the flow schema adds to the templates
(:meth:`agent.schema.FlowSchema.export_fields`): one big-endian structured dtype per field
list (:func:`wire_dtype`), filled column by column (:func:`wire_columns`), no Python object
per flow.

* integer fields are written in their declared ``width``: 1, 2, 4 or 8 bytes as unsigned
  big-endian integers, any other width (an MPLS label stack entry: 3 bytes) as the low
  ``width`` bytes of the value, big-endian (RFC 7011 section 6.2 reduced-size encoding);
* ``bytes`` fields (MAC addresses) are copied as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .schema import FlowField

__all__ = ["wire_code", "wire_columns", "wire_dtype"]

_NATIVE_WIDTHS = (1, 2, 4, 8)


def wire_code(f: FlowField) -> str:
    """The NumPy type code of ``f`` on the wire: ``>u<width>`` or ``V<width>``."""
    if f.dtype != "bytes" and f.width in _NATIVE_WIDTHS:
        return f">u{f.width}"
    return f"V{f.width}"


def wire_dtype(fields: Sequence[FlowField]) -> np.dtype:
    """A packed (no padding) big-endian structured dtype, one field per :class:`FlowField`."""
    return np.dtype([(f.name, wire_code(f)) for f in fields])


def wire_columns(flows: np.ndarray, fields: Sequence[FlowField]) -> np.ndarray:
    """The ``fields`` columns of the record array ``flows`` in wire layout.

    :param flows: a FlowBatch's record array (it must have every field of ``fields``).
    :param fields: the template fields, in wire order.
    :return: a structured array of :func:`wire_dtype` with one row per flow; view it as
        ``V<itemsize>`` to get each row's bytes.
    """
    out = np.zeros(len(flows), wire_dtype(fields))
    for f in fields:
        column = flows[f.name]
        if f.dtype == "bytes":
            out[f.name] = column
        elif f.width in _NATIVE_WIDTHS:
            mask = (1 << 8 * f.width) - 1
            out[f.name] = column.astype(np.uint64) & np.uint64(mask)
        else:  # the low ``width`` bytes of the big-endian 8-byte value
            be = column.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - f.width:]
            out[f.name] = np.ascontiguousarray(be).view(f"V{f.width}").ravel()
    return out
