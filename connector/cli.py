"""Command line: ``connector run | tail | book | demo | check-config | simulate``.

Exit status: 0 success, 1 a runtime failure at start (broker, schemas), 2 invalid
settings or arguments, 3 ``tail`` or ``book`` met undecodable values, 4 ``book --once``
saw no full book.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import orjson

from connector import __version__
from connector.errors import BrokerStartError, ConfigError, DeliveryError, SchemaError
from connector.exchanges.registry import EXCHANGES
from connector.logs import setup_logging
from connector.settings import Settings, effective, load_settings, unknown_env_vars

log = logging.getLogger("connector")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="connector",
        description="Exchange WebSocket → Avro → Kafka ingest connector.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", type=Path, help="YAML settings file (the environment wins)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="subscribe and publish to Kafka until SIGINT/SIGTERM")
    t = sub.add_parser("tail", help="print decoded events of topics matching a regex")
    t.add_argument("pattern", metavar="TOPIC_PATTERN", help=r"e.g. 'bitstamp\..*\.btcusd'")
    t.add_argument("--from-beginning", action="store_true")
    t.add_argument("--max", type=int, default=0, help="stop after N messages")
    t.add_argument(
        "--idle-timeout",
        type=float,
        default=0.0,
        help="stop after this many seconds without messages (0: never)",
    )
    b = sub.add_parser(
        "book", help="rebuild a book topic by the consumer contract and print its top"
    )
    b.add_argument("topic", metavar="TOPIC", help="e.g. bitstamp.diff_order_book.btcusd")
    b.add_argument("--depth", type=int, default=10, help="levels a side (with --once)")
    b.add_argument(
        "--once",
        action="store_true",
        help="read to the end, print the top levels as JSON and exit (else: follow)",
    )
    b.add_argument(
        "--idle-timeout",
        type=float,
        default=3.0,
        help="with --once: the end is this many seconds without messages",
    )
    d = sub.add_parser(
        "demo",
        help="offline: a simulated Bitstamp, the connector on the embedded broker, and a "
        "tail of its trades (Ctrl-C stops all)",
    )
    d.add_argument("--markets", default="btcusd,ethusd")
    d.add_argument("--rate", type=float, default=2.0, help="events per second per subscription")
    d.add_argument("--max", type=int, default=0, help="stop after printing N events (0: never)")
    sub.add_parser("check-config", help="print the effective settings (secrets hidden)")
    s = sub.add_parser("simulate", help=f"run a local exchange server ({', '.join(EXCHANGES)})")
    s.add_argument("--exchange", choices=tuple(EXCHANGES), default="bitstamp")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument(
        "--markets",
        default="btcusd,ethusd,btcusd-perp,ethusd-perp,xrpusd,solusd",
        help="markets the server knows (others are acknowledged, then silent)",
    )
    s.add_argument("--rate", type=float, default=2.0, help="events per second per subscription")
    s.add_argument(
        "--events", type=int, default=0, help="stop each subscription after N events (0: never)"
    )
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--book-depth", type=int, default=100)
    s.add_argument("--tls-cert", help="serve wss:// and https:// with this certificate (PEM)")
    s.add_argument("--tls-key", help="... and this private key (PEM)")
    s.add_argument(
        "--mix",
        default="",
        help="relative rate per channel, e.g. live_orders=8,order_book=2 (default 1)",
    )
    return p


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    setup_logging(settings.log_level, settings.log_format)
    for name in unknown_env_vars():
        log.warning("environment variable %s is not a setting (typo?); ignored", name)
    return settings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            settings = _settings(args)
            sys.stdout.write(
                orjson.dumps(effective(settings), option=orjson.OPT_INDENT_2).decode() + "\n"
            )
            return 0
        if args.command == "simulate":
            setup_logging("INFO")
            return asyncio.run(_simulate(args))
        if args.command == "demo":
            return asyncio.run(_demo(args))
        if args.command == "tail":
            from connector.kafka.tail import tail

            settings = _settings(args)
            return asyncio.run(
                tail(
                    settings,
                    args.pattern,
                    from_beginning=args.from_beginning,
                    max_messages=args.max,
                    idle_timeout_s=args.idle_timeout,
                )
            )
        if args.command == "book":
            from connector.kafka.tail import book

            settings = _settings(args)
            return asyncio.run(
                book(
                    settings,
                    args.topic,
                    depth=args.depth,
                    once=args.once,
                    idle_timeout_s=args.idle_timeout,
                )
            )
        settings = _settings(args)
        if settings.workers > 1:
            from connector.group.workers import run_workers

            return asyncio.run(run_workers(settings, args.config))
        from connector.app import run

        return asyncio.run(run(settings))
    except ConfigError as exc:
        print(f"connector: {exc}", file=sys.stderr)
        return 2
    except (BrokerStartError, SchemaError, DeliveryError) as exc:
        print(f"connector: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _simulate(args: argparse.Namespace) -> int:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    markets = tuple(m.strip() for m in args.markets.split(",") if m.strip())
    weights = {}
    for item in filter(None, (i.strip() for i in args.mix.split(","))):
        channel, _, weight = item.partition("=")
        try:
            weights[channel] = float(weight)
        except ValueError:
            raise ConfigError(f"--mix {item!r}: expected channel=number") from None
    server = EXCHANGES[args.exchange].new_simulator(
        host=args.host,
        port=args.port,
        rate=args.rate,
        seed=args.seed,
        events=args.events,
        markets=markets,
        book_depth=args.book_depth,
        weights=weights,
    )
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        server.use_tls(args.tls_cert, args.tls_key)
    await server.serve_forever(stop)
    return 0


async def _demo(args: argparse.Namespace) -> int:
    """The stack in one process: simulator → connector → embedded broker → tail."""
    import signal

    from connector.app import run
    from connector.kafka.embedded import EmbeddedBroker, free_port, port_or_free
    from connector.kafka.tail import tail

    base = _settings(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    markets = tuple(m.strip() for m in args.markets.split(",") if m.strip())
    sim = EXCHANGES["bitstamp"].new_simulator(
        host="127.0.0.1", port=free_port(), rate=args.rate, seed=1, events=0, markets=markets
    )
    broker = EmbeddedBroker(port_or_free(base.embedded_broker_port))
    await sim.start()
    try:
        bootstrap = await broker.astart()
        settings = load_settings(
            args.config,
            kafka_bootstrap_servers=bootstrap,
            kafka_enable_idempotence=False,  # Tansu has no InitProducerId
            bitstamp_ws_url=sim.ws_url,
            bitstamp_rest_url=sim.rest_url,
            markets=",".join(markets),
            exchanges="bitstamp",
        )
        pattern = r"bitstamp\.live_trades\..*"
        log.warning(
            "demo: simulated Bitstamp on %s, broker at %s; printing %s as JSON lines "
            "(Ctrl-C stops all). In another shell: KAFKA_BOOTSTRAP_SERVERS=%s connector "
            "tail 'bitstamp\\..*' --from-beginning",
            sim.ws_url,
            bootstrap,
            pattern,
            bootstrap,
        )
        connector = asyncio.create_task(run(settings, stop))  # SIGINT/SIGTERM set ``stop``
        await asyncio.sleep(2)  # topics created, first trades on their way
        reader = asyncio.create_task(
            tail(settings, pattern, from_beginning=True, max_messages=args.max)
        )
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({connector, reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()  # --max reached, or the connector ended: stop the rest too
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: None)  # a second Ctrl-C waits for the end
        reader.cancel()
        waiter.cancel()
        results = await asyncio.gather(connector, reader, waiter, return_exceptions=True)
        if isinstance(results[0], BaseException) and not isinstance(
            results[0], asyncio.CancelledError
        ):
            raise results[0]
        return results[0] if isinstance(results[0], int) else 0
    finally:
        await sim.stop()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
