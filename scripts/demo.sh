#!/usr/bin/env bash
# `make demo`: the main job on the embedded default. A simulated B3 market runs through
# feed -> bridge -> Valkey, then qt travels back in time over what was stored and shows one
# frame of the dashboard. Uses QT_VALKEY_URL when set; otherwise localhost:6379 or the managed
# server (started on the spot; `qt valkey stop` stops it, the data stays).
set -euo pipefail

seconds=${DEMO_SECONDS:-15}
rate=${DEMO_RATE:-3000}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

say "qt $(qt --version | cut -d' ' -f2): simulated WDOQ25 + WINQ25 at ${rate} events/s for ${seconds}s"
say "qt bridge (ZeroMQ -> Valkey, exactly once, 1m/5m candles, history chunks)"
qt bridge --timeframe 1m,5m --json >"$work/bridge.json" 2>"$work/bridge.err" &
bridge=$!
sleep 1  # let the bridge subscribe; anything it misses is recovered from the feed's journal anyway

say "qt feed --sim (journal + ZeroMQ PUB on :5555/:5556, replay endpoint :5559)"
qt feed --sim --symbol WDOQ25 --symbol WINQ25 --seed 7 --rate "$rate" --duration "${seconds}s" --linger 3s --json >"$work/feed.json"
python3 -c 'import json,sys; t=json.load(open(sys.argv[1])); print("feed published", t.get("published", t))' "$work/feed.json" >&2 || cat "$work/feed.json"

sleep 2
if ! kill -INT "$bridge" 2>/dev/null; then
    echo "the bridge stopped early:" >&2
    cat "$work/bridge.err" >&2
    exit 1
fi
wait "$bridge" || true
say "bridge totals"
cat "$work/bridge.json"
grep -v '^$' "$work/bridge.err" >&2 || true

say "qt query: the last 5 one-minute candles of WDOQ25 (time travel over what was just stored)"
qt query --symbol WDOQ25 --kind candles:1m --from -7d --to now --format csv | tail -n 5

say "qt query --as-of: the last trade of each symbol"
qt query --kind ticks --as-of now --format jsonl

say "qt monitor --once"
COLUMNS=${COLUMNS:-140} qt monitor --once
