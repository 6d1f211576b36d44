"""The ctypes binding for ProfitDLL against the fake DLL (tests/fakedll), in this process.

The fake is built with the system C compiler once per session. Its values are mirrored here:
every assertion below compares decoded events with what fake_profitdll.c emits.
"""

from __future__ import annotations

import ctypes
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from qt_cli.core import events as ev
from qt_cli.core.errors import DllError, UsageError
from qt_cli.core.sources import profitdll as pd
from qt_cli.core.sources.profitdll import ProfitDllSource
from tests.fakedll import expected as fx
from tests.fakedll.build import build_fake, build_missing_export
from tests.fakedll.expected import SYMBOL, session_ns

PASSWORD = "pw-Do-Not-Print-7f3a"


@pytest.fixture(scope="session")
def fake_dll(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake ProfitDLL shared library, compiled once per session."""
    return build_fake(tmp_path_factory.mktemp("fakedll"))


@pytest.fixture(scope="session")
def hooks(fake_dll: Path) -> Any:
    """The fake's Fake_* test hooks (the same loaded library the binding uses)."""
    lib = ctypes.CDLL(str(fake_dll))
    lib.Fake_CallCount.argtypes = [ctypes.c_char_p]
    lib.Fake_WaitIdle.argtypes = [ctypes.c_int]
    return lib


@pytest.fixture
def make_source(fake_dll: Path) -> Iterator[Callable[..., ProfitDllSource]]:
    """Opens ProfitDllSource objects on the fake; every one is closed at teardown."""
    opened: list[ProfitDllSource] = []

    def make(**kwargs: Any) -> ProfitDllSource:
        args: dict[str, Any] = {
            "path": fake_dll,
            "key": "activation-key",
            "user": "trader@example.com",
            "password": PASSWORD,
            "symbols": [(SYMBOL, "F")],
        }
        args.update(kwargs)
        source = ProfitDllSource(**args)
        opened.append(source)
        source.open()
        return source

    yield make
    for source in opened:
        source.close()


def read_until(
    source: ProfitDllSource, done: Callable[[list[ev.Event]], bool], timeout: float = 10.0
) -> list[ev.Event]:
    """Read events until `done(events)`, then drain what is still queued."""
    collected: list[ev.Event] = []
    deadline = time.monotonic() + timeout
    while not done(collected):
        assert time.monotonic() < deadline, f"gave up waiting; got {collected!r}"
        collected += source.read(0.05)
    while batch := source.read(0.05):
        collected += batch
    return collected


def read_until_error(
    source: ProfitDllSource, into: list[ev.Event], timeout: float = 10.0
) -> DllError:
    """Read until `read` raises DllError (returned); events read before go to `into`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            into += source.read(0.05)
        except DllError as exc:
            return exc
    raise AssertionError(f"no DllError within {timeout}s; got {into!r}")


def offer_book_finished(events: list[ev.Event]) -> bool:
    return any(
        isinstance(e, ev.BookUpdate) and e.book == "offer" and e.action == "delete_from"
        for e in events
    )


def of_type(events: list[ev.Event], kind: type[ev.Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


# --- layout -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "structure"),
    [
        (1, pd.TAssetIDRec),
        (2, pd.TConnectorAssetIdentifier),
        (3, pd.TConnectorTrade),
        (4, pd.SystemTime),
    ],
)
def test_struct_sizes_match_the_c_definitions(hooks: Any, kind: int, structure: Any) -> None:
    assert ctypes.sizeof(structure) == hooks.Fake_SizeOf(kind)
    for index, (name, *_rest) in enumerate(structure._fields_):
        if kind == 4:
            break
        assert getattr(structure, name).offset == hooks.Fake_OffsetOf(kind, index), name


def test_connector_trade_matches_the_reference_offsets() -> None:
    # profitdll.md §2, Win64 offsets (the same on Linux x86-64)
    offsets = {
        name: getattr(pd.TConnectorTrade, name).offset for name, _ in pd.TConnectorTrade._fields_
    }
    assert offsets == {
        "Version": 0,
        "TradeDate": 2,
        "TradeNumber": 20,
        "Price": 24,
        "Quantity": 32,
        "Volume": 40,
        "BuyAgent": 48,
        "SellAgent": 52,
        "TradeType": 56,
    }
    assert ctypes.sizeof(pd.TConnectorTrade) == 64


# --- a whole session ------------------------------------------------------------------------------


def test_callbacks_arrive_on_the_dlls_own_thread(
    make_source: Callable[..., ProfitDllSource],
) -> None:
    source = make_source()
    read_until(source, offer_book_finished)
    assert source.callback_threads, "no callback ran"
    assert threading.get_ident() not in source.callback_threads
    assert len(source.callback_threads) == 1  # one ConnectorThread, as in the real DLL


def test_login_sequence_becomes_states_in_words_then_subscribes(
    make_source: Callable[..., ProfitDllSource], hooks: Any
) -> None:
    subscribed_before = hooks.Fake_CallCount(b"SubscribeTicker")
    source = make_source()
    events = read_until(source, offer_book_finished)
    states = [(s.source, s.code, s.text) for s in of_type(events, ev.State) if s.symbol == "*"]
    assert states == fx.CONNECTION_STATES
    texts = [s.text for s in of_type(events, ev.State)]
    # subscribing happens only after MARKET_CONNECTED, and the ticker then reports it is open
    assert texts.index("SUBSCRIBED") > texts.index("MARKET_CONNECTED")
    opened = [s for s in of_type(events, ev.State) if s.source == "ticker"]
    assert [(s.symbol, s.code, s.text, s.ts_event) for s in opened] == [
        (SYMBOL, 0, "OPENED", session_ns(0))
    ]
    assert hooks.Fake_CallCount(b"SubscribeTicker") == subscribed_before + 1


def test_trades_are_decoded_with_every_field(make_source: Callable[..., ProfitDllSource]) -> None:
    source = make_source()
    before = time.time_ns()
    trades = of_type(read_until(source, offer_book_finished), ev.Trade)
    assert [tuple(getattr(t, name) for name in fx.TRADE_FIELDS) for t in trades] == fx.KNOWN_TRADES
    assert all(t.symbol == SYMBOL and not t.history for t in trades)
    # one receive clock for every callback, in callback order
    stamps = [t.ts_init for t in trades]
    assert stamps == sorted(stamps) and stamps[0] >= before
    assert source.counters["translate_failures"] == 0
    assert source.stats.rejected == 0


def test_generated_trades_follow_the_fixed_ones(
    make_source: Callable[..., ProfitDllSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PROFIT_TRADES", "500")
    source = make_source()
    trades = of_type(read_until(source, offer_book_finished), ev.Trade)
    generated = [(t.trade_id, t.ts_event, t.price, t.quantity, t.aggressor) for t in trades[6:]]
    assert generated == [fx.generated_trade(i) for i in range(500)]


def test_top_of_book_and_daily(make_source: Callable[..., ProfitDllSource]) -> None:
    source = make_source()
    events = read_until(source, offer_book_finished)
    tops = [(t.bid_price, t.bid_qty, t.ask_price, t.ask_qty) for t in of_type(events, ev.TopOfBook)]
    # the first tiny book side arrives alone: the other side is NaN until it is seen
    assert tops[0][:2] == (5500.0, 12) and math.isnan(tops[0][2]) and tops[0][3] == 0
    assert tops[1:] == [fx.TOP_OF_BOOK_FINAL]
    assert source.top_of_book(SYMBOL) == fx.TOP_OF_BOOK_FINAL
    (daily,) = of_type(events, ev.Daily)
    assert daily.symbol == SYMBOL
    assert {name: getattr(daily, name) for name in fx.DAILY} == fx.DAILY


def test_price_book_full_then_add_edit_delete_delete_from(
    make_source: Callable[..., ProfitDllSource],
) -> None:
    source = make_source()
    events = read_until(source, offer_book_finished)
    book = [e for e in of_type(events, ev.BookUpdate) if e.book == "price"]
    assert {e.side: e.levels for e in book if e.action == "full"} == fx.PRICE_BOOK_FULL
    updates = [(e.side, e.action, e.position, e.price, e.quantity, e.count) for e in book[2:]]
    assert updates == fx.PRICE_BOOK_UPDATES
    assert source.depth(SYMBOL, "bid") == fx.PRICE_BOOK_AFTER["bid"]
    # delete-from at position 1 removed positions 1 and 0: the two best asks
    assert source.depth(SYMBOL, "ask") == fx.PRICE_BOOK_AFTER["ask"]
    assert source.counters["book_position_errors"] == 0


def test_offer_book_full_then_updates(make_source: Callable[..., ProfitDllSource]) -> None:
    source = make_source()
    events = read_until(source, offer_book_finished)
    book = [e for e in of_type(events, ev.BookUpdate) if e.book == "offer"]
    assert {e.side: e.levels for e in book if e.action == "full"} == fx.OFFER_BOOK_FULL
    updates = [
        (e.side, e.action, e.position, e.price, e.quantity, e.agent, e.order_id) for e in book[2:]
    ]
    assert updates == fx.OFFER_BOOK_UPDATES
    # the add carries the offer's own date; the others have none and use the receive time
    assert [e.ts_event for e in book[2:]] == [fx.OFFER_ADD_TS] + [e.ts_init for e in book[3:]]
    assert source.depth(SYMBOL, "bid", book="offer") == fx.OFFER_BOOK_AFTER["bid"]
    assert source.depth(SYMBOL, "ask", book="offer") == fx.OFFER_BOOK_AFTER["ask"]


def test_every_event_survives_the_wire(make_source: Callable[..., ProfitDllSource]) -> None:
    source = make_source()
    events = read_until(source, offer_book_finished)
    assert {type(e) for e in events} == {ev.State, ev.Trade, ev.TopOfBook, ev.Daily, ev.BookUpdate}
    for event in events:
        back = ev.decode(event.to_wire())
        assert back.to_dict() == event.to_dict() or _nan_equal(back.to_dict(), event.to_dict())


def _nan_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def norm(value: Any) -> Any:
        return "nan" if isinstance(value, float) and math.isnan(value) else value

    return {k: norm(v) for k, v in a.items()} == {k: norm(v) for k, v in b.items()}


def test_book_arrays_are_freed_and_trades_translated_in_the_callback(
    make_source: Callable[..., ProfitDllSource], hooks: Any
) -> None:
    source = make_source()
    read_until(source, offer_book_finished)
    assert hooks.Fake_WaitIdle(5000) == 1
    assert hooks.Fake_OutstandingArrays() == 0  # all four full-book arrays went to FreePointer
    assert hooks.Fake_TranslateFailures() == 0
    assert source.counters["callback_failures"] == 0


class FailingDailyQueue:
    """A queue whose put fails for daily records: stands in for any error inside a callback."""

    def __init__(self) -> None:
        self.inner: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put_nowait(self, item: Any) -> None:
        if item[0] == pd._DAILY:
            raise RuntimeError("boom")
        self.inner.put_nowait(item)

    def get(self, timeout: float) -> Any:
        return self.inner.get(timeout=timeout)

    def get_nowait(self) -> Any:
        return self.inner.get_nowait()

    def qsize(self) -> int:
        return self.inner.qsize()


def test_a_failing_callback_is_counted_and_the_rest_flows(fake_dll: Path) -> None:
    source = ProfitDllSource(fake_dll, "k", "u", "p", [SYMBOL])
    source._queue = FailingDailyQueue()  # type: ignore[assignment]
    source.open()
    try:
        events = read_until(source, offer_book_finished)
    finally:
        source.close()
    assert not of_type(events, ev.Daily)
    assert len(of_type(events, ev.Trade)) == len(fx.KNOWN_TRADES)
    assert source.counters["callback_failures"] == 1
    assert source.stats.problems == ["callback failed: daily: RuntimeError('boom')"]


# --- history -------------------------------------------------------------------------------------


def test_history_trades_drop_the_zero_trade_and_finish_on_last_packet(
    make_source: Callable[..., ProfitDllSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PROFIT_HISTORY", "7")
    source = make_source(history_from="2025-08-08T10:00:00", history_to="2025-08-08T17:00:00")
    events = read_until(
        source, lambda es: any(getattr(e, "text", "") == "HISTORY_DONE" for e in es)
    )
    history = [t for t in of_type(events, ev.Trade) if t.history]
    start = session_ns(3_600_000)
    assert [(t.trade_id, t.ts_event, t.price, t.quantity) for t in history] == [
        fx.history_trade(i, start) for i in range(7)
    ]
    assert all(t.to_dict()["history"] is True for t in history)
    assert source.counters["zero_history_trades"] == 1
    assert source.stats.rejected == 1
    progress = [s.code for s in of_type(events, ev.State) if s.text == "HISTORY_PROGRESS"]
    assert progress == list(range(1, 101))
    requested = [s.text for s in of_type(events, ev.State) if s.text.startswith("HISTORY_REQ")]
    assert requested == ["HISTORY_REQUESTED 08/08/2025 10:00:00 .. 08/08/2025 17:00:00"]
    (done,) = [s for s in of_type(events, ev.State) if s.text == "HISTORY_DONE"]
    assert done.code == 7


def test_history_is_requested_one_day_at_a_time(
    make_source: Callable[..., ProfitDllSource], hooks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PROFIT_HISTORY", "3")
    calls_before = hooks.Fake_CallCount(b"GetHistoryTrades")
    source = make_source(history_from="06/08/2025 09:00:00", history_to="08/08/2025 12:00:00")
    events = read_until(
        source, lambda es: sum(getattr(e, "text", "") == "HISTORY_DONE" for e in es) == 3
    )
    requested = [s.text for s in of_type(events, ev.State) if s.text.startswith("HISTORY_REQ")]
    assert requested == [
        "HISTORY_REQUESTED 06/08/2025 09:00:00 .. 06/08/2025 23:59:59",
        "HISTORY_REQUESTED 07/08/2025 00:00:00 .. 07/08/2025 23:59:59",
        "HISTORY_REQUESTED 08/08/2025 00:00:00 .. 08/08/2025 12:00:00",
    ]
    assert hooks.Fake_CallCount(b"GetHistoryTrades") == calls_before + 3
    assert len([t for t in of_type(events, ev.Trade) if t.history]) == 9


# --- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "text", "hint"),
    [
        ("login_fail", "LOGIN_INVALID_PASS", "check PROFIT_PASSWORD"),
        ("activation_fail", "CONNECTION_ACTIVATE_INVALID", "check PROFIT_ACTIVATION_KEY"),
    ],
)
def test_login_failure_is_a_state_then_a_clear_dll_error(
    make_source: Callable[..., ProfitDllSource],
    monkeypatch: pytest.MonkeyPatch,
    scenario: str,
    text: str,
    hint: str,
) -> None:
    monkeypatch.setenv("FAKE_PROFIT_SCENARIO", scenario)
    source = make_source()
    events: list[ev.Event] = []
    message = str(read_until_error(source, events))
    assert text in message and hint in message
    assert PASSWORD not in message and "trader@example.com" not in message
    assert [s.text for s in of_type(events, ev.State)][-1] == text
    with pytest.raises(DllError):  # it stays failed
        source.read(0.01)


def test_no_market_connection_times_out_with_the_last_state(
    make_source: Callable[..., ProfitDllSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PROFIT_SCENARIO", "no_market")
    source = make_source(login_timeout_s=0.3)
    error = read_until_error(source, [])
    assert "no market-data connection from ProfitDLL after 0.3 s" in str(error)
    assert "last state: MARKET_WAITING (2,2)" in str(error)


def test_empty_credentials_are_refused_by_the_dll(
    make_source: Callable[..., ProfitDllSource],
) -> None:
    with pytest.raises(DllError, match=r"NL_INVALID_ARGS .*PROFIT_PASSWORD are set"):
        make_source(password="")


def test_unknown_exchange_names_the_return_code(
    make_source: Callable[..., ProfitDllSource],
) -> None:
    source = make_source(symbols=[(SYMBOL, "X")])
    with pytest.raises(DllError, match=r"SubscribeTicker\(WDOQ25, X\) failed: NL_EXCHANGE_UNKNOWN"):
        read_until(source, lambda es: False, timeout=5)


def test_invalid_ticker_becomes_a_state_and_a_rejection(
    make_source: Callable[..., ProfitDllSource],
) -> None:
    source = make_source(symbols=[("INVALID9", "F"), (SYMBOL, "F")])
    events = read_until(source, offer_book_finished)
    invalid = [s for s in of_type(events, ev.State) if s.text == "INVALID_TICKER"]
    assert [(s.symbol, s.code) for s in invalid] == [("INVALID9", pd.NL_INVALID_TICKER)]
    assert source.stats.rejected == 1
    assert "INVALID9 (F)" in source.stats.problems[0]
    assert {t.symbol for t in of_type(events, ev.Trade)} == {SYMBOL}


def test_backpressure_state_is_counted_and_does_not_resubscribe(
    make_source: Callable[..., ProfitDllSource], hooks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PROFIT_SCENARIO", "backpressure")
    before = hooks.Fake_CallCount(b"SubscribeTicker")
    source = make_source()
    events = read_until(source, offer_book_finished)
    events += read_until(source, lambda es: True)
    texts = [s.text for s in of_type(events, ev.State) if s.source == "market_data"]
    assert texts[-3:] == ["MARKET_CONNECTED", "MARKET_PARTIAL_CONNECTED", "MARKET_CONNECTED"]
    assert source.counters["backpressure_states"] == 1
    assert hooks.Fake_CallCount(b"SubscribeTicker") == before + 1


def test_bad_path_is_a_dll_error(tmp_path: Path) -> None:
    with pytest.raises(DllError, match="ProfitDLL not found: .*nope.dll does not exist"):
        pd.load_library(tmp_path / "nope.dll")


def test_a_file_that_is_not_a_library_is_a_dll_error(tmp_path: Path) -> None:
    junk = tmp_path / "ProfitDLL64.dll"
    junk.write_text("not a library")
    with pytest.raises(
        DllError, match="cannot load .*ProfitDLL64.dll: it is not a loadable library"
    ):
        ProfitDllSource(junk, "k", "u", "p", [SYMBOL]).open()


def test_a_library_missing_an_export_is_named(tmp_path_factory: pytest.TempPathFactory) -> None:
    library = build_missing_export(tmp_path_factory.mktemp("fakedll-missing"), "SetTradeCallbackV2")
    with pytest.raises(DllError, match=r"does not export SetTradeCallbackV2\. "):
        ProfitDllSource(library, "k", "u", "p", [SYMBOL]).open()


def test_finalize_leaves_no_live_callbacks_and_a_restart_works(
    make_source: Callable[..., ProfitDllSource], hooks: Any
) -> None:
    finalized_before = hooks.Fake_CallCount(b"DLLFinalize")
    source = make_source()
    read_until(source, offer_book_finished)
    assert hooks.Fake_LiveCallbacks() > 0 and hooks.Fake_ThreadRunning() == 1
    source.close()
    assert hooks.Fake_CallCount(b"DLLFinalize") == finalized_before + 1
    assert hooks.Fake_LiveCallbacks() == 0
    assert hooks.Fake_ThreadRunning() == 0
    assert source.finished and source.read(0.01) == []
    source.close()  # idempotent: no second DLLFinalize
    assert hooks.Fake_CallCount(b"DLLFinalize") == finalized_before + 1
    again = make_source()
    assert of_type(read_until(again, offer_book_finished), ev.Trade)


def test_credentials_never_show(make_source: Callable[..., ProfitDllSource]) -> None:
    source = make_source()
    assert PASSWORD not in repr(source) and "activation-key" not in repr(source)
    assert PASSWORD not in repr(vars(source))


def test_server_clock_is_read_when_exported(make_source: Callable[..., ProfitDllSource]) -> None:
    source = make_source()
    now = time.time_ns()
    clock = source.server_clock_ns()
    assert clock is not None and abs(clock - now) < 5_000_000_000


def test_the_fake_poisons_a_trade_handle_translated_too_late(fake_dll: Path, hooks: Any) -> None:
    """A binding that queued the handle and translated later would read garbage (§9)."""
    lib = pd.load_library(fake_dll)
    handles: list[int] = []
    translated_inside: list[int] = []

    def on_trade(asset: Any, p_trade: int, flags: int) -> None:
        handles.append(p_trade)
        translated_inside.append(lib.TranslateTrade(p_trade, pd.TConnectorTrade(Version=0)))

    def ignore(*args: Any) -> None:
        return None

    callback = pd.TradeCallbackV2(on_trade)
    slots = [pd.StateCallback(ignore), pd.DailyCallback(ignore)]
    slots += [pd.ProgressCallback(ignore), pd.TinyBookCallback(ignore)]
    failures_before = hooks.Fake_TranslateFailures()
    rc = lib.DLLInitializeMarketLogin(
        "k", "u", "p", slots[0], None, slots[1], None, None, None, *slots[2:]
    )
    assert rc == 0
    try:
        assert lib.SetTradeCallbackV2(callback) == 0
        assert hooks.Fake_WaitIdle(5000) == 1
        assert lib.SubscribeTicker(SYMBOL, "F") == 0
        assert hooks.Fake_WaitIdle(5000) == 1
        late = lib.TranslateTrade(handles[0], pd.TConnectorTrade(Version=0))
    finally:
        assert lib.DLLFinalize() == 0
    assert translated_inside == [0] * 6
    assert pd.result_name(late) == "NL_NOT_FOUND"
    assert hooks.Fake_TranslateFailures() == failures_before + 1


# --- pure helpers ----------------------------------------------------------------------------------


def test_result_names() -> None:
    assert pd.result_name(0) == "NL_OK"
    assert pd.result_name(-2147483633) == "NL_EXCHANGE_UNKNOWN"
    assert pd.describe_result(-2147483645) == "NL_INVALID_ARGS (bad arguments)"
    assert pd.result_name(-5) == "NL_UNKNOWN_ERROR(-5)"  # never success


def test_state_words() -> None:
    assert pd.state_words(2, 4) == ("market_data", "MARKET_CONNECTED")
    assert pd.state_words(0, 200) == ("login", "LOGIN_UNKNOWN_ERR")
    assert pd.state_words(1, 5) == ("routing", "ROTEAMENTO_BROKER_CONNECTED")
    assert pd.state_words(2, 9) == ("market_data", "UNKNOWN_STATE_9")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (("WDOQ25", "F"), ("WDOQ25", "F")),
        ("wdoq25:f", ("WDOQ25", "F")),
        ("WDOQ25", ("WDOQ25", "F")),
        ("WINFUT", ("WINFUT", "F")),
        ("PETR4", ("PETR4", "B")),
        ("BOVA11", ("BOVA11", "B")),
        ("KLBN11", ("KLBN11", "B")),
        ("NFLX34", ("NFLX34", "B")),
        ("DI1F26", ("DI1F26", "F")),
        ("PETR4:F", ("PETR4", "F")),
    ],
)
def test_parse_symbol(given: Any, expected: tuple[str, str]) -> None:
    assert pd.parse_symbol(given) == expected


@pytest.mark.parametrize("given", ["WDO Q25", "WDOQ25:BMF", ""])
def test_parse_symbol_rejects(given: str) -> None:
    with pytest.raises(UsageError):
        pd.parse_symbol(given)


def test_dll_dates_are_sao_paulo_local_time() -> None:
    assert pd.dll_date_ns("08/08/2025 09:00:02.000") == session_ns(2000)
    assert pd.dll_date_ns("08/08/2025 09:00:02") == session_ns(2000)
    assert pd.dll_date_ns("08/08/2025 09:00:02.5") == session_ns(2500)
    assert pd.dll_date_ns("32/08/2025 09:00:00") is None
    assert pd.dll_date_ns("") is None and pd.dll_date_ns(None) is None
    # before 2019 Brazil had daylight saving time: 2018-01-15 09:00 was UTC-2
    assert pd.dll_date_ns("15/01/2018 09:00:00") == int(
        datetime(2018, 1, 15, 11, tzinfo=UTC).timestamp() * 1e9
    )


def test_history_windows_reject_reversed_bounds() -> None:
    with pytest.raises(UsageError, match="after"):
        pd.history_windows("2025-08-08T10:00", "2025-08-07T10:00")


def test_truncated_book_arrays_are_value_errors() -> None:
    import struct

    with pytest.raises(ValueError, match="cannot hold 3 levels"):
        pd.parse_price_array(struct.pack("<ii", 3, 28) + b"\0" * 20)
    entry = struct.pack("<dqiqh", 5500.0, 1, 3, 9001, 23) + b"08/08/2025 08:59:00.000"
    offers, flags = pd.parse_offer_array(
        struct.pack("<ii", 1, 8 + len(entry) + 4) + entry + struct.pack("<I", 1)
    )
    assert offers == [[5500.0, 1, 3, 9001, "08/08/2025 08:59:00.000"]] and flags == 1
    with pytest.raises(ValueError, match="runs past the array"):
        pd.parse_offer_array(struct.pack("<ii", 1, 40) + entry[:35])
