/*
 * A fake ProfitDLL for tests on Linux (docs/profitdll-binding.md, ../shared/docs/profitdll.md §11).
 *
 * It exports the market-data functions and callback signatures the binding in
 * qt_cli/core/sources/profitdll/ uses, with the vendor's names and parameter lists, and plays
 * the DLL's ConnectorThread with one pthread: only that thread ever invokes callbacks; the API
 * functions validate their arguments, queue a request and return at once.
 *
 * What the thread emits is deterministic (tests mirror the values):
 *   - after DLLInitialize*: the connection states of FAKE_PROFIT_SCENARIO
 *       ok (default)     (3,0) (0,0) (2,1) (2,2) (2,4)
 *       login_fail       (3,0) (0,2)                      LOGIN_INVALID_PASS
 *       activation_fail  (3,1)                            CONNECTION_ACTIVATE_INVALID
 *       no_market        (3,0) (0,0) (2,1) (2,2)          never connects
 *       backpressure     ok, then (2,6) (2,4)
 *     or FAKE_PROFIT_STATES="3:0,0:0,2:4" for any other sequence;
 *   - SubscribeTicker: ticker state "opened", tiny book bid and ask, one daily bar, the fixed
 *     trades of KNOWN_TRADES (an edit, an out-of-order time, unknown trade types 32 and 99)
 *     then FAKE_PROFIT_TRADES (default 0) generated trades; a ticker starting with "INVALID" (or
 *     listed in FAKE_PROFIT_INVALID, comma separated) gets TInvalidTickerCallback instead;
 *   - SubscribePriceBook / SubscribeOfferBook: a full book (arrays in the §8 layout, freed with
 *     FreePointer) then add, edit, delete and delete-from;
 *   - GetHistoryTrades: an all-zero trade first (FAKE_PROFIT_HISTORY_ZERO=0 to omit), then
 *     FAKE_PROFIT_HISTORY (default 5) history trades, the last flagged TC_LAST_PACKET, with
 *     progress 1..100 interleaved.
 * FAKE_PROFIT_GATE=path holds the connector thread until that file exists; FAKE_PROFIT_DELAY_US
 * sleeps between callbacks.
 * Every trade goes through TConnectorTradeCallback with a pointer to an internal record that only
 * TranslateTrade can read; the record is poisoned as soon as the callback returns, so a binding
 * that translates later gets NL_NOT_FOUND (and Fake_TranslateFailures counts it).
 *
 * Test hooks are prefixed Fake_ and do not exist in the real DLL.
 * Build: cc -shared -fPIC -pthread -O2 -o libprofitdll_fake.so fake_profitdll.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <wchar.h>

#ifdef _WIN32
#define CALLCONV __stdcall
#define EXPORT __declspec(dllexport)
#else
#define CALLCONV
#define EXPORT __attribute__((visibility("default")))
#endif

/* ---- return codes (profitdll.md §3) ---------------------------------------------------- */
#define NL_OK 0
#define NL_INTERNAL_ERROR ((int)0x80000001)
#define NL_NOT_INITIALIZED ((int)0x80000002)
#define NL_INVALID_ARGS ((int)0x80000003)
#define NL_OUT_OF_RANGE ((int)0x80000009)
#define NL_NOT_FOUND ((int)0x8000000C)
#define NL_VERSION_NOT_SUPPORTED ((int)0x8000000D)
#define NL_EXCHANGE_UNKNOWN ((int)0x8000000F)
#define NL_DUPLICATE_RESOURCE ((int)0x8000001A)

#define TC_IS_EDIT 1u
#define TC_LAST_PACKET 2u
#define OB_LAST_PACKET 1u

/* ---- types (byte-identical to the binding's ctypes Structures) --------------------------- */
typedef wchar_t *PWideChar;
typedef uint16_t WChar; /* Delphi Char = WideChar, 2 bytes */

typedef struct {
    uint16_t wYear, wMonth, wDayOfWeek, wDay, wHour, wMinute, wSecond, wMilliseconds;
} SystemTime;

typedef struct { /* natural alignment, like the official Python example (24 bytes on 64-bit) */
    PWideChar ticker;
    PWideChar bolsa;
    int32_t feed;
} TAssetIDRec;

typedef struct {
    uint8_t Version;
    PWideChar Ticker;
    PWideChar Exchange;
    uint8_t FeedType;
} TConnectorAssetIdentifier;

typedef struct {
    uint8_t Version;
    SystemTime TradeDate;
    uint32_t TradeNumber;
    double Price;
    int64_t Quantity;
    double Volume;
    int32_t BuyAgent;
    int32_t SellAgent;
    uint8_t TradeType;
} TConnectorTrade;

_Static_assert(sizeof(SystemTime) == 16, "TSystemTime is 16 bytes");
#if UINTPTR_MAX == 0xFFFFFFFFFFFFFFFFu
_Static_assert(sizeof(TAssetIDRec) == 24, "TAssetIDRec 24 bytes (unpacked) on 64-bit");
_Static_assert(offsetof(TAssetIDRec, feed) == 16, "TAssetIDRec.nFeed at 16");
_Static_assert(sizeof(TConnectorAssetIdentifier) == 32, "TConnectorAssetIdentifier 32 bytes");
_Static_assert(offsetof(TConnectorAssetIdentifier, Ticker) == 8, "Ticker at 8");
_Static_assert(offsetof(TConnectorAssetIdentifier, Exchange) == 16, "Exchange at 16");
_Static_assert(offsetof(TConnectorAssetIdentifier, FeedType) == 24, "FeedType at 24");
#endif
_Static_assert(offsetof(TConnectorTrade, TradeDate) == 2, "TradeDate at 2");
_Static_assert(offsetof(TConnectorTrade, TradeNumber) == 20, "TradeNumber at 20");
_Static_assert(offsetof(TConnectorTrade, Price) == 24, "Price at 24");
_Static_assert(offsetof(TConnectorTrade, Quantity) == 32, "Quantity at 32");
_Static_assert(offsetof(TConnectorTrade, Volume) == 40, "Volume at 40");
_Static_assert(offsetof(TConnectorTrade, BuyAgent) == 48, "BuyAgent at 48");
_Static_assert(offsetof(TConnectorTrade, SellAgent) == 52, "SellAgent at 52");
_Static_assert(offsetof(TConnectorTrade, TradeType) == 56, "TradeType at 56");
_Static_assert(sizeof(TConnectorTrade) == 64, "TConnectorTrade is 64 bytes");

/* ---- callback types (profitdll.md §6) ---------------------------------------------------- */
typedef void(CALLCONV *TStateCallback)(int nConnStateType, int nResult);
typedef void(CALLCONV *TNewTradeCallback)(TAssetIDRec, PWideChar, uint32_t, double, double, int,
                                          int, int, int, WChar);
typedef void(CALLCONV *THistoryTradeCallback)(TAssetIDRec, PWideChar, uint32_t, double, double,
                                              int, int, int, int);
typedef void(CALLCONV *TConnectorTradeCallback)(TConnectorAssetIdentifier, void *, uint32_t);
typedef void(CALLCONV *TDailyCallback)(TAssetIDRec, PWideChar, double, double, double, double,
                                       double, double, double, double, double, double, int, int,
                                       int, int, int, int, int);
typedef void(CALLCONV *TTinyBookCallback)(TAssetIDRec, double, int, int);
typedef void(CALLCONV *TPriceBookCallback)(TAssetIDRec, int, int, int, int, int, double, void *,
                                           void *);
typedef void(CALLCONV *TPriceBookCallbackV2)(TAssetIDRec, int nAction, int nPosition, int nSide,
                                             int64_t nQtds, int nCount, double dPrice,
                                             void *pArraySell, void *pArrayBuy);
typedef void(CALLCONV *TOfferBookCallback)(TAssetIDRec, int, int, int, int, int, int64_t, double,
                                           WChar, WChar, WChar, WChar, WChar, PWideChar, void *,
                                           void *);
typedef void(CALLCONV *TOfferBookCallbackV2)(TAssetIDRec, int nAction, int nPosition, int Side,
                                             int64_t nQtd, int nAgent, int64_t nOfferID,
                                             double dPrice, WChar bHasPrice, WChar bHasQtd,
                                             WChar bHasDate, WChar bHasOfferID, WChar bHasAgent,
                                             PWideChar pwcDate, void *pArraySell,
                                             void *pArrayBuy);
typedef void(CALLCONV *TProgressCallback)(TAssetIDRec, int);
typedef void(CALLCONV *TChangeStateTicker)(TAssetIDRec, PWideChar, int);
typedef void(CALLCONV *TInvalidTickerCallback)(TConnectorAssetIdentifier);
typedef void *TAnyCallback; /* routing slots of DLLInitializeLogin: stored, never called */

/* Callback slots. Written by API calls, read by the connector thread: atomic loads/stores. */
static struct {
    TStateCallback state;
    TNewTradeCallback trade_v1;
    THistoryTradeCallback history_v1;
    TConnectorTradeCallback trade_v2;
    TConnectorTradeCallback history_v2;
    TDailyCallback daily;
    TTinyBookCallback tiny_book;
    TPriceBookCallback price_book_v1;
    TPriceBookCallbackV2 price_book_v2;
    TOfferBookCallback offer_book_v1;
    TOfferBookCallbackV2 offer_book_v2;
    TProgressCallback progress;
    TChangeStateTicker ticker_state;
    TInvalidTickerCallback invalid_ticker;
} g_cb;
#define CB_COUNT (sizeof(g_cb) / sizeof(void *))
#define CB_LOAD(slot) __atomic_load_n(&g_cb.slot, __ATOMIC_ACQUIRE)
#define CB_STORE(slot, value) __atomic_store_n(&g_cb.slot, (value), __ATOMIC_RELEASE)

/* ---- call counters (Fake_CallCount) ------------------------------------------------------ */
enum {
    C_DLLInitializeMarketLogin, C_DLLInitializeLogin, C_DLLFinalize, C_SubscribeTicker,
    C_UnsubscribeTicker, C_SubscribeOfferBook, C_UnsubscribeOfferBook, C_SubscribePriceBook,
    C_UnsubscribePriceBook, C_GetHistoryTrades, C_TranslateTrade, C_FreePointer, C_GetServerClock,
    C_GetAgentNameLength, C_GetAgentName, C_SetEnabledLogToDebug, C_SetStateCallback,
    C_SetTradeCallback, C_SetHistoryTradeCallback, C_SetTradeCallbackV2,
    C_SetHistoryTradeCallbackV2, C_SetDailyCallback, C_SetTinyBookCallback, C_SetOfferBookCallback,
    C_SetOfferBookCallbackV2, C_SetPriceBookCallback, C_SetPriceBookCallbackV2,
    C_SetSerieProgressCallback, C_SetChangeStateTickerCallback, C_SetInvalidTickerCallback,
    C__COUNT
};
static const char *const COUNTER_NAMES[C__COUNT] = {
    "DLLInitializeMarketLogin", "DLLInitializeLogin", "DLLFinalize", "SubscribeTicker",
    "UnsubscribeTicker", "SubscribeOfferBook", "UnsubscribeOfferBook", "SubscribePriceBook",
    "UnsubscribePriceBook", "GetHistoryTrades", "TranslateTrade", "FreePointer", "GetServerClock",
    "GetAgentNameLength", "GetAgentName", "SetEnabledLogToDebug", "SetStateCallback",
    "SetTradeCallback", "SetHistoryTradeCallback", "SetTradeCallbackV2",
    "SetHistoryTradeCallbackV2", "SetDailyCallback", "SetTinyBookCallback", "SetOfferBookCallback",
    "SetOfferBookCallbackV2", "SetPriceBookCallback", "SetPriceBookCallbackV2",
    "SetSerieProgressCallback", "SetChangeStateTickerCallback", "SetInvalidTickerCallback",
};
static int g_calls[C__COUNT];
#define COUNT(name) __atomic_add_fetch(&g_calls[C_##name], 1, __ATOMIC_RELAXED)

/* ---- state shared between the API and the connector thread ------------------------------- */
enum { RQ_TICKER, RQ_PRICE_BOOK, RQ_OFFER_BOOK, RQ_HISTORY, RQ_UNSUB, RQ_STATE };

typedef struct Request {
    int kind;
    int a, b; /* RQ_STATE: type, result; RQ_UNSUB: which subscription (RQ_TICKER…) */
    wchar_t *ticker, *exchange;
    struct tm from, to; /* RQ_HISTORY, naive local time */
    struct Request *next;
} Request;

typedef struct {
    wchar_t *ticker, *exchange;
    int ticker_on, price_on, offer_on;
} Subscription;

#define MAX_SUBS 64
#define MAX_ARRAYS 256

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t g_idle_cond = PTHREAD_COND_INITIALIZER;
static pthread_t g_thread;
static int g_initialized, g_thread_running, g_stop, g_idle, g_logged_in;
static Request *g_head, *g_tail;
static Subscription g_subs[MAX_SUBS];
static int g_nsubs;
static void *g_arrays[MAX_ARRAYS];
static int g_outstanding_arrays, g_translate_failures, g_callbacks_fired;

/* Configuration, read from the environment at initialisation. */
static int g_states[64][2];
static int g_nstates;
static int g_extra_trades, g_history_trades, g_history_zero, g_delay_us;
static char g_invalid[512];
static char g_gate[4096];

/* The record a_pTrade points at: only TranslateTrade reads it, poisoned after each callback. */
#define TRADE_MAGIC 0x7EADC0DEu
#define TRADE_POISON 0xDEADBEEFu
static struct {
    uint32_t magic;
    TConnectorTrade trade;
} g_trade_slot;

/* ---- helpers ----------------------------------------------------------------------------- */
static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return (v && *v) ? atoi(v) : fallback;
}

static void pause_between(void) {
    if (g_delay_us > 0) usleep((useconds_t)g_delay_us);
}

static int empty(const wchar_t *s) { return s == NULL || s[0] == L'\0'; }

static wchar_t *wdup(const wchar_t *s) {
    size_t n = wcslen(s) + 1;
    wchar_t *out = malloc(n * sizeof(wchar_t));
    if (out) memcpy(out, s, n * sizeof(wchar_t));
    return out;
}

static void add_state(int type, int result) {
    if (g_nstates < 64) {
        g_states[g_nstates][0] = type;
        g_states[g_nstates][1] = result;
        g_nstates++;
    }
}

static void configure(void) {
    const char *scenario = getenv("FAKE_PROFIT_SCENARIO");
    const char *states = getenv("FAKE_PROFIT_STATES");
    const char *invalid = getenv("FAKE_PROFIT_INVALID");
    g_nstates = 0;
    if (states && *states) {
        const char *p = states;
        while (*p) {
            int t, r, used = 0;
            if (sscanf(p, "%d:%d%n", &t, &r, &used) != 2) break;
            add_state(t, r);
            p += used;
            while (*p == ',' || *p == ' ') p++;
        }
    } else if (scenario && strcmp(scenario, "login_fail") == 0) {
        add_state(3, 0), add_state(0, 2);
    } else if (scenario && strcmp(scenario, "activation_fail") == 0) {
        add_state(3, 1);
    } else if (scenario && strcmp(scenario, "no_market") == 0) {
        add_state(3, 0), add_state(0, 0), add_state(2, 1), add_state(2, 2);
    } else {
        add_state(3, 0), add_state(0, 0), add_state(2, 1), add_state(2, 2), add_state(2, 4);
        if (scenario && strcmp(scenario, "backpressure") == 0) add_state(2, 6), add_state(2, 4);
    }
    g_extra_trades = env_int("FAKE_PROFIT_TRADES", 0);
    g_history_trades = env_int("FAKE_PROFIT_HISTORY", 5);
    g_history_zero = env_int("FAKE_PROFIT_HISTORY_ZERO", 1);
    g_delay_us = env_int("FAKE_PROFIT_DELAY_US", 0);
    snprintf(g_invalid, sizeof g_invalid, "%s", invalid ? invalid : "");
    const char *gate = getenv("FAKE_PROFIT_GATE");
    snprintf(g_gate, sizeof g_gate, "%s", gate ? gate : "");
}

static int ticker_is_invalid(const wchar_t *ticker) {
    char narrow[64];
    size_t n = wcstombs(narrow, ticker, sizeof narrow - 1);
    if (n == (size_t)-1) return 1;
    narrow[n] = '\0';
    if (strncmp(narrow, "INVALID", 7) == 0) return 1;
    char list[512];
    snprintf(list, sizeof list, "%s", g_invalid);
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        if (strcmp(tok, narrow) == 0) return 1;
    return 0;
}

static void push_request(Request *rq) {
    pthread_mutex_lock(&g_lock);
    rq->next = NULL;
    if (g_tail) g_tail->next = rq; else g_head = rq;
    g_tail = rq;
    g_idle = 0;
    pthread_cond_signal(&g_wake);
    pthread_mutex_unlock(&g_lock);
}

static void free_request(Request *rq) {
    free(rq->ticker);
    free(rq->exchange);
    free(rq);
}

static Request *new_request(int kind, const wchar_t *ticker, const wchar_t *exchange) {
    Request *rq = calloc(1, sizeof *rq);
    if (!rq) return NULL;
    rq->kind = kind;
    if (ticker) rq->ticker = wdup(ticker);
    if (exchange) rq->exchange = wdup(exchange);
    return rq;
}

/* Naive local time (B3 wall clock) <-> milliseconds, through timegm so no tz applies. */
static int64_t tm_to_ms(const struct tm *t) {
    struct tm copy = *t;
    return (int64_t)timegm(&copy) * 1000;
}

static SystemTime ms_to_systemtime(int64_t ms) {
    time_t secs = (time_t)(ms / 1000);
    struct tm t;
    gmtime_r(&secs, &t);
    SystemTime st = {(uint16_t)(t.tm_year + 1900), (uint16_t)(t.tm_mon + 1), (uint16_t)t.tm_wday,
                     (uint16_t)t.tm_mday, (uint16_t)t.tm_hour, (uint16_t)t.tm_min,
                     (uint16_t)t.tm_sec, (uint16_t)(ms % 1000)};
    return st;
}

/* 2025-08-08 09:00:00.000 local: the fake session's clock. */
static int64_t session_ms(int64_t offset_ms) {
    struct tm t = {0};
    t.tm_year = 2025 - 1900, t.tm_mon = 7, t.tm_mday = 8, t.tm_hour = 9;
    return tm_to_ms(&t) + offset_ms;
}

static int parse_dll_date(const wchar_t *text, struct tm *out) {
    /* 'DD/MM/YYYY HH:mm:SS' (optionally '.fff') */
    int d, mo, y, h, mi, s;
    if (empty(text)) return 0;
    if (swscanf(text, L"%2d/%2d/%4d %2d:%2d:%2d", &d, &mo, &y, &h, &mi, &s) != 6) return 0;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60 || y < 1900) return 0;
    memset(out, 0, sizeof *out);
    out->tm_year = y - 1900, out->tm_mon = mo - 1, out->tm_mday = d;
    out->tm_hour = h, out->tm_min = mi, out->tm_sec = s;
    return 1;
}

static TAssetIDRec asset_rec(const Subscription *s) {
    TAssetIDRec a = {s->ticker, s->exchange, 0};
    return a;
}

static TConnectorAssetIdentifier asset_id(const wchar_t *ticker, const wchar_t *exchange) {
    TConnectorAssetIdentifier a = {0, (PWideChar)ticker, (PWideChar)exchange, 0};
    return a;
}

static void *alloc_array(size_t size) {
    unsigned char *p = calloc(1, size);
    if (!p) return NULL;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < MAX_ARRAYS; i++) {
        if (!g_arrays[i]) {
            g_arrays[i] = p;
            g_outstanding_arrays++;
            pthread_mutex_unlock(&g_lock);
            return p;
        }
    }
    pthread_mutex_unlock(&g_lock);
    free(p);
    return NULL;
}

/* ---- what the connector thread emits --------------------------------------------------- */
static void emit_state(int type, int result) {
    TStateCallback cb = CB_LOAD(state);
    if (cb) {
        cb(type, result);
        g_callbacks_fired++;
    }
    if (type == 2) g_logged_in = (result == 4 || result == 6);
    if ((type == 0 && result != 0) || (type == 3 && result != 0)) g_logged_in = 0;
}

static void emit_trade(const Subscription *s, const TConnectorTrade *trade, uint32_t flags,
                       int history) {
    TConnectorTradeCallback cb = history ? CB_LOAD(history_v2) : CB_LOAD(trade_v2);
    if (!cb) return;
    g_trade_slot.magic = TRADE_MAGIC;
    g_trade_slot.trade = *trade;
    cb(asset_id(s->ticker, s->exchange), &g_trade_slot, flags);
    g_callbacks_fired++;
    memset(&g_trade_slot, 0xA5, sizeof g_trade_slot); /* deferred TranslateTrade must fail */
    g_trade_slot.magic = TRADE_POISON;
    pause_between();
}

static TConnectorTrade make_trade(int64_t ms, uint32_t number, double price, int64_t qty,
                                  int buyer, int seller, int type) {
    TConnectorTrade t;
    memset(&t, 0, sizeof t);
    t.TradeDate = ms_to_systemtime(ms);
    t.TradeNumber = number;
    t.Price = price;
    t.Quantity = qty;
    t.Volume = price * (double)qty * 10.0;
    t.BuyAgent = buyer;
    t.SellAgent = seller;
    t.TradeType = (uint8_t)type;
    return t;
}

/* The fixed live trades every subscribed ticker gets (tests mirror this table). */
static const struct {
    int offset_ms;
    uint32_t number;
    double price;
    int qty, buyer, seller, type;
    uint32_t flags;
} KNOWN_TRADES[] = {
    {100, 101, 5500.0, 5, 72, 3, 2, 0},           /* aggressor buy */
    {250, 102, 5500.5, 2, 3, 72, 3, 0},           /* aggressor sell */
    {1000, 103, 5501.0, 10, 1, 2, 4, 0},          /* auction */
    {250, 102, 5500.5, 3, 3, 72, 3, TC_IS_EDIT},  /* edit of 102: quantity 2 -> 3 */
    {900, 104, 5499.5, 1, 8, 1, 32, 0},           /* out of order (before 103), type unknown */
    {2000, 105, 5500.0, 4, 72, 8, 99, 0},         /* a type the table does not know */
};

static void emit_ticker(Subscription *s) {
    TAssetIDRec a = asset_rec(s);
    TChangeStateTicker state_cb = CB_LOAD(ticker_state);
    if (state_cb) state_cb(a, L"08/08/2025 09:00:00.000", 0), g_callbacks_fired++;
    TTinyBookCallback tiny = CB_LOAD(tiny_book);
    if (tiny) {
        tiny(a, 5500.0, 12, 0), g_callbacks_fired++;
        tiny(a, 5500.5, 7, 1), g_callbacks_fired++;
    }
    TDailyCallback daily = CB_LOAD(daily);
    if (daily) {
        daily(a, L"08/08/2025 09:00:02.000", 5490.0, 5510.0, 5480.5, 5500.5, 1.2e9, 5495.5, 5800.0,
              5200.0, 6.5e8, 5.5e8, 24000, 5000, 300000, 12500, 11500, 2600, 2400);
        g_callbacks_fired++;
    }
    pause_between();
    for (size_t i = 0; i < sizeof KNOWN_TRADES / sizeof KNOWN_TRADES[0]; i++) {
        TConnectorTrade t = make_trade(session_ms(KNOWN_TRADES[i].offset_ms),
                                       KNOWN_TRADES[i].number, KNOWN_TRADES[i].price,
                                       KNOWN_TRADES[i].qty, KNOWN_TRADES[i].buyer,
                                       KNOWN_TRADES[i].seller, KNOWN_TRADES[i].type);
        emit_trade(s, &t, KNOWN_TRADES[i].flags, 0);
    }
    for (int i = 0; i < g_extra_trades && !__atomic_load_n(&g_stop, __ATOMIC_ACQUIRE); i++) {
        /* generated: number 1000+i at 09:01:00 + i ms, price 5500 + ((7i mod 11) - 5) * 0.5 */
        double price = 5500.0 + (double)(((i * 7) % 11) - 5) * 0.5;
        TConnectorTrade t = make_trade(session_ms(60000 + i), (uint32_t)(1000 + i), price,
                                       1 + i % 5, 1 + i % 4, 5 + i % 3, (i % 2) ? 3 : 2);
        emit_trade(s, &t, 0, 0);
    }
}

static void put_i32(unsigned char *p, int32_t v) { memcpy(p, &v, 4); }
static void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put_i64(unsigned char *p, int64_t v) { memcpy(p, &v, 8); }
static void put_f64(unsigned char *p, double v) { memcpy(p, &v, 8); }
static void put_i16(unsigned char *p, int16_t v) { memcpy(p, &v, 2); }

typedef struct {
    double price;
    int64_t qty;
    uint32_t count;
} Level;

/* Price book V2 array: Q @0, size @4, entries (price f64, qty i64, count u32) from @8. */
static void *price_array(const Level *levels, int n) {
    int32_t size = 8 + n * 20;
    unsigned char *p = alloc_array((size_t)size);
    if (!p) return NULL;
    put_i32(p, n), put_i32(p + 4, size);
    for (int i = 0; i < n; i++) {
        unsigned char *e = p + 8 + i * 20;
        put_f64(e, levels[i].price), put_i64(e + 8, levels[i].qty), put_u32(e + 16, levels[i].count);
    }
    return p;
}

static void emit_price_book(Subscription *s) {
    TPriceBookCallbackV2 cb = CB_LOAD(price_book_v2);
    if (!cb) return;
    TAssetIDRec a = asset_rec(s);
    /* Lists run worst -> best: position 0 (counted from the end) is the top of the book. */
    static const Level bids[] = {{5497.5, 30, 3}, {5498.0, 25, 2}, {5498.5, 20, 4},
                                 {5499.0, 15, 2}, {5500.0, 12, 3}};
    static const Level asks[] = {{5502.5, 40, 5}, {5502.0, 25, 3}, {5501.5, 18, 2},
                                 {5501.0, 9, 1}, {5500.5, 7, 2}};
    void *sell = price_array(asks, 5), *buy = price_array(bids, 5);
    cb(a, 4, 0, 0, 0, 0, 0.0, sell, buy); /* atFullBook */
    cb(a, 0, 1, 0, 8, 1, 5499.5, NULL, NULL); /* atAdd bid 5499.5 at position 1 */
    cb(a, 1, 0, 1, 11, 3, 0.0, NULL, NULL);   /* atEdit best ask: qty 11, count 3 */
    cb(a, 2, 5, 0, 0, 0, 0.0, NULL, NULL);    /* atDelete bid position 5 (the worst, 5497.5) */
    cb(a, 3, 1, 1, 0, 0, 0.0, NULL, NULL);    /* atDeleteFrom ask position 1: 5501.0, 5500.5 */
    g_callbacks_fired += 5;
    pause_between();
}

typedef struct {
    double price;
    int64_t qty;
    int32_t agent;
    int64_t offer_id;
    const char *date;
} Offer;

/* Offer book V2 array: Q @0, size @4, entries (f64, i64, i32, i64, i16 T, T date bytes), then
   the trailer flags u32. */
static void *offer_array(const Offer *offers, int n) {
    int32_t size = 8 + 4;
    for (int i = 0; i < n; i++) size += 30 + (int32_t)strlen(offers[i].date);
    unsigned char *p = alloc_array((size_t)size);
    if (!p) return NULL;
    put_i32(p, n), put_i32(p + 4, size);
    unsigned char *e = p + 8;
    for (int i = 0; i < n; i++) {
        int16_t t = (int16_t)strlen(offers[i].date);
        put_f64(e, offers[i].price), put_i64(e + 8, offers[i].qty), put_i32(e + 16, offers[i].agent);
        put_i64(e + 20, offers[i].offer_id), put_i16(e + 28, t);
        memcpy(e + 30, offers[i].date, (size_t)t);
        e += 30 + t;
    }
    put_u32(e, OB_LAST_PACKET);
    return p;
}

static void emit_offer_book(Subscription *s) {
    TOfferBookCallbackV2 cb = CB_LOAD(offer_book_v2);
    if (!cb) return;
    TAssetIDRec a = asset_rec(s);
    static const Offer bids[] = {{5499.0, 5, 3, 9001, "08/08/2025 08:59:00.000"},
                                 {5499.5, 10, 72, 9002, "08/08/2025 08:59:01.000"},
                                 {5500.0, 4, 1, 9003, "08/08/2025 08:59:02.500"},
                                 {5500.0, 8, 3, 9004, "08/08/2025 08:59:03.000"}};
    static const Offer asks[] = {{5501.0, 6, 72, 9101, "08/08/2025 08:59:00.000"},
                                 {5500.5, 3, 1, 9102, "08/08/2025 08:59:01.000"},
                                 {5500.5, 4, 3, 9103, "08/08/2025 08:59:02.000"}};
    void *sell = offer_array(asks, 3), *buy = offer_array(bids, 4);
    cb(a, 4, 0, 0, 0, 0, 0, 0.0, 0, 0, 0, 0, 0, NULL, sell, buy);
    cb(a, 0, 0, 0, 2, 72, 9005, 5500.0, 1, 1, 1, 1, 1, L"08/08/2025 09:00:03.000", NULL, NULL);
    cb(a, 1, 1, 1, 1, 0, 0, 0.0, 0, 1, 0, 0, 0, NULL, NULL, NULL); /* ask 9102: qty 1 */
    cb(a, 2, 4, 0, 0, 0, 0, 0.0, 0, 0, 0, 0, 0, NULL, NULL, NULL); /* bid 9001 */
    cb(a, 3, 0, 1, 0, 0, 0, 0.0, 0, 0, 0, 0, 0, NULL, NULL, NULL); /* ask from 9103 */
    g_callbacks_fired += 5;
    pause_between();
}

static void emit_history(Subscription *s, const struct tm *from) {
    TConnectorTradeCallback trade_cb = CB_LOAD(history_v2);
    TProgressCallback progress = CB_LOAD(progress);
    TAssetIDRec a = asset_rec(s);
    int n = g_history_trades;
    int64_t start = tm_to_ms(from);
    if (trade_cb && g_history_zero) {
        TConnectorTrade zero;
        memset(&zero, 0, sizeof zero);
        emit_trade(s, &zero, 0, 1);
    }
    int next = 0;
    for (int k = 1; k <= 100; k++) {
        while (next < n && (int64_t)next * 100 < (int64_t)k * n) {
            /* history trade i: 1 s + 10 ms apart from the window start */
            int i = next++;
            TConnectorTrade t = make_trade(start + (int64_t)i * 1010, (uint32_t)(5000 + i),
                                           5400.0 + (double)(i % 10) * 0.5, 1 + i % 3, 10 + i % 4,
                                           20 + i % 4, (i % 2) ? 3 : 2);
            if (trade_cb) emit_trade(s, &t, next == n ? TC_LAST_PACKET : 0, 1);
        }
        if (progress) progress(a, k), g_callbacks_fired++;
    }
}

static Subscription *find_sub(const wchar_t *ticker, const wchar_t *exchange, int create) {
    for (int i = 0; i < g_nsubs; i++)
        if (wcscmp(g_subs[i].ticker, ticker) == 0 && wcscmp(g_subs[i].exchange, exchange) == 0)
            return &g_subs[i];
    if (!create || g_nsubs >= MAX_SUBS) return NULL;
    Subscription *s = &g_subs[g_nsubs++];
    memset(s, 0, sizeof *s);
    s->ticker = wdup(ticker);
    s->exchange = wdup(exchange);
    return s;
}

static void handle(Request *rq) {
    if (rq->kind == RQ_STATE) {
        emit_state(rq->a, rq->b);
        return;
    }
    if (!g_logged_in) return; /* the real DLL does nothing for requests before (2,4) */
    if (rq->kind == RQ_UNSUB) {
        Subscription *s = find_sub(rq->ticker, rq->exchange, 0);
        if (s && rq->a == RQ_TICKER) s->ticker_on = 0;
        if (s && rq->a == RQ_PRICE_BOOK) s->price_on = 0;
        if (s && rq->a == RQ_OFFER_BOOK) s->offer_on = 0;
        return;
    }
    if (ticker_is_invalid(rq->ticker)) {
        TInvalidTickerCallback cb = CB_LOAD(invalid_ticker);
        if (cb && rq->kind == RQ_TICKER) cb(asset_id(rq->ticker, rq->exchange)), g_callbacks_fired++;
        return;
    }
    Subscription *s = find_sub(rq->ticker, rq->exchange, rq->kind != RQ_HISTORY);
    if (!s) return;
    switch (rq->kind) {
    case RQ_TICKER:
        s->ticker_on = 1;
        emit_ticker(s);
        break;
    case RQ_PRICE_BOOK:
        s->price_on = 1;
        emit_price_book(s);
        break;
    case RQ_OFFER_BOOK:
        s->offer_on = 1;
        emit_offer_book(s);
        break;
    case RQ_HISTORY:
        if (s->ticker_on) emit_history(s, &rq->from); /* like the real DLL: subscribe first */
        break;
    }
}

static void *connector_thread(void *arg) {
    (void)arg;
    /* FAKE_PROFIT_GATE=path: emit nothing until that file exists (a test that subscribes over
       ZeroMQ first connects, then opens the gate, so no message is published before it listens). */
    while (g_gate[0] && access(g_gate, F_OK) != 0 && !__atomic_load_n(&g_stop, __ATOMIC_ACQUIRE))
        usleep(10000);
    for (int i = 0; i < g_nstates && !__atomic_load_n(&g_stop, __ATOMIC_ACQUIRE); i++) {
        emit_state(g_states[i][0], g_states[i][1]);
        usleep(1000);
    }
    for (;;) {
        pthread_mutex_lock(&g_lock);
        while (!g_stop && !g_head) {
            g_idle = 1;
            pthread_cond_broadcast(&g_idle_cond);
            pthread_cond_wait(&g_wake, &g_lock);
        }
        if (g_stop) {
            pthread_mutex_unlock(&g_lock);
            break;
        }
        Request *rq = g_head;
        g_head = rq->next;
        if (!g_head) g_tail = NULL;
        g_idle = 0;
        pthread_mutex_unlock(&g_lock);
        handle(rq);
        free_request(rq);
    }
    return NULL;
}

/* ---- exported API --------------------------------------------------------------------------- */
static int initialize(const wchar_t *key, const wchar_t *user, const wchar_t *password) {
    if (empty(key) || empty(user) || empty(password)) return NL_INVALID_ARGS;
    pthread_mutex_lock(&g_lock);
    if (g_initialized) {
        pthread_mutex_unlock(&g_lock);
        return NL_DUPLICATE_RESOURCE;
    }
    configure();
    g_stop = 0, g_idle = 0, g_logged_in = 0, g_callbacks_fired = 0, g_translate_failures = 0;
    g_initialized = 1;
    pthread_mutex_unlock(&g_lock);
    if (pthread_create(&g_thread, NULL, connector_thread, NULL) != 0) {
        g_initialized = 0;
        return NL_INTERNAL_ERROR;
    }
    g_thread_running = 1;
    return NL_OK;
}

EXPORT int CALLCONV DLLInitializeMarketLogin(PWideChar key, PWideChar user, PWideChar password,
                                             TStateCallback state, TNewTradeCallback new_trade,
                                             TDailyCallback daily, TPriceBookCallback price_book,
                                             TOfferBookCallback offer_book,
                                             THistoryTradeCallback history_trade,
                                             TProgressCallback progress,
                                             TTinyBookCallback tiny_book) {
    COUNT(DLLInitializeMarketLogin);
    if (empty(key) || empty(user) || empty(password)) return NL_INVALID_ARGS;
    if (__atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE)) return NL_DUPLICATE_RESOURCE;
    CB_STORE(state, state), CB_STORE(trade_v1, new_trade), CB_STORE(daily, daily);
    CB_STORE(price_book_v1, price_book), CB_STORE(offer_book_v1, offer_book);
    CB_STORE(history_v1, history_trade), CB_STORE(progress, progress);
    CB_STORE(tiny_book, tiny_book);
    return initialize(key, user, password);
}

EXPORT int CALLCONV DLLInitializeLogin(PWideChar key, PWideChar user, PWideChar password,
                                       TStateCallback state, TAnyCallback history,
                                       TAnyCallback order_change, TAnyCallback account,
                                       TNewTradeCallback new_trade, TDailyCallback daily,
                                       TPriceBookCallback price_book, TOfferBookCallback offer_book,
                                       THistoryTradeCallback history_trade,
                                       TProgressCallback progress, TTinyBookCallback tiny_book) {
    COUNT(DLLInitializeLogin);
    (void)history, (void)order_change, (void)account; /* routing: not faked */
    if (empty(key) || empty(user) || empty(password)) return NL_INVALID_ARGS;
    if (__atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE)) return NL_DUPLICATE_RESOURCE;
    CB_STORE(state, state), CB_STORE(trade_v1, new_trade), CB_STORE(daily, daily);
    CB_STORE(price_book_v1, price_book), CB_STORE(offer_book_v1, offer_book);
    CB_STORE(history_v1, history_trade), CB_STORE(progress, progress);
    CB_STORE(tiny_book, tiny_book);
    return initialize(key, user, password);
}

EXPORT int CALLCONV DLLFinalize(void) {
    COUNT(DLLFinalize);
    pthread_mutex_lock(&g_lock);
    if (!g_initialized) {
        pthread_mutex_unlock(&g_lock);
        return NL_NOT_INITIALIZED;
    }
    g_stop = 1;
    pthread_cond_broadcast(&g_wake);
    pthread_mutex_unlock(&g_lock);
    if (g_thread_running) pthread_join(g_thread, NULL);
    g_thread_running = 0;
    pthread_mutex_lock(&g_lock);
    while (g_head) {
        Request *next = g_head->next;
        free_request(g_head);
        g_head = next;
    }
    g_tail = NULL;
    for (int i = 0; i < g_nsubs; i++) free(g_subs[i].ticker), free(g_subs[i].exchange);
    g_nsubs = 0;
    memset(&g_cb, 0, sizeof g_cb); /* nothing can fire after this returns */
    g_initialized = 0, g_logged_in = 0, g_idle = 1;
    pthread_cond_broadcast(&g_idle_cond);
    pthread_mutex_unlock(&g_lock);
    return NL_OK;
}

static int subscribe(int kind, const wchar_t *ticker, const wchar_t *exchange) {
    if (!__atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE)) return NL_NOT_INITIALIZED;
    if (empty(ticker) || empty(exchange)) return NL_INVALID_ARGS;
    if (wcscmp(exchange, L"B") != 0 && wcscmp(exchange, L"F") != 0) return NL_EXCHANGE_UNKNOWN;
    Request *rq = new_request(kind, ticker, exchange);
    if (!rq) return NL_INTERNAL_ERROR;
    push_request(rq);
    return NL_OK;
}

static int unsubscribe(int kind, const wchar_t *ticker, const wchar_t *exchange) {
    if (!__atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE)) return NL_NOT_INITIALIZED;
    if (empty(ticker) || empty(exchange)) return NL_INVALID_ARGS;
    if (wcscmp(exchange, L"B") != 0 && wcscmp(exchange, L"F") != 0) return NL_EXCHANGE_UNKNOWN;
    Request *rq = new_request(RQ_UNSUB, ticker, exchange);
    if (!rq) return NL_INTERNAL_ERROR;
    rq->a = kind;
    push_request(rq);
    return NL_OK;
}

EXPORT int CALLCONV SubscribeTicker(PWideChar ticker, PWideChar bolsa) {
    COUNT(SubscribeTicker);
    return subscribe(RQ_TICKER, ticker, bolsa);
}
EXPORT int CALLCONV UnsubscribeTicker(PWideChar ticker, PWideChar bolsa) {
    COUNT(UnsubscribeTicker);
    return unsubscribe(RQ_TICKER, ticker, bolsa);
}
EXPORT int CALLCONV SubscribePriceBook(PWideChar ticker, PWideChar bolsa) {
    COUNT(SubscribePriceBook);
    return subscribe(RQ_PRICE_BOOK, ticker, bolsa);
}
EXPORT int CALLCONV UnsubscribePriceBook(PWideChar ticker, PWideChar bolsa) {
    COUNT(UnsubscribePriceBook);
    return unsubscribe(RQ_PRICE_BOOK, ticker, bolsa);
}
EXPORT int CALLCONV SubscribeOfferBook(PWideChar ticker, PWideChar bolsa) {
    COUNT(SubscribeOfferBook);
    return subscribe(RQ_OFFER_BOOK, ticker, bolsa);
}
EXPORT int CALLCONV UnsubscribeOfferBook(PWideChar ticker, PWideChar bolsa) {
    COUNT(UnsubscribeOfferBook);
    return unsubscribe(RQ_OFFER_BOOK, ticker, bolsa);
}

EXPORT int CALLCONV GetHistoryTrades(PWideChar ticker, PWideChar bolsa, PWideChar date_start,
                                     PWideChar date_end) {
    COUNT(GetHistoryTrades);
    if (!__atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE)) return NL_NOT_INITIALIZED;
    if (empty(ticker) || empty(bolsa)) return NL_INVALID_ARGS;
    if (wcscmp(bolsa, L"B") != 0 && wcscmp(bolsa, L"F") != 0) return NL_EXCHANGE_UNKNOWN;
    struct tm from, to;
    if (!parse_dll_date(date_start, &from) || !parse_dll_date(date_end, &to)) return NL_INVALID_ARGS;
    if (tm_to_ms(&from) > tm_to_ms(&to)) return NL_OUT_OF_RANGE;
    Request *rq = new_request(RQ_HISTORY, ticker, bolsa);
    if (!rq) return NL_INTERNAL_ERROR;
    rq->from = from, rq->to = to;
    push_request(rq);
    return NL_OK;
}

EXPORT int CALLCONV TranslateTrade(const void *a_pTrade, TConnectorTrade *a_Trade) {
    COUNT(TranslateTrade);
    if (!__atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE)) return NL_NOT_INITIALIZED;
    if (!a_pTrade || !a_Trade) return NL_INVALID_ARGS;
    if (a_Trade->Version != 0) return NL_VERSION_NOT_SUPPORTED;
    if (a_pTrade != (const void *)&g_trade_slot || g_trade_slot.magic != TRADE_MAGIC) {
        __atomic_add_fetch(&g_translate_failures, 1, __ATOMIC_RELAXED);
        return NL_NOT_FOUND;
    }
    *a_Trade = g_trade_slot.trade;
    a_Trade->Version = 0;
    return NL_OK;
}

EXPORT int CALLCONV FreePointer(void *pointer, int size) {
    COUNT(FreePointer);
    (void)size;
    if (!pointer) return NL_INVALID_ARGS;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < MAX_ARRAYS; i++) {
        if (g_arrays[i] == pointer) {
            g_arrays[i] = NULL;
            g_outstanding_arrays--;
            pthread_mutex_unlock(&g_lock);
            free(pointer);
            return NL_OK;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return NL_NOT_FOUND;
}

EXPORT int CALLCONV GetServerClock(double *dtDate, int *year, int *month, int *day, int *hour,
                                   int *minute, int *second, int *millisecond) {
    COUNT(GetServerClock);
    if (!__atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE)) return NL_NOT_INITIALIZED;
    if (!dtDate || !year || !month || !day || !hour || !minute || !second || !millisecond)
        return NL_INVALID_ARGS;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 - 3 * 3600 * 1000; /* B3 */
    SystemTime st = ms_to_systemtime(ms);
    *year = st.wYear, *month = st.wMonth, *day = st.wDay, *hour = st.wHour;
    *minute = st.wMinute, *second = st.wSecond, *millisecond = st.wMilliseconds;
    *dtDate = (double)ms / 86400000.0 + 25569.0; /* Delphi TDateTime: days since 1899-12-30 */
    return NL_OK;
}

/* Agents 1..999 have names; a few are brokers with real-looking short names. */
static void agent_name(int id, unsigned short_name, wchar_t *out, size_t n) {
    switch (id) {
    case 1: swprintf(out, n, short_name ? L"BTG" : L"BTG Pactual CTVM"); break;
    case 3: swprintf(out, n, short_name ? L"XP" : L"XP Investimentos CCTVM"); break;
    case 72: swprintf(out, n, short_name ? L"Bradesco" : L"Bradesco S/A CTVM"); break;
    default: swprintf(out, n, short_name ? L"A%d" : L"Agent %d", id); break;
    }
}

EXPORT int CALLCONV GetAgentNameLength(int nAgentID, uint32_t nShortName) {
    COUNT(GetAgentNameLength);
    if (!__atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE)) return NL_NOT_INITIALIZED;
    if (nAgentID <= 0 || nAgentID > 999) return NL_NOT_FOUND;
    wchar_t name[64];
    agent_name(nAgentID, nShortName, name, 64);
    return (int)wcslen(name);
}

EXPORT int CALLCONV GetAgentName(int nCount, int nAgentID, PWideChar pwcAgent,
                                 uint32_t nShortName) {
    COUNT(GetAgentName);
    if (!__atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE)) return NL_NOT_INITIALIZED;
    if (!pwcAgent || nCount <= 0) return NL_INVALID_ARGS;
    if (nAgentID <= 0 || nAgentID > 999) return NL_NOT_FOUND;
    wchar_t name[64];
    agent_name(nAgentID, nShortName, name, 64);
    int len = (int)wcslen(name);
    int copy = len < nCount ? len : nCount;
    memcpy(pwcAgent, name, (size_t)copy * sizeof(wchar_t));
    if (copy < nCount) pwcAgent[copy] = L'\0';
    return copy;
}

static int g_log_to_debug;
EXPORT int CALLCONV SetEnabledLogToDebug(int bEnabled) {
    COUNT(SetEnabledLogToDebug);
    g_log_to_debug = bEnabled;
    return NL_OK;
}

#define SETTER(Name, slot, Type)                  \
    EXPORT int CALLCONV Name(Type callback) {     \
        COUNT(Name);                              \
        CB_STORE(slot, callback);                 \
        return NL_OK;                             \
    }
SETTER(SetStateCallback, state, TStateCallback)
SETTER(SetTradeCallback, trade_v1, TNewTradeCallback)
SETTER(SetHistoryTradeCallback, history_v1, THistoryTradeCallback)
SETTER(SetTradeCallbackV2, trade_v2, TConnectorTradeCallback)
SETTER(SetHistoryTradeCallbackV2, history_v2, TConnectorTradeCallback)
SETTER(SetDailyCallback, daily, TDailyCallback)
SETTER(SetTinyBookCallback, tiny_book, TTinyBookCallback)
SETTER(SetOfferBookCallback, offer_book_v1, TOfferBookCallback)
SETTER(SetOfferBookCallbackV2, offer_book_v2, TOfferBookCallbackV2)
SETTER(SetPriceBookCallback, price_book_v1, TPriceBookCallback)
SETTER(SetPriceBookCallbackV2, price_book_v2, TPriceBookCallbackV2)
SETTER(SetSerieProgressCallback, progress, TProgressCallback)
SETTER(SetChangeStateTickerCallback, ticker_state, TChangeStateTicker)
SETTER(SetInvalidTickerCallback, invalid_ticker, TInvalidTickerCallback)

/* ---- test hooks (never in the real DLL) ------------------------------------------------- */
enum { K_ASSET_ID_REC = 1, K_CONNECTOR_ASSET_ID = 2, K_CONNECTOR_TRADE = 3, K_SYSTEM_TIME = 4 };

EXPORT int Fake_SizeOf(int kind) {
    switch (kind) {
    case K_ASSET_ID_REC: return (int)sizeof(TAssetIDRec);
    case K_CONNECTOR_ASSET_ID: return (int)sizeof(TConnectorAssetIdentifier);
    case K_CONNECTOR_TRADE: return (int)sizeof(TConnectorTrade);
    case K_SYSTEM_TIME: return (int)sizeof(SystemTime);
    default: return -1;
    }
}

/* Offset of a field of TConnectorTrade (kind 3, fields in declaration order 0..8) or of
   TConnectorAssetIdentifier (kind 2, 0..3) or TAssetIDRec (kind 1, 0..2). */
EXPORT int Fake_OffsetOf(int kind, int field) {
    static const int trade[] = {
        offsetof(TConnectorTrade, Version),   offsetof(TConnectorTrade, TradeDate),
        offsetof(TConnectorTrade, TradeNumber), offsetof(TConnectorTrade, Price),
        offsetof(TConnectorTrade, Quantity),  offsetof(TConnectorTrade, Volume),
        offsetof(TConnectorTrade, BuyAgent),  offsetof(TConnectorTrade, SellAgent),
        offsetof(TConnectorTrade, TradeType)};
    static const int cid[] = {
        offsetof(TConnectorAssetIdentifier, Version), offsetof(TConnectorAssetIdentifier, Ticker),
        offsetof(TConnectorAssetIdentifier, Exchange),
        offsetof(TConnectorAssetIdentifier, FeedType)};
    static const int rec[] = {offsetof(TAssetIDRec, ticker), offsetof(TAssetIDRec, bolsa),
                              offsetof(TAssetIDRec, feed)};
    if (kind == K_CONNECTOR_TRADE && field >= 0 && field < 9) return trade[field];
    if (kind == K_CONNECTOR_ASSET_ID && field >= 0 && field < 4) return cid[field];
    if (kind == K_ASSET_ID_REC && field >= 0 && field < 3) return rec[field];
    return -1;
}

/* 1 once the connector thread has emitted its states and has no request left, 0 on timeout. */
EXPORT int Fake_WaitIdle(int timeout_ms) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) deadline.tv_sec++, deadline.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&g_lock);
    int rc = 0;
    while (!(g_idle && !g_head) && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&g_idle_cond, &g_lock, &deadline);
    int idle = g_idle && !g_head;
    pthread_mutex_unlock(&g_lock);
    return idle;
}

EXPORT int Fake_CallCount(const char *name) {
    for (int i = 0; i < C__COUNT; i++)
        if (strcmp(COUNTER_NAMES[i], name) == 0) return __atomic_load_n(&g_calls[i], __ATOMIC_RELAXED);
    return -1;
}

EXPORT int Fake_LiveCallbacks(void) {
    void *slots[CB_COUNT];
    memcpy(slots, &g_cb, sizeof g_cb);
    int live = 0;
    for (size_t i = 0; i < CB_COUNT; i++) live += slots[i] != NULL;
    return live;
}

EXPORT int Fake_ThreadRunning(void) { return g_thread_running; }
EXPORT int Fake_OutstandingArrays(void) { return g_outstanding_arrays; }
EXPORT int Fake_TranslateFailures(void) { return g_translate_failures; }
EXPORT int Fake_CallbacksFired(void) { return g_callbacks_fired; }

/* Queue a connection state for the connector thread to emit (backpressure, disconnects…). */
EXPORT int Fake_InjectState(int type, int result) {
    if (!__atomic_load_n(&g_initialized, __ATOMIC_ACQUIRE)) return NL_NOT_INITIALIZED;
    Request *rq = new_request(RQ_STATE, NULL, NULL);
    if (!rq) return NL_INTERNAL_ERROR;
    rq->a = type, rq->b = result;
    push_request(rq);
    return NL_OK;
}
