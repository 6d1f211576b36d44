"""Incremental window primitives: each update is O(1) (amortised), never a pass over the window.

Floating sums drift when values are added and removed for hours, so `Rolling` keeps its sums
relative to a shift (the window's mean at the last recompute) and recomputes them exactly
(`math.fsum`) every ~4096 pushes, and at once when rounding could show (the sum of squares fell
far below its peak, or the variance is a small difference of large sums); the recompute point is
staggered per window so the O(n) pass rarely coincides with other windows' passes. Integer series use `Prefix`, a ring of cumulative sums, which is exact.
"""

from __future__ import annotations

import math
import struct
from bisect import bisect_left, insort
from collections import deque
from itertools import count as _counter

NAN = math.nan
_F32 = struct.Struct("<f")
_stagger = _counter()
# Rounding drift of add/remove over a few thousand pushes stays ~1e-13 relative, far inside
# 1e-9; a rarer O(n) recompute keeps it out of the p99 latency.
RECOMPUTE_PUSHES = 4096


def restart_stagger() -> None:
    """Number the recompute offsets of the windows built next from 0 again. A symbol's state
    calls this first, so its windows recompute at the same pushes in every process (a replay
    equals the live run bit for bit, whatever else the process built before)."""
    global _stagger
    _stagger = _counter()


def f32(x: float) -> float:
    """x rounded to the nearest float32 (overflow gives ±inf, as numpy's float32 does)."""
    try:
        return _F32.unpack(_F32.pack(x))[0]
    except OverflowError:
        return math.inf if x > 0 else -math.inf


class Rolling:
    """Mean, sum, and variance of the last n floats.

    Sums are of (x - shift); a window whose values are all equal reports exactly that value as
    mean and exactly 0 as variance (as pandas does), whatever rounding the sums carry.
    """

    __slots__ = (
        "n",
        "buf",
        "i",
        "count",
        "shift",
        "s",
        "ss",
        "peak",
        "same",
        "last",
        "period",
        "countdown",
    )

    def __init__(self, n: int) -> None:
        self.n = n
        self.buf = [0.0] * n
        self.i = 0
        self.count = 0
        self.shift = 0.0
        self.s = 0.0
        self.ss = 0.0
        self.peak = 0.0
        self.same = 0
        self.last = NAN
        # about every RECOMPUTE_PUSHES pushes (a whole number of wraps), staggered per window
        self.period = n * max(1, RECOMPUTE_PUSHES // n)
        self.countdown = self.period - (next(_stagger) * 613) % self.period

    def push(self, x: float) -> None:
        buf = self.buf
        i = self.i
        shift = self.shift
        if self.count == self.n:
            d = buf[i] - shift
            self.s -= d
            self.ss -= d * d
        else:
            self.count += 1
        buf[i] = x
        d = x - shift
        self.s += d
        ss = self.ss = self.ss + d * d
        if ss > self.peak:
            self.peak = ss
        self.same = self.same + 1 if x == self.last else 1
        self.last = x
        i += 1
        if i == self.n:
            i = 0
        self.i = i
        self.countdown -= 1
        if not self.countdown:
            self.countdown = self.period
            self.exact()

    def exact(self) -> None:
        """Rebase the shift on the window's mean and recompute the sums from the window."""
        values = self.buf if self.count == self.n else self.buf[: self.count]
        k = math.fsum(values) / len(values) if values else 0.0
        if not math.isfinite(k):
            k = 0.0
        self.shift = k
        diffs = [v - k for v in values]
        self.s = math.fsum(diffs)
        self.ss = self.peak = math.fsum([d * d for d in diffs])

    @property
    def full(self) -> bool:
        return self.count == self.n

    def mean(self) -> float:
        if self.same >= self.count:
            return self.last
        return self.shift + self.s / self.count

    def sum(self) -> float:
        if self.same >= self.count:
            return self.last * self.count
        return self.shift * self.count + self.s

    def var(self, ddof: int = 1) -> float:
        c = self.count
        if self.same >= c:
            return 0.0
        # Recompute when rounding could show: the sums fell far below their peak (a large
        # value left the window) or the centred sum is a small difference of large ones.
        if self.ss < self.peak * 1e-7 or self.ss - self.s * self.s / c < self.ss * 1e-7:
            self.exact()
        s = self.s
        v = (self.ss - s * s / c) / (c - ddof)
        return v if v > 0.0 else 0.0

    def std(self, ddof: int = 1) -> float:
        return math.sqrt(self.var(ddof))


class Prefix:
    """Exact sums of an integer series over any window up to n, from a ring of prefix sums."""

    __slots__ = ("n", "ring", "i", "total", "count")

    def __init__(self, n: int) -> None:
        self.n = n + 1
        self.ring = [0] * (n + 1)
        self.i = 0
        self.total = 0
        self.count = 0

    def push(self, x: int) -> None:
        self.total += x
        i = self.i + 1
        if i == self.n:
            i = 0
        self.ring[i] = self.total
        self.i = i
        self.count += 1

    def sum(self, k: int) -> int:
        """Sum of the last k values (k <= n; fewer when fewer were pushed)."""
        j = self.i - k
        if j < 0:
            j += self.n
        return self.total - self.ring[j] if self.count >= k else self.total


class Lags:
    """The last n values; `ago(0)` is the newest."""

    __slots__ = ("n", "buf", "i", "count")

    def __init__(self, n: int) -> None:
        self.n = n
        self.buf = [NAN] * n
        self.i = -1
        self.count = 0

    def push(self, x: float) -> None:
        i = self.i + 1
        if i == self.n:
            i = 0
        self.buf[i] = x
        self.i = i
        self.count += 1

    def ago(self, k: int) -> float:
        """The value k pushes before the newest, NaN when there is none."""
        if k >= self.count:
            return NAN
        return self.buf[self.i - k]  # negative index wraps the ring


class MinMax:
    """Minimum and maximum of the last n values (monotonic deques, amortised O(1))."""

    __slots__ = ("n", "t", "lo", "hi")

    def __init__(self, n: int) -> None:
        self.n = n
        self.t = 0
        self.lo: deque[tuple[int, float]] = deque()
        self.hi: deque[tuple[int, float]] = deque()

    def push(self, x: float) -> None:
        t = self.t
        lo, hi = self.lo, self.hi
        while lo and lo[-1][1] >= x:
            lo.pop()
        lo.append((t, x))
        while hi and hi[-1][1] <= x:
            hi.pop()
        hi.append((t, x))
        old = t - self.n
        if lo[0][0] <= old:
            lo.popleft()
        if hi[0][0] <= old:
            hi.popleft()
        self.t = t + 1

    @property
    def full(self) -> bool:
        return self.t >= self.n

    def min(self) -> float:
        return self.lo[0][1]

    def max(self) -> float:
        return self.hi[0][1]


class Median:
    """Median of the last n values: a ring plus a sorted copy (bisect; n is small)."""

    __slots__ = ("n", "ring", "sorted")

    def __init__(self, n: int) -> None:
        self.n = n
        self.ring: deque[float] = deque()
        self.sorted: list[float] = []

    def push(self, x: float) -> None:
        self.ring.append(x)
        insort(self.sorted, x)
        if len(self.ring) > self.n:
            old = self.ring.popleft()
            del self.sorted[bisect_left(self.sorted, old)]

    @property
    def full(self) -> bool:
        return len(self.ring) == self.n

    def median(self) -> float:
        s = self.sorted
        m = len(s) // 2
        return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2.0


class Ema:
    """EMA seeded with the mean of its first n values, then alpha = 2 / (n + 1)."""

    __slots__ = ("n", "alpha", "count", "value", "seed")

    def __init__(self, n: int) -> None:
        self.n = n
        self.alpha = 2.0 / (n + 1)
        self.count = 0
        self.value = NAN
        self.seed = 0.0

    def push(self, x: float) -> float:
        self.count += 1
        if self.count < self.n:
            self.seed += x
            return NAN
        if self.count == self.n:
            self.value = (self.seed + x) / self.n
        else:
            self.value += self.alpha * (x - self.value)
        return self.value


class Wilder:
    """Wilder's smoothing: the mean of the first n values, then (avg (n - 1) + x) / n."""

    __slots__ = ("n", "count", "value", "seed")

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.value = NAN
        self.seed = 0.0

    def push(self, x: float) -> float:
        self.count += 1
        if self.count < self.n:
            self.seed += x
            return NAN
        if self.count == self.n:
            self.value = (self.seed + x) / self.n
        else:
            self.value = (self.value * (self.n - 1) + x) / self.n
        return self.value
