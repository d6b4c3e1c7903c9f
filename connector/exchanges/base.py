"""The exchange adapter interface: everything that differs between venues.

The supervisor, sink, spool, metrics, status events and group membership are shared;
an adapter supplies, per exchange:

- its endpoints and subscription plan (``plan``: the (channel, market) pairs to
  subscribe, from the settings with this exchange's prefix), the Avro record of each
  channel, and the name of each subscription on the wire (``sub_name``);
- a per-connection *protocol object* (``new_protocol``; pure, no I/O, in the manner of
  h11): ``feed(frame, receive_us)`` turns frames into normalized events and control
  messages, and ``subscribe``/``unsubscribe``/``ping`` write the frames to send,
  batched within the exchange's limits. It owns the stream's sequence and checksum
  checks, and reports a break as a ``Resync`` control message;
- its liveness rule: ``ping()`` is an application-level request whose reply
  (``HeartbeatReply``) comes after everything sent before it on that connection, so it
  doubles as the make-before-break barrier;
- its limits: subscriptions per connection, control frames per second, and the age at
  which the server drops a connection (rotated make-before-break before that);
- its recovery after a gap (``new_gaps``: a ``connector.stream.gaps.Gaps`` subclass).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Protocol

from connector.events import Message

if TYPE_CHECKING:
    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.settings import Settings
    from connector.stream.gaps import Gaps, ResyncWanted, SubState
    from connector.stream.recent import RecentTrades


class WireProtocol(Protocol):
    """One connection's protocol state (pure)."""

    def feed(self, frame: bytes | str, receive_ts_us: int) -> list[Message]: ...

    def subscribe(self, names: list[str]) -> list[str]: ...

    def unsubscribe(self, names: list[str]) -> list[str]: ...

    def ping(self) -> str: ...


class Adapter(ABC):
    name: ClassVar[str]
    channel_schemas: ClassVar[dict[str, str]]
    max_subs_per_connection: ClassVar[int]
    control_frames_per_second: ClassVar[float] = 0.0  # 0: no documented limit
    server_max_age_s: ClassVar[float] = 0.0  # 0: the server keeps connections open

    def __init__(self, settings: Settings, ws_url: str, rest_url: str) -> None:
        self.settings = settings
        self.ws_url = ws_url
        self.rest_url = rest_url

    @abstractmethod
    def plan(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
        """(channel, market) pairs to subscribe; pairs skipped, and why."""

    @abstractmethod
    def sub_name(self, channel: str, market: str) -> str: ...

    @abstractmethod
    def new_protocol(self, connection_id: str) -> WireProtocol: ...

    @abstractmethod
    def new_gaps(
        self,
        publisher: Publisher,
        recent: RecentTrades,
        metrics: Metrics,
        resync: ResyncWanted,
    ) -> Gaps: ...

    def is_private(self, name: str) -> bool:
        return False

    async def subscribe_frames(
        self, proto: WireProtocol, subs: list[SubState]
    ) -> tuple[list[str], list[SubState], str]:
        """Frames subscribing ``subs``; subscriptions that cannot be subscribed now (no
        credentials), and why."""
        return proto.subscribe([s.name for s in subs]), [], ""

    def silence_hint(self, sub: SubState) -> str:
        return f"is {sub.market!r} a listed {self.name} market?"

    async def aclose(self) -> None:  # noqa: B027 (optional hook)
        """Releases what the adapter holds (REST clients)."""
