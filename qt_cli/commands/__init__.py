"""One module per subcommand: parse options, call core, render.

COMMANDS lists (name, module, one-line summary) in the order `qt --help` shows them. Each module
exposes `register(app, name=, summary=)` and imports its heavy dependencies inside the command,
so `qt --help` stays instant.
"""

COMMANDS: list[tuple[str, str, str]] = [
    ("valkey", "valkey", "Start, stop and inspect the managed local Valkey server."),
    ("keys", "keys", "Generate ZeroMQ CURVE key pairs for endpoints that cross hosts."),
    ("config", "config_cmd", "Show the resolved settings (flags > QT_* env > .env > defaults)."),
    (
        "up",
        "up",
        "The whole pipeline in one command: feed, bridge, features, predict, supervised.",
    ),
    ("feed", "feed", "Capture DLL, replay or simulated market data; journal and publish it."),
    ("bridge", "bridge", "Store ZeroMQ events in Valkey streams exactly once, with candles."),
    ("query", "query", "Time travel: stored ticks, book, candles, features… by range or instant."),
    (
        "features",
        "features",
        "Feature vectors live (--in) or over stored history (--from/--to); the catalog.",
    ),
    ("train", "train", "Train a direction model from stored features, validated walk-forward."),
    ("predict", "predict", "Score stored history with a model: signals and a simulated backtest."),
    ("models", "models", "List, show, verify and import model bundles (.qtm)."),
    ("cleanup", "cleanup", "Trim old stream entries by age or count, per kind, safely."),
    (
        "monitor",
        "monitor",
        "Live dashboard of the pipeline: prices, volume, lags, stages, Valkey health.",
    ),
]
