"""The pure core's floor beside the connector: the simulator's frames for a channel mix,
decoded and Avro-encoded in this one process with no I/O, no event loop and no Kafka. Run
paced as the simulator sends them (a tick's frames at once, then asleep until the next
tick) at each rate, then back to back. What the same instructions cost on this machine at
each duty cycle (bench/run.py runs it on the connector's core and prints it as a reason).

    python bench/corefloor.py MIX RATE[,RATE...] BOOK_DEPTH SECONDS

Prints one JSON object: per rate, µs of CPU per frame paced (``paced_us``) and the median
µs the first frame of a tick took against the rest (``first_us``, ``rest_us``); and
``back_to_back_us``, the same frames with no pause.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connector.encoding.avro import RecordEncoder, load_schemas, single_object_encoder
from connector.events import MarketEvent
from connector.exchanges.bitstamp.decoder import BitstampDecoder
from connector.exchanges.bitstamp.simulator import TICK_S

POOL = 3000  # distinct frames, cycled


class Core:
    """What the connector does to a frame before the Kafka sink: decode, then encode each
    event with its schema."""

    def __init__(self) -> None:
        self.decoder = BitstampDecoder("corefloor")
        self.schemas = load_schemas()
        self.encoders: dict[str, RecordEncoder] = {}
        self.events = 0

    def __call__(self, frame: bytes) -> None:
        for event in self.decoder.feed(frame, time.time_ns() // 1000):
            if isinstance(event, MarketEvent):
                name = type(event).SCHEMA
                encoder = self.encoders.get(name)
                if encoder is None:
                    encoder = self.encoders[name] = single_object_encoder(self.schemas[name])
                encoder.encode(event)
                self.events += 1


def paced(core: Core, pool: list[bytes], rate: float, seconds: float) -> dict[str, float]:
    per_tick = max(1, round(rate * TICK_S))
    first: list[float] = []
    rest: list[float] = []
    done = i = 0
    c0 = time.process_time()
    start = next_tick = time.monotonic()
    while time.monotonic() - start < seconds:
        for k in range(per_tick):
            t = time.perf_counter()
            core(pool[i])
            (rest if k else first).append(time.perf_counter() - t)
            i = (i + 1) % len(pool)
        done += per_tick
        next_tick += TICK_S
        wait = next_tick - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    cpu = time.process_time() - c0
    return {
        "paced_us": round(1e6 * cpu / done, 1),
        "first_us": round(1e6 * statistics.median(first), 1),
        "rest_us": round(1e6 * statistics.median(rest), 1) if rest else 0.0,
    }


def back_to_back(core: Core, pool: list[bytes], rounds: int = 3) -> float:
    c0 = time.process_time()
    for _ in range(rounds):
        for frame in pool:
            core(frame)
    return round(1e6 * (time.process_time() - c0) / (rounds * len(pool)), 1)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference import frames
    from run import MARKETS, USER_MIXES

    mix, rates, depth, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
    # The connector's stream: the subscriptions it makes for the mix, interleaved.
    pool = [frame for _, _, frame in frames(USER_MIXES[mix], MARKETS, depth, POOL)]
    random.Random(1).shuffle(pool)
    core = Core()
    back_to_back(core, pool, 1)  # warm: every schema's encoder made, the interpreter's caches
    out: dict[str, Any] = {
        "rates": {r: paced(core, pool, float(r), seconds) for r in rates.split(",")},
        "back_to_back_us": back_to_back(core, pool),
    }
    if not core.events:
        print("the decoder made no events of the simulator's frames", file=sys.stderr)
        return 1
    print(orjson.dumps(out).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
