"""A flow schema made active for one test, and the previous one restored afterwards.

The schema is process-wide (``netflow_agent.schema.active``, set by the pipeline at start);
a test that turns on optional fields must give the next test the default back::

    with active_schema(FlowOptions(mac=True, vlan=True, mpls_labels=2)) as schema:
        flows = schema.empty(3)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from netflow_agent import schema as _schema
from netflow_agent.schema import FlowField, FlowOptions, FlowSchema

__all__ = ["active_schema"]


@contextmanager
def active_schema(options: FlowOptions,
                  declared: Iterable[FlowField] = ()) -> Iterator[FlowSchema]:
    """Make the schema ``options`` (and plugin fields ``declared``) select active inside
    the block."""
    before = _schema.active()
    chosen = FlowSchema.build(options, declared)
    _schema.set_active(chosen)
    try:
        yield chosen
    finally:
        _schema.set_active(before)
