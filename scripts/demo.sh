#!/usr/bin/env bash
# `make demo`: a simulated B3 market through every stage, live.
#
# 1. A past session's history (simulated, with a planted order-flow signal) is stored, its
#    feature vectors backfilled, and a model trained on it by `qt train` (walk-forward, beside a
#    majority-class baseline) -- unless DEMO_MODEL names a bundle.
# 2. `qt up` runs feed -> bridge -> features -> predict for DEMO_SECONDS (default 60) on a
#    simulated market stamped with the wall clock, so everything is live: one `qt monitor --once`
#    frame mid-run, then a `qt query` of the last minute of signals.
#
# Everything runs against a valkey-server of the demo's own (removed at the end) on free ports,
# so nothing else on this machine is touched; QT_VALKEY_URL points it at another server instead.
set -euo pipefail

seconds=${DEMO_SECONDS:-60}
symbols=(--symbol WDOQ25 --symbol WINQ25)
history_day=2025-08-04  # a Monday: the history the model is trained on
work=$(mktemp -d)
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [[ -z "${QT_VALKEY_URL:-}" ]]; then
    port=$(free_port)
    valkey-server --port "$port" --bind 127.0.0.1 --dir "$work" --save '' --appendonly no \
        >"$work/valkey.log" 2>&1 &
    for _ in $(seq 50); do valkey-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    base="valkey://127.0.0.1:$port"
else
    base=${QT_VALKEY_URL%/*}
    [[ "$base" == *"://" ]] && base=$QT_VALKEY_URL
fi
live="$base/0"
history="$base/1"
export QT_VALKEY_URL=$live
for name in TICKS BOOK HISTORY REPLAY SIGNALS; do
    export "QT_${name}_ENDPOINT=tcp://127.0.0.1:$(free_port)"
done

say "qt $(qt --version | cut -d' ' -f2): simulated WDOQ25 + WINQ25, every stage live for ${seconds}s"

model=${DEMO_MODEL:-}
if [[ -z "$model" ]]; then
    say "history: 90 minutes of the $history_day session (planted signal --alpha 0.3), stored by qt bridge"
    qt feed --sim "${symbols[@]}" --seed 7 --alpha 0.3 --start "$history_day" --duration 90m \
        --rate 0 --out - 2>/dev/null | qt --valkey "$history" bridge --in - --json >"$work/history.json"
    python3 -c 'import json,sys; print("stored {:,} events".format(json.load(open(sys.argv[1]))["written"]))' "$work/history.json" >&2

    say "qt features --from --to: the qt set's vectors over that history, into stream:features:{SYM}"
    qt --valkey "$history" features --from "$history_day" --to 2025-08-05 \
        --symbol WDOQ25 --every 250ms --out "$history"

    say "qt train: gradient-boosted trees, 60 s horizon, walk-forward validation beside a baseline"
    model="$work/wdo.qtm"
    qt --valkey "$history" train --symbol WDOQ25 --from "$history_day" --to 2025-08-05 \
        --set qt --horizon 60s --model hgb --output "$model"
fi

say "qt up --sim --model: feed -> bridge -> features -> predict, as supervised processes"
qt up --sim "${symbols[@]}" --seed 11 --alpha 0.3 --model "$model" --duration "${seconds}s" \
    --json >"$work/up.json" 2>"$work/up.log" &
up=$!

sleep $(( seconds > 20 ? seconds - 10 : seconds / 2 ))
say "qt monitor --once (mid-run)"
COLUMNS=${COLUMNS:-140} qt monitor --once || true

if ! wait "$up"; then
    echo "qt up failed:" >&2
    cat "$work/up.log" >&2
    exit 1
fi
python3 - "$work/up.json" >&2 <<'EOF'
import json, sys
summary = json.load(open(sys.argv[1]))
for name, stage in summary["stages"].items():
    totals = stage.get("totals") or {}
    keys = ("events", "written", "vectors", "predictions", "signals")
    shown = ", ".join(f"{k} {totals[k]:,}" for k in keys if isinstance(totals.get(k), int))
    print(f"  {name:9} exit {stage['exit_code']}, restarts {stage['restarts']}: {shown}")
EOF

say "qt query: the last minute of WDOQ25 signals (simulated market; not trading advice)"
qt query --symbol WDOQ25 --kind signals --from -1m --to now --format csv >"$work/signals.csv"
{ head -n 1 "$work/signals.csv"; tail -n 8 "$work/signals.csv"; } | cut -d, -f1,5-9
