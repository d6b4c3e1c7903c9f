"""What the connector knows of an exchange before it runs it: one ``ExchangeSpec`` in the
exchange's ``__init__``, listed by name in ``connector.exchanges.registry``.

The spec names its settings fields (a model joined into ``connector.settings.Settings``),
its channels, and where its adapter and simulator live (imported when used, so reading
settings does not import any exchange's code).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from connector.exchanges.base import Adapter
    from connector.settings import Settings


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


@dataclass(frozen=True)
class ExchangeSpec:
    name: str  # as in CONNECTOR_EXCHANGES; its settings are <NAME>_*
    settings: type[BaseModel]  # its fields, joined into Settings
    channels: tuple[str, ...]  # the exchange's own channel names
    adapter: str  # "module:Class" of its Adapter
    simulator: str  # "module:function" building its local server (``connector simulate``)
    secret_fields: tuple[str, ...] = ()  # settings that may come from <ENV>_FILE

    @classmethod
    def of(
        cls,
        package: str,
        settings: type[BaseModel],
        channels: tuple[str, ...],
        secret_fields: tuple[str, ...] = (),
    ) -> ExchangeSpec:
        """The spec of the exchange in ``package`` (``connector.exchanges.<name>``), its
        parts where every exchange keeps them: ``adapter.<Name>Adapter`` and
        ``simulator.for_cli``."""
        name = package.rpartition(".")[2]
        return cls(
            name=name,
            settings=settings,
            channels=channels,
            adapter=f"{package}.adapter:{name.capitalize()}Adapter",
            simulator=f"{package}.simulator:for_cli",
            secret_fields=secret_fields,
        )

    @property
    def env_prefix(self) -> str:
        return self.name.upper() + "_"

    def new_adapter(self, settings: Settings) -> Adapter:
        cls: type[Adapter] = _load(self.adapter)
        return cls(settings)  # type: ignore[call-arg]

    def new_simulator(self, **options: Any) -> Any:
        """The exchange's local server (``serve_forever(stop)``), from the CLI's options."""
        return _load(self.simulator)(**options)
