"""Binance, Bybit and Bitfinex protocol objects (pure): frames in the exchanges'
documented formats → events; the frames they write; sequence and checksum checks."""

from __future__ import annotations

import zlib

import orjson
import pytest

from connector.errors import ConfigError, ProtocolError
from connector.events import (
    BookDelta,
    BookSnapshot,
    ExchangeError,
    HeartbeatReply,
    Maintenance,
    ReconnectRequested,
    Resync,
    Side,
    SubscriptionSucceeded,
    Trade,
    UnsubscriptionSucceeded,
)
from connector.exchanges.binance.decoder import BinanceProtocol
from connector.exchanges.bitfinex.decoder import BitfinexProtocol
from connector.exchanges.bitfinex.protocol import book_checksum
from connector.exchanges.bybit.decoder import BybitProtocol
from connector.settings import load_settings

RTS = 1_700_000_000_000_000


# --- Binance -------------------------------------------------------------------------
def binance(stream: str, data: dict[str, object]) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def test_binance_trade_aggtrade_and_ticker_from_documented_payloads() -> None:
    p = BinanceProtocol("c1")
    (t,) = p.feed(
        binance(
            "bnbbtc@trade",
            {
                "e": "trade",
                "E": 1672515782136,
                "s": "BNBBTC",
                "t": 12345,
                "p": "0.001",
                "q": "100",
                "T": 1672515782136,
                "m": True,
                "M": True,
            },
        ),
        RTS,
    )
    assert isinstance(t, Trade)
    assert (t.exchange, t.channel, t.market, t.trade_id) == ("binance", "trade", "bnbbtc", "12345")
    assert (t.price, t.amount, t.side) == ("0.001", "100", Side.SELL)  # buyer was the maker
    assert (t.exchange_ts_us, t.exchange_ts_raw, t.sequence) == (
        1672515782136000,
        "1672515782136",
        1,
    )
    (a,) = p.feed(
        binance(
            "bnbbtc@aggTrade",
            {
                "e": "aggTrade",
                "E": 1672515782136,
                "s": "BNBBTC",
                "a": 12345,
                "p": "0.001",
                "q": "100",
                "f": 100,
                "l": 105,
                "T": 1672515782136,
                "m": False,
                "M": True,
            },
        ),
        RTS,
    )
    assert isinstance(a, Trade) and a.side is Side.BUY and a.channel == "aggTrade"
    assert a.extra["first_trade_id"] == "100" and a.extra["last_trade_id"] == "105"
    (k,) = p.feed(
        binance(
            "bnbusdt@bookTicker",
            {
                "u": 400900217,
                "s": "BNBUSDT",
                "b": "25.35190000",
                "B": "31.21000000",
                "a": "25.36520000",
                "A": "40.66000000",
            },
        ),
        RTS,
    )
    assert isinstance(k, BookSnapshot) and not isinstance(k, BookDelta)
    assert k.bids == (("25.35190000", "31.21000000"),) and k.asks == (
        ("25.36520000", "40.66000000"),
    )
    assert k.exchange_sequence == 400900217 and k.exchange_ts_us == RTS  # no event time
    assert k.sequence == 3


def depth(first: int, last: int) -> bytes:
    return binance(
        "bnbbtc@depth@100ms",
        {
            "e": "depthUpdate",
            "E": 1672515782136,
            "s": "BNBBTC",
            "U": first,
            "u": last,
            "b": [["0.0024", "10"]],
            "a": [["0.0026", "100"]],
        },
    )


def test_binance_depth_breaks_are_reported_once_and_reset_by_subscribing() -> None:
    p = BinanceProtocol("c1")
    (d,) = p.feed(depth(157, 160), RTS)
    assert isinstance(d, BookDelta) and d.exchange_sequence == 160
    assert d.extra == {"first_update_id": "157"} and d.bids == (("0.0024", "10"),)
    assert len(p.feed(depth(161, 165), RTS)) == 1  # contiguous
    d2, brk = p.feed(depth(170, 171), RTS)  # 166..169 missing
    assert isinstance(d2, BookDelta)  # what was sent is still published
    assert brk == Resync("bnbbtc@depth@100ms", "sequence_break", "diff U=170 does not follow u=165")
    assert len(p.feed(depth(180, 181), RTS)) == 1  # already being resynced: once
    p.subscribe(["bnbbtc@depth@100ms"])  # a new subscription starts a new chain
    assert len(p.feed(depth(500, 510), RTS)) == 1


def test_binance_requests_are_batched_and_replies_matched_by_id() -> None:
    p = BinanceProtocol("c1")
    names = [f"s{i}@trade" for i in range(250)]
    frames = [orjson.loads(f) for f in p.subscribe(names)]
    assert [len(f["params"]) for f in frames] == [100, 100, 50]
    assert [f["method"] for f in frames] == ["SUBSCRIBE"] * 3
    ok = p.feed(orjson.dumps({"result": None, "id": frames[0]["id"]}), RTS)
    assert ok == [SubscriptionSucceeded(n) for n in names[:100]]
    err = p.feed(
        orjson.dumps({"error": {"code": 2, "msg": "Invalid request"}, "id": frames[1]["id"]}), RTS
    )
    assert err[0] == ExchangeError("s100@trade", "2", "Invalid request") and len(err) == 100
    ping = orjson.loads(p.ping())
    assert ping["method"] == "LIST_SUBSCRIPTIONS"
    assert p.feed(orjson.dumps({"result": ["s0@trade"], "id": ping["id"]}), RTS) == [
        HeartbeatReply("ok")
    ]
    (unsub,) = p.unsubscribe(["s0@trade"])
    reply = orjson.dumps({"result": None, "id": orjson.loads(unsub)["id"]})
    assert p.feed(reply, RTS) == [UnsubscriptionSucceeded("s0@trade")]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"[1]", "not_an_object"),
        (binance("btcusdt@kline_1m", {}), "unknown_channel"),
        (
            binance("btcusdt@trade", {"e": "trade", "E": 1, "t": 1, "p": "1", "T": 1, "m": True}),
            "missing_field",
        ),
        (
            binance(
                "btcusdt@trade",
                {"e": "trade", "E": 1, "t": "x", "p": "1", "q": "1", "T": 1, "m": True},
            ),
            "invalid_field",
        ),
        (orjson.dumps({"result": None, "id": 99}), "unknown_event"),
    ],
)
def test_binance_bad_frames_are_protocol_errors(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        BinanceProtocol("c1").feed(frame, RTS)
    assert info.value.reason == reason
    assert info.value.frame == frame  # kept for the dead letter


# --- Bybit ---------------------------------------------------------------------------
TRADE = (
    b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":[{"T":'
    b'1672304486865,"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50","L":"PlusTick","i":'
    b'"20f43950-d8dd-5b31-9112-a178eb6023af","BT":false}]}'
)


def bybit_book(kind: str, u: int, bids: list[list[str]] | None = None) -> bytes:
    return orjson.dumps(
        {
            "topic": "orderbook.50.BTCUSDT",
            "type": kind,
            "ts": 1671179923028,
            "data": {
                "s": "BTCUSDT",
                "b": bids or [["17440.00", "40.833"]],
                "a": [["17440.50", "0"]],
                "u": u,
                "seq": 22520573250,
            },
            "cts": 1671179923020,
        },
    )


def test_bybit_trades_and_books_from_documented_payloads() -> None:
    p = BybitProtocol("c1")
    (t,) = p.feed(TRADE, RTS)
    assert isinstance(t, Trade)
    assert (t.trade_id, t.price, t.amount, t.side) == (
        "20f43950-d8dd-5b31-9112-a178eb6023af",
        "16578.50",
        "0.001",
        Side.BUY,
    )
    assert (t.market, t.channel, t.exchange_ts_us) == ("BTCUSDT", "publicTrade", 1672304486865000)
    assert t.extra == {"L": "PlusTick", "BT": "false"}
    (snap,) = p.feed(bybit_book("snapshot", 13079592), RTS)
    assert isinstance(snap, BookDelta) and snap.resync is True
    assert snap.exchange_sequence == 13079592 and snap.extra == {"seq": "22520573250"}
    assert snap.asks == (("17440.50", "0"),)  # size 0: the level is deleted
    (delta,) = p.feed(bybit_book("delta", 13079593), RTS)
    assert delta.resync is False  # type: ignore[union-attr]
    _, brk = p.feed(bybit_book("delta", 13079600), RTS)
    assert brk == Resync(
        "orderbook.50.BTCUSDT", "sequence_break", "delta u=13079600 does not follow u=13079593"
    )
    assert len(p.feed(bybit_book("delta", 13079700), RTS)) == 1  # reported once
    # a new snapshot (u=1 after a service restart) replaces the book: no break
    assert len(p.feed(bybit_book("snapshot", 1), RTS)) == 1
    assert len(p.feed(bybit_book("delta", 2), RTS)) == 1
    assert len(p.feed(bybit_book("delta", 4), RTS)) == 2


def test_bybit_requests_batched_by_ten_and_replies() -> None:
    p = BybitProtocol("c1")
    names = [f"publicTrade.S{i}" for i in range(23)]
    frames = [orjson.loads(f) for f in p.subscribe(names)]
    assert [len(f["args"]) for f in frames] == [10, 10, 3]
    assert {f["op"] for f in frames} == {"subscribe"}
    ok = {"success": True, "ret_msg": "", "conn_id": "x", "op": "subscribe"}
    assert p.feed(orjson.dumps({**ok, "req_id": frames[2]["req_id"]}), RTS) == [
        SubscriptionSucceeded(n) for n in names[20:]
    ]
    bad = {"success": False, "ret_msg": "Invalid symbol", "op": "subscribe"}
    (e, *_) = p.feed(orjson.dumps({**bad, "req_id": frames[0]["req_id"]}), RTS)
    assert e == ExchangeError("publicTrade.S0", None, "Invalid symbol")
    ping = orjson.loads(p.ping())
    assert ping["op"] == "ping"
    spot = {
        "success": True,
        "ret_msg": "pong",
        "conn_id": "x",
        "op": "ping",
        "req_id": ping["req_id"],
    }
    assert p.feed(orjson.dumps(spot), RTS) == [HeartbeatReply("pong")]
    linear = {"req_id": "x", "op": "pong", "args": ["1675418560633"], "conn_id": "x"}
    assert isinstance(p.feed(orjson.dumps(linear), RTS)[0], HeartbeatReply)
    with pytest.raises(ProtocolError) as info:
        p.feed(b'{"topic":"kline.1.BTCUSDT","data":[]}', RTS)
    assert info.value.reason == "unknown_channel"


# --- Bitfinex ------------------------------------------------------------------------
def test_bitfinex_checksum_is_crc32_of_the_interleaved_levels() -> None:
    bids = [("6000", "1.5"), ("5999.5", "2")]
    asks = [("6001", "-0.5")]
    text = "6000:1.5:6001:-0.5:5999.5:2"
    crc = zlib.crc32(text.encode())
    assert book_checksum(bids, asks) == (crc - 2**32 if crc >= 2**31 else crc)
    assert -(2**31) <= book_checksum(bids, asks) < 2**31


def subscribed(p: BitfinexProtocol, chan: int, channel: str, symbol: str = "tBTCUSD") -> None:
    reply = {"event": "subscribed", "channel": channel, "chanId": chan, "symbol": symbol}
    assert p.feed(orjson.dumps(reply), RTS) == [SubscriptionSucceeded(f"{channel}:{symbol}")]


def test_bitfinex_conf_first_then_subscriptions() -> None:
    p = BitfinexProtocol("c1", book_length=25)
    frames = [orjson.loads(f) for f in p.subscribe(["trades:tBTCUSD", "book:tBTCUSD"])]
    assert frames[0] == {"event": "conf", "flags": 65536 + 131072}
    assert frames[1] == {"event": "subscribe", "channel": "trades", "symbol": "tBTCUSD"}
    assert frames[2] == {
        "event": "subscribe",
        "channel": "book",
        "symbol": "tBTCUSD",
        "prec": "P0",
        "freq": "F0",
        "len": "25",
    }
    assert len(p.subscribe(["trades:tETHUSD"])) == 1  # conf once per connection
    subscribed(p, 17, "trades")
    assert orjson.loads(p.unsubscribe(["trades:tBTCUSD"])[0]) == {
        "event": "unsubscribe",
        "chanId": 17,
    }
    assert p.feed(b'{"event":"unsubscribed","status":"OK","chanId":17}', RTS) == [
        UnsubscriptionSucceeded("trades:tBTCUSD")
    ]


def test_bitfinex_trades_exact_decimals_and_sides() -> None:
    p = BitfinexProtocol("c1")
    subscribed(p, 17, "trades")
    snap = p.feed(b"[17,[[402,1574694475039,-0.005,7245.3],[401,1574694474000,0.1,7245.1]],1]", RTS)
    assert [t.trade_id for t in snap] == ["401", "402"]  # type: ignore[union-attr]  # oldest first
    assert all(t.backfilled for t in snap)  # type: ignore[union-attr]
    (te,) = p.feed(b'[17,"te",[403,1574694478808,-0.10000000000000001,0.00001234],2]', RTS)
    assert isinstance(te, Trade)
    # the exact text, never a float: 0.10000000000000001 is not rounded to 0.1
    assert (te.price, te.amount, te.side) == ("0.00001234", "0.10000000000000001", Side.SELL)
    assert te.exchange_ts_us == 1574694478808000 and te.backfilled is False
    assert p.feed(b'[17,"tu",[403,1574694478808,-0.1,0.00001234],3]', RTS) == []  # same trade
    assert p.feed(b'[17,"hb",4]', RTS) == []


def test_bitfinex_book_checksums_and_sequence_numbers() -> None:
    p = BitfinexProtocol("c1")
    subscribed(p, 20, "book")
    subscribed(p, 17, "trades")
    (snap,) = p.feed(b"[20,[[7000,1,0.5],[6999,2,1.25],[7001,1,-0.75]],1]", RTS)
    assert isinstance(snap, BookDelta) and snap.resync is True
    assert snap.bids == (("7000", "0.5"), ("6999", "1.25")) and snap.asks == (("7001", "0.75"),)
    good = book_checksum([("7000", "0.5"), ("6999", "1.25")], [("7001", "-0.75")])
    assert p.feed(f'[20,"cs",{good},2]'.encode(), RTS) == []
    (upd,) = p.feed(b"[20,[7000,0,1],3]", RTS)  # count 0: the bid level is deleted
    assert upd.bids == (("7000", "0"),) and upd.asks == ()  # type: ignore[union-attr]
    after = book_checksum([("6999", "1.25")], [("7001", "-0.75")])
    assert p.feed(f'[20,"cs",{after},4]'.encode(), RTS) == []
    (brk,) = p.feed(f'[20,"cs",{after + 1},5]'.encode(), RTS)
    assert brk == Resync(
        "book:tBTCUSD", "checksum_mismatch", f"checksum {after + 1} sent, {after} computed"
    )
    assert p.feed(f'[20,"cs",{after + 1},6]'.encode(), RTS) == []  # reported once
    # a lost frame on the connection: every subscription is resynced
    lost = p.feed(b'[17,"hb",9]', RTS)
    assert lost == [Resync("trades:tBTCUSD", "sequence_break", "public sequence 9 after 6")]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b'{"event":"info","code":20051,"msg":"Stop/Restart"}', ReconnectRequested()),
        (b'{"event":"info","code":20060,"msg":"Maintenance"}', Maintenance(True, "Maintenance")),
        (b'{"event":"info","code":20061,"msg":"Resume"}', Maintenance(False, "Resume")),
        (b'{"event":"pong","ts":1511545528111,"cid":1234}', HeartbeatReply("pong")),
        (
            b'{"event":"error","msg":"symbol: invalid","code":10300,'
            b'"channel":"book","symbol":"tXXX"}',
            ExchangeError("book:tXXX", "10300", "symbol: invalid"),
        ),
    ],
)
def test_bitfinex_control_events(frame: bytes, expected: object) -> None:
    assert BitfinexProtocol("c1").feed(frame, RTS) == [expected]


def test_bitfinex_bad_frames() -> None:
    p = BitfinexProtocol("c1")
    for frame, reason in [
        (b"[99,[1,2,3],1]", "unknown_channel"),
        (b'{"event":"what"}', "unknown_event"),
        (b"[1.5]", "unknown_event"),
        (b"[NaN]", "invalid_json"),
    ]:
        with pytest.raises(ProtocolError) as info:
            p.feed(frame, RTS)
        assert info.value.reason == reason, frame


# --- settings ------------------------------------------------------------------------
def test_exchange_settings_use_the_exchange_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "CONNECTOR_EXCHANGES": "bitstamp,binance,bybit,bitfinex",
        "BINANCE_WS_URL": "wss://stream.binance.us:9443/stream",
        "BINANCE_REST_URL": "https://api.binance.us/",
        "BINANCE_MARKETS": "BTCUSDT, ethusdt",
        "BINANCE_CHANNELS": "trade,depth",
        "BYBIT_WS_URL": "wss://stream-testnet.bybit.com/v5/public/linear",
        "BYBIT_MARKETS": "BTCUSDT",
        "BYBIT_CHANNELS": "orderbook",
        "BITFINEX_MARKETS": "tBTCUSD,tETHUSD",
        "BITFINEX_CHANNELS": "book",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.exchanges == ["bitstamp", "binance", "bybit", "bitfinex"]
    assert s.binance_markets == ["btcusdt", "ethusdt"]  # stream names are lowercase
    assert s.binance_rest_url == "https://api.binance.us"
    assert s.bybit_ws_url.endswith("/linear") and s.bybit_channels == ["orderbook"]
    assert s.bitfinex_markets == ["tBTCUSD", "tETHUSD"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONNECTOR_EXCHANGES": "kraken"}, "unsupported exchange(s) ['kraken']"),
        ({"BYBIT_MARKETS": "btcusdt"}, "is not a Bybit symbol (uppercase"),
        ({"BITFINEX_MARKETS": "BTCUSD"}, "is not a Bitfinex trading pair"),
        ({"BINANCE_CHANNELS": "trade,kline"}, "Binance channels are trade, aggTrade, depth"),
        ({"BINANCE_WS_URL": "https://x"}, "is not a ws:// or wss:// URL"),
        ({"CONNECTOR_BYBIT_ORDERBOOK_DEPTH": "25"}, "25 is not one of"),
    ],
)
def test_bad_exchange_settings_name_the_problem(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert message in str(info.value)


# --- REST backfill parsing and completeness --------------------------------------------
class _Rest:
    def __init__(self, payload: object) -> None:
        self.payload = payload
        self.calls: list[tuple[object, ...]] = []

    async def recent_trades(self, *args: object) -> object:
        self.calls.append(args)
        return self.payload


def _bybit_rows(times: list[int]) -> dict[str, object]:
    rows = [
        {
            "execId": f"id{t}",
            "symbol": "BTCUSDT",
            "price": "16618.49",
            "size": "0.00012",
            "side": "Sell",
            "time": str(t),
            "isBlockTrade": False,
        }
        for t in sorted(times, reverse=True)  # newest first, as Bybit sends them
    ]
    return {"retCode": 0, "retMsg": "OK", "result": {"category": "spot", "list": rows}}


async def test_bybit_backfill_says_when_the_rest_window_does_not_reach_the_gap() -> None:
    from connector.exchanges.bybit.recovery import BybitGaps, category_of
    from connector.metrics import Metrics
    from connector.stream.gaps import SubState
    from connector.stream.recent import RecentTrades

    assert category_of("wss://stream.bybit.com/v5/public/linear") == "linear"
    assert category_of("ws://127.0.0.1:9") == "spot"
    sub = SubState("publicTrade", "BTCUSDT", "publicTrade.BTCUSDT")
    gap_start_ms = 1_700_000_000_000
    # 60 spot trades, all inside the gap: the window may not reach its start
    full = _Rest(_bybit_rows([gap_start_ms + i for i in range(60)]))
    gaps = BybitGaps(None, full, "spot", RecentTrades(), Metrics())  # type: ignore[arg-type]
    trades, why = await gaps.fetch_trades(sub, gap_start_ms * 1000)
    assert len(trades) == 60 and "reaches back only to" in why
    assert full.calls == [("spot", "BTCUSDT", 60)]
    assert [t.trade_id for t in trades][:2] == [f"id{gap_start_ms}", f"id{gap_start_ms + 1}"]
    assert trades[0].side is Side.SELL and trades[0].backfilled
    # the window reaches before the gap: complete, older trades left out
    covered = _Rest(_bybit_rows([gap_start_ms - 5 + i for i in range(60)]))
    gaps = BybitGaps(None, covered, "spot", RecentTrades(), Metrics())  # type: ignore[arg-type]
    trades, why = await gaps.fetch_trades(sub, gap_start_ms * 1000)
    assert why == "" and len(trades) == 56  # from one ms before the gap's start


def test_bitfinex_rest_trades_keep_exact_numbers() -> None:
    from connector.exchanges.bitfinex.recovery import BitfinexRest, rest_trades

    payload = BitfinexRest.parse(
        b"[[1,1574694475039,-0.10000000000000001,7245.3],[2,1574694475040,3,7245]]"
    )
    trades = rest_trades(payload, "tBTCUSD", connection_id="c", receive_ts_us=RTS)
    assert [(t.trade_id, t.amount, t.price, t.side) for t in trades] == [
        ("1", "0.10000000000000001", "7245.3", Side.SELL),
        ("2", "3", "7245", Side.BUY),
    ]
