"""Component types and the registry that plugins fill through ``agent_register_components``.

A *component type* is one TOML table name under a stage (``[[export.netflow]]``) plus the
``Config`` dataclass that describes the table and a factory that builds an instance from it.
The core owns the registry; plugins only call :meth:`ComponentRegistry.add`. A factory may be
given by name (``"package.module:Class"``): its module is imported when an instance is built
(or something asks for :attr:`ComponentType.factory`), so a plugin's component code stays out
of the agent's memory unless the configuration uses it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar

from netflow_agent.runner import current_plugin
from netflow_agent.schema import CATALOGUE, FlowField, FlowOptions, FlowSchema

STAGES = ("ingest", "cache", "aggregate", "export")


@dataclass(frozen=True, slots=True)
class Resource:
    """Something only one component instance may hold, e.g. an NFLOG group in one netns.

    Two instances that claim equal resources are reported by dry-run.

    :param kind: e.g. ``"nflog-group"``, ``"tc-hook"``, ``"udp-bind"``.
    :param ident: the identity within that kind, e.g. ``"netns=router group=5"``.
    """

    kind: str
    ident: str


@dataclass(frozen=True, slots=True)
class ComponentType:
    """A registered component type (see :meth:`ComponentRegistry.add`).

    :ivar factory_ref: the factory, or its ``"module:attribute"`` name (imported on first use).
    """

    stage: str
    name: str
    factory_ref: Callable[..., Any] | str
    config_class: type
    sample: str = ""
    doc: str = ""
    plugin: str = ""
    unavailable: Callable[[], str | None] | None = None

    @property
    def factory(self) -> Callable[..., Any]:
        """``factory(config, name) -> instance``; a factory given by name is imported now."""
        ref = self.factory_ref
        return load_factory(ref) if isinstance(ref, str) else ref

    @property
    def table(self) -> str:
        """The TOML table path: ``export.netflow``."""
        return f"{self.stage}.{self.name}"

    def unavailable_reason(self) -> str | None:
        """Why this component cannot run here (missing extension, tool), or ``None``."""
        return self.unavailable() if self.unavailable else None


@cache
def load_factory(ref: str) -> Callable[..., Any]:
    """The attribute ``ref`` (``"package.module:attribute"``) names, its module imported.

    :raises ValueError: ``ref`` has no ``:attribute``.
    """
    module, sep, attr = ref.partition(":")
    if not sep or not attr:
        raise ValueError(f"factory name {ref!r} is not 'module:attribute'")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


@dataclass
class ComponentRegistry:
    """All component types known to this agent, keyed by ``(stage, name)``."""

    types: dict[tuple[str, str], ComponentType] = field(default_factory=dict)
    #: flow fields plugins declared (:meth:`add_flow_field`), by name
    flow_fields: dict[str, FlowField] = field(default_factory=dict)

    def add_flow_field(self, flow_field: FlowField) -> None:
        """Declare a flow field (a key field an ingest fills, exporters send) that ``[flow]
        fields`` may then turn on by name (see docs/hooks.md, "The flow schema").

        :raises ValueError: the name is a built-in field's or was declared already.
        """
        if flow_field.name in CATALOGUE or flow_field.name in self.flow_fields:
            raise ValueError(f"flow field {flow_field.name!r} declared twice")
        self.flow_fields[flow_field.name] = flow_field

    def flow_schema(self, options: FlowOptions) -> FlowSchema:
        """The schema ``[flow]`` selects from the catalogue and the declared fields.

        :raises ValueError: ``options.fields`` names a field nobody declared.
        """
        return FlowSchema.build(options, self.flow_fields.values())

    def add(
        self,
        stage: str,
        name: str,
        factory: Callable[..., Any] | str,
        config_class: type,
        *,
        sample: str = "",
        doc: str = "",
        unavailable: Callable[[], str | None] | None = None,
    ) -> None:
        """Register a component type.

        :param stage: ``"ingest"``, ``"cache"``, ``"aggregate"`` or ``"export"``.
        :param name: the table name, snake_case (``netflow`` for ``[[export.netflow]]``).
        :param factory: ``factory(config, name) -> instance``; usually the component class,
            or its name ``"package.module:Class"``: the module is imported only when the
            configuration builds an instance (a plugin's unused components cost no memory).
        :param config_class: a frozen dataclass describing the table's keys.
        :param sample: commented TOML sample (``agent config sample``).
        :param doc: one-line description (``agent plugins``).
        :param unavailable: returns a reason string when the component cannot run here.
        """
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        if isinstance(factory, str) and not factory.partition(":")[2]:
            raise ValueError(f"factory name {factory!r} is not 'module:attribute'")
        key = (stage, name)
        if key in self.types:
            raise ValueError(f"component {stage}.{name} registered twice")
        self.types[key] = ComponentType(
            stage, name, factory, config_class, sample, doc, current_plugin.get(), unavailable
        )

    def get(self, stage: str, name: str) -> ComponentType | None:
        """The type registered for ``[stage.name]``, or ``None``."""
        return self.types.get((stage, name))

    def names(self, stage: str) -> list[str]:
        """Registered names for one stage, sorted."""
        return sorted(n for s, n in self.types if s == stage)


class Component:
    """Optional base class for component instances.

    Subclasses set :attr:`stage` and :attr:`type_name`, receive their frozen ``Config`` and
    instance name, and implement stage hooks as methods marked with ``@hookimpl``.
    """

    stage: ClassVar[str] = ""
    type_name: ClassVar[str] = ""
    #: ingest only: ``True`` when the source ends by itself (a pcap file).
    finite: ClassVar[bool] = False

    def __init__(self, config: Any, name: str):
        self.config = config
        self.name = name
        self.log = logging.getLogger(f"agent.{self.stage}.{self.type_name}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
