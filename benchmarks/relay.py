"""The floor of the end-to-end benchmark: a stage that only decodes and re-encodes.

`python -m benchmarks.relay --in tcp://… [--in tcp://…] --out tcp://… --topic T [--trades]`

Subscribes to its inputs, decodes every message (JSON), and publishes, under topic T, each one
(with `--trades`, the feed's trades only) re-encoded with the identity a derived stage gives
(`origin` = `features.<session>`, `origin_seq` = seq of the tick, kept by a second relay) and
its own `ts_init`. Two of them in place of `qt features` and `qt predict` carry the same
feed's trades along the same hops as the pipeline, with none of the stages' work: what this
host allows two Python processes on the signal path (`bench_pipeline`, row "relays").
"""

from __future__ import annotations

import argparse
import signal
import time

import orjson
import zmq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="inputs", action="append", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--trades", action="store_true", help="forward the feed's trades only")
    args = parser.parse_args()
    stopping = []
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(args.out)
    poller = zmq.Poller()
    subs = []
    for uri in args.inputs:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(uri)
        poller.register(sub, zmq.POLLIN)
        subs.append(sub)
    topic = args.topic.encode()
    trades = args.trades
    while not stopping:
        if not poller.poll(200):
            continue
        for sub in subs:  # what is queued on each, as a stage reads a batch
            while True:
                try:
                    frames = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                m = orjson.loads(frames[-1])
                if trades:
                    if m.get("type") != "tick":
                        continue
                    m["origin"], m["origin_seq"] = f"features.{m['session']}", m["seq"]
                m["ts_init"] = time.time_ns()
                pub.send_multipart([topic, orjson.dumps(m)])
    pub.close(linger=0)
    for sub in subs:
        sub.close(linger=0)
    ctx.term()
    print("{}")


if __name__ == "__main__":
    main()
