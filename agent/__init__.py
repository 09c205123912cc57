"""netflow-agent: a userspace, plugin-based NetFlow v5/v9 and IPFIX exporter.

Plugin authors need two names from here: :data:`hookimpl`, the marker for hook
implementations, and the records in :mod:`agent.model`. See ``docs/hooks.md``.
"""

import os

import pluggy

# The agent does no linear algebra; OpenBLAS (loaded with NumPy) would otherwise start a
# worker thread at import, before the privilege drop is prepared, which ends up with a
# capability set of its own (docs/operations.md, "Privileges").
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

#: Marker for hook implementations: ``@hookimpl def agent_register_components(registry): ...``
hookimpl = pluggy.HookimplMarker("agent")

__all__ = ["__version__", "hookimpl"]
