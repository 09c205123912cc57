"""netflow-agent: a userspace, plugin-based NetFlow v5/v9 and IPFIX exporter.

Plugin authors need two names from here: :data:`hookimpl`, the marker for hook
implementations, and the records in :mod:`agent.model`. See ``docs/hooks.md``.
"""

import pluggy

__version__ = "0.1.0"

#: Marker for hook implementations: ``@hookimpl def agent_register_components(registry): ...``
hookimpl = pluggy.HookimplMarker("agent")

__all__ = ["__version__", "hookimpl"]
