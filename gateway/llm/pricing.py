"""The price engine: USD for one LLM call from its token counts, in a few microseconds.

Prices come from genai-prices' bundled offline snapshot (no network unless a refresh source is
configured), with user overrides taking precedence (self-hosted, fine-tuned, negotiated prices).

genai-prices answers one call in 50-200 us of pure Python (model matching, Decimal arithmetic,
unit algebra). A gateway prices every LLM span, so this module asks genai-prices once per
(provider, model, service tier) and price period, and reduces the answer to a few floats:

* the model is resolved once per (provider, model, service tier), misses included;
* a model's prices change over time (`ConditionalPrice` start dates, deepseek's off-peak hours,
  service-tier variants that start on a date): the timeline is cut at every date or time of day
  where a constraint can flip, and each segment is priced once, when first used;
* within a segment, cost is linear in the four token counts between tier thresholds (tiers are
  cliffs chosen by the total input tokens). The coefficients are measured by asking genai-prices'
  own `ModelInfo.calc_price` at probe points, so they follow its unit algebra exactly (what cache
  tokens are subtracted from, fallback providers, per-request prices), and the linearity is checked
  at an extra point; anything that does not fit is priced by genai-prices on every call instead.

All caches hang off one `_Data` object per loaded snapshot: a refresh builds a new one and swaps
a single reference, which clears every cache at once and never mixes two snapshots in one quote.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time as _time
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

from genai_prices import types as gp
from genai_prices.data_snapshot import find_provider_by_id
from pydantic import Field, model_validator

from gateway.configtypes import Duration, StrictModel
from gateway.llm.providers import GENAI_PRICES_PROVIDER, strip_provider_prefix
from gateway.logs import get_logger

__all__ = ["Override", "PriceTable", "Quote", "RefreshConfig"]

_log = get_logger("pricing")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE = date(1970, 1, 1)
_NS_PER_DAY = 86_400_000_000_000
_US_PER_DAY = 86_400_000_000
_MTOK = 1_000_000
_MISS = object()


# --------------------------------------------------------------------------------------------
# Config types (used by gateway.processors.price under `pipeline.price`)


class Override(StrictModel):
    """A price that takes precedence over genai-prices, in USD per million tokens.

    `model` matches the model name exactly (case-insensitive), `model_regex` must match the whole
    name (case-insensitive); both are tried against the name as reported and without a
    `provider/` prefix. `provider` (a canonical name such as `openai`, `aws.bedrock`) limits the
    entry to calls of that provider. The first matching entry wins.
    """

    name: str | None = None
    model: str | None = Field(None, min_length=1)
    model_regex: str | None = Field(None, min_length=1)
    provider: str | None = None
    input_per_mtok: float = Field(ge=0, allow_inf_nan=False)
    output_per_mtok: float = Field(ge=0, allow_inf_nan=False)
    cache_read_per_mtok: float | None = Field(None, ge=0, allow_inf_nan=False, description="Default: the input price.")
    cache_write_per_mtok: float | None = Field(None, ge=0, allow_inf_nan=False, description="Default: the input price.")

    @model_validator(mode="after")
    def _one_matcher(self) -> "Override":
        if (self.model is None) == (self.model_regex is None):
            raise ValueError("give exactly one of `model` (exact name) or `model_regex`")
        if self.model_regex is not None:
            try:
                re.compile(self.model_regex)
            except re.error as e:
                raise ValueError(f"model_regex {self.model_regex!r} is not a valid regular expression: {e}") from None
        return self

    @property
    def label(self) -> str:
        return self.name or self.model or self.model_regex or ""


class RefreshConfig(StrictModel):
    """Reload genai-prices data periodically from a URL or a local file (same JSON format as
    genai-prices' `UpdatePrices`, e.g. its `prices/new_data/v2/data.json`)."""

    url: str | None = Field(None, pattern=r"^https?://")
    file: str | None = Field(None, min_length=1)
    interval: Duration = Field(3600.0, gt=0)
    timeout: Duration = Field(10.0, gt=0, description="HTTP timeout of one fetch.")

    @model_validator(mode="after")
    def _one_source(self) -> "RefreshConfig":
        if (self.url is None) == (self.file is None):
            raise ValueError("give exactly one of `url` or `file`")
        return self

    @property
    def source(self) -> str:
        return self.url or self.file or ""


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class Quote:
    total_usd: float
    input_usd: float  # includes cache read and cache write costs (as genai-prices' input_price)
    output_usd: float  # includes reasoning
    source: str  # "computed" (genai-prices) or "override"
    matched: str  # "openai/gpt-4o-mini" (genai-prices provider/model id) or the override's name/pattern
    # The rates used, in USD per million tokens (None only in the rare slow path):
    input_per_mtok: float | None  # uncached input tokens
    cache_read_per_mtok: float | None
    cache_write_per_mtok: float | None
    output_per_mtok: float | None
    request_usd: float = 0.0  # fixed price per call (e.g. Perplexity's per-request fee), in total_usd only


# --------------------------------------------------------------------------------------------
# Price entries: what one (provider, model, service tier) resolves to


class _OverrideEntry:
    __slots__ = ("label", "pin", "pcr", "pcw", "pout")

    def __init__(self, ov: Override) -> None:
        self.label = ov.label
        self.pin = ov.input_per_mtok
        self.pcr = ov.input_per_mtok if ov.cache_read_per_mtok is None else ov.cache_read_per_mtok
        self.pcw = ov.input_per_mtok if ov.cache_write_per_mtok is None else ov.cache_write_per_mtok
        self.pout = ov.output_per_mtok

    def quote(self, inp: int, out: int, cr: int, cw: int, at: Any) -> Quote:
        i = (self.pin * (inp - cr - cw) + self.pcr * cr + self.pcw * cw) / _MTOK
        o = self.pout * out / _MTOK
        return Quote(i + o, i, o, "override", self.label, self.pin, self.pcr, self.pcw, self.pout)


class _Row:
    """Cost coefficients for one tier interval of one price period, in USD per million tokens.

    cost * 1e6 = k + u*uncached + r*cache_read + w*cache_write + o*output, for the input, output
    and "other" (e.g. per-request) parts. Per-million rates multiply the integer counts first, as
    a person would (0.6 * 200 / 1e6 = 0.00012, not 6e-7 * 200 = 0.00011999999999999999). `simple`
    rows (the usual case) have input costs only from input tokens, output costs only from output
    tokens and nothing else.
    """

    __slots__ = ("simple", "iu", "ir", "iw", "oo", "inp", "out", "oth", "rates", "request_usd")

    def __init__(self, inp: tuple[Decimal, ...], out: tuple[Decimal, ...], oth: tuple[Decimal, ...]) -> None:
        self.inp = tuple(float(x * _MTOK) for x in inp)
        self.out = tuple(float(x * _MTOK) for x in out)
        self.oth = tuple(float(x * _MTOK) for x in oth)
        self.simple = inp[0] == 0 and inp[4] == 0 and not any(out[:4]) and not any(oth)
        self.iu, self.ir, self.iw, self.oo = self.inp[1], self.inp[2], self.inp[3], self.out[4]
        total = [a + b + c for a, b, c in zip(inp, out, oth, strict=True)]
        self.request_usd = float(total[0])
        self.rates = tuple(float(x * _MTOK) for x in total[1:])  # uncached, cache read, cache write, output

    def cost(self, unc: int, cr: int, cw: int, out: int) -> tuple[float, float, float]:
        ik, iu, ir, iw, io = self.inp
        ok, ou, orr, ow, oo = self.out
        xk, xu, xr, xw, xo = self.oth
        i = (ik + iu * unc + ir * cr + iw * cw + io * out) / _MTOK
        o = (ok + ou * unc + orr * cr + ow * cw + oo * out) / _MTOK
        x = (xk + xu * unc + xr * cr + xw * cw + xo * out) / _MTOK
        return i, o, i + o + x


class _Segment:
    """The prices of one period: tier thresholds (on total input tokens) and one row per interval."""

    __slots__ = ("thresholds", "rows")

    def __init__(self, thresholds: tuple[int, ...], rows: tuple[_Row, ...]) -> None:
        self.thresholds = thresholds
        self.rows = rows


class _NotLinear(Exception):
    """Prices that the float fast path cannot reproduce: use genai-prices on every call."""


def _to_ns(at: datetime | int | None) -> int:
    if at is None:
        return _time.time_ns()
    if isinstance(at, int):
        return at
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return ((at - _EPOCH) // timedelta(microseconds=1)) * 1000


def _ns_to_datetime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _tod_us(value: dtime) -> int:
    """A constraint's time of day as microseconds after UTC midnight (naive times are UTC)."""
    if value.tzinfo is not None:
        value = datetime.combine(_EPOCH_DATE, value).astimezone(UTC).timetz()
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


class _ComputedEntry:
    __slots__ = ("matched", "model", "provider", "ctx", "days", "tods", "segments", "single", "slow")

    def __init__(self, provider: gp.Provider, model: gp.ModelInfo, ctx: dict[str, str] | None) -> None:
        self.matched = f"{provider.id}/{model.id}"
        self.model = model
        self.provider = provider
        self.ctx = ctx
        self.slow = False
        constraints: list[object] = []
        if not isinstance(model.prices, gp.ModelPrice):
            constraints.extend(c.constraint for c in model.prices)
        if ctx:
            constraints.extend(v.constraint for v in model.price_variants or ())
        days: set[int] = set()
        tods: set[int] = set()
        for c in constraints:
            if c is None:
                continue
            if isinstance(c, gp.StartDateConstraint):
                days.add((c.start_date - _EPOCH_DATE).days)
            elif isinstance(c, gp.TimeOfDateConstraint):
                tods.update((_tod_us(c.start_time), _tod_us(c.end_time)))
            else:  # a constraint kind this module does not know: no segmenting, genai-prices each call
                self.slow = True
        self.days = tuple(sorted(days))
        self.tods = tuple(sorted(tods))
        self.segments: dict[tuple[int, int], _Segment | None] = {}
        # Prices that never change over time: one segment, built now (so a model that fails to
        # price fails here, at resolution, and is cached as unknown).
        self.single: _Segment | None = None
        if not (self.days or self.tods or self.slow):
            try:
                self.single = self._probe(_EPOCH)
            except _NotLinear:
                self.slow = True

    # --- building (slow, once per period) ---

    def _calc(self, when: datetime, inp: int, cr: int, cw: int, out: int) -> tuple[Decimal, Decimal, Decimal]:
        usage = gp.Usage(input_tokens=inp, cache_read_tokens=cr, cache_write_tokens=cw, output_tokens=out)
        res = self.model.calc_price(usage, self.provider, genai_request_timestamp=when, price_context=self.ctx)
        return res.input_price, res.output_price, res.total_price

    def _probe(self, when: datetime) -> _Segment:
        calc = self._calc
        usage0 = gp.Usage(input_tokens=0, cache_read_tokens=0, cache_write_tokens=0, output_tokens=0)
        model_price = self.model.calc_price(usage0, self.provider, genai_request_timestamp=when,
                                            price_context=self.ctx).model_price
        thresholds = tuple(sorted({
            tier.start for key, value in model_price.__dict__.items()
            if not key.startswith("_") and isinstance(value, gp.TieredPrices) for tier in value.tiers
        }))
        rows = []
        for k in range(len(thresholds) + 1):
            lo = 0 if k == 0 else thresholds[k - 1] + 1
            hi = thresholds[k] if k < len(thresholds) else lo + _MTOK
            f_lo = calc(when, lo, 0, 0, 0)
            if hi > lo:
                f_hi = calc(when, hi, 0, 0, 0)
                slope = tuple((b - a) / (hi - lo) for a, b in zip(f_lo, f_hi, strict=True))
                const = tuple(a - s * lo for a, s in zip(f_lo, slope, strict=True))
            else:  # an interval of one point (a tier starting at 0 or at the next token)
                f_hi, slope, const = f_lo, (Decimal(0),) * 3, f_lo
            if hi >= 1:
                d_cr = tuple(b - a for a, b in zip(f_hi, calc(when, hi, 1, 0, 0), strict=True))
                d_cw = tuple(b - a for a, b in zip(f_hi, calc(when, hi, 0, 1, 0), strict=True))
            else:  # only input 0 is in this interval, so no cache tokens can be either
                d_cr = d_cw = (Decimal(0),) * 3
            d_out = tuple(b - a for a, b in zip(f_hi, calc(when, hi, 0, 0, 1), strict=True))
            # Per component (input, output, total): k, uncached, cache read, cache write, output.
            comps = [
                (const[c], slope[c], slope[c] + d_cr[c], slope[c] + d_cw[c], d_out[c]) for c in range(3)
            ]
            inp, out, tot = comps
            oth = tuple(t - a - b for t, a, b in zip(tot, inp, out, strict=True))
            row = _Row(inp, out, oth)
            # Check linearity at a point using every count at once (cheap insurance against a
            # pricing shape this reduction does not model).
            probe_in = hi if hi >= 3 else lo
            if probe_in >= 3:
                got = calc(when, probe_in, 1, 1, 7)
                want = (const[c] + slope[c] * (probe_in - 2) + comps[c][2] + comps[c][3] + d_out[c] * 7 for c in range(3))
                if any(abs(g - w) > abs(g) * Decimal("1e-12") + Decimal("1e-18") for g, w in zip(got, want, strict=True)):
                    raise _NotLinear(self.matched)
            rows.append(row)
        return _Segment(thresholds, tuple(rows))

    def _segment(self, at: Any) -> _Segment | None:
        ns = _to_ns(at)
        day = ns // _NS_PER_DAY
        i = bisect_right(self.days, day)
        j = bisect_right(self.tods, (ns // 1000) % _US_PER_DAY) if self.tods else 0
        seg = self.segments.get((i, j), _MISS)
        if seg is _MISS:
            rep_day = self.days[i - 1] if i else (self.days[0] - 1 if self.days else day)
            rep_tod = self.tods[j - 1] if j else 0
            try:
                seg = self._probe(_EPOCH + timedelta(days=rep_day, microseconds=rep_tod))
            except (_NotLinear, ValueError, ArithmeticError, LookupError, TypeError):
                seg = None  # priced by genai-prices on each call (which may say "no price")
            self.segments[(i, j)] = seg
        return seg  # type: ignore[return-value]

    # --- quoting (fast) ---

    def quote(self, inp: int, out: int, cr: int, cw: int, at: Any) -> Quote | None:
        seg = self.single
        if seg is None:
            seg = None if self.slow else self._segment(at)
            if seg is None:
                return self._slow_quote(inp, out, cr, cw, at)
        th = seg.thresholds
        row = seg.rows[bisect_left(th, inp) if th else 0]
        unc = inp - cr - cw
        if row.simple:
            i = (row.iu * unc + row.ir * cr + row.iw * cw) / _MTOK
            o = row.oo * out / _MTOK
            t = i + o
        else:
            i, o, t = row.cost(unc, cr, cw, out)
        r = row.rates
        return Quote(t, i, o, "computed", self.matched, r[0], r[1], r[2], r[3], row.request_usd)

    def _slow_quote(self, inp: int, out: int, cr: int, cw: int, at: Any) -> Quote | None:
        try:
            i, o, t = self._calc(_ns_to_datetime(_to_ns(at)), inp, cr, cw, out)
        except (ValueError, ArithmeticError):
            return None
        return Quote(float(t), float(i), float(o), "computed", self.matched, None, None, None, None, float(t - i - o))


# --------------------------------------------------------------------------------------------
# One loaded snapshot and its caches


class _Bounded(dict):  # type: ignore[type-arg]
    """A dict that forgets its oldest entries past `limit` (FIFO: cheap, and enough against floods)."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        if len(self) >= self.limit:
            try:
                del self[next(iter(self))]
            except (StopIteration, KeyError, RuntimeError):  # another thread got there first
                pass
        self[key] = value


class _Data:
    __slots__ = ("providers", "source", "loaded_at", "entries", "provider_ids")

    def __init__(self, providers: list[gp.Provider], source: str, cache_size: int) -> None:
        self.providers = providers
        self.source = source
        self.loaded_at = datetime.now(UTC)
        self.entries = _Bounded(cache_size)
        self.provider_ids = _Bounded(1024)

    def provider(self, provider_id: str) -> gp.Provider | None:
        found = self.provider_ids.get(provider_id, _MISS)
        if found is _MISS:
            found = find_provider_by_id(self.providers, provider_id)
            self.provider_ids.put(provider_id, found)
        return found  # type: ignore[return-value]

    def find(self, provider_id: str | None, model_ref: str) -> tuple[gp.Provider, gp.ModelInfo] | None:
        """genai-prices' `DataSnapshot.find_provider_model`, without its unbounded caches."""
        ref = model_ref.lower()
        if provider_id is not None:
            provider = self.provider(provider_id)
        else:
            provider = next((p for p in self.providers if p.model_match is not None and p.model_match.is_match(ref)), None)
        if provider is None:
            return None
        model = provider.find_model(ref, all_providers=self.providers)
        return None if model is None else (provider, model)


def _bundled_providers() -> list[gp.Provider]:
    from genai_prices.data_snapshot import _bundled_snapshot  # the package's offline data

    return _bundled_snapshot().providers


def parse_price_data(content: bytes) -> list[gp.Provider]:
    """Parse genai-prices JSON data (a list of providers) as `UpdatePrices.fetch` does."""
    from genai_prices.types import _providers_from_raw

    raw = json.loads(content)
    if not isinstance(raw, list):
        raise ValueError("expected a JSON list of providers")
    providers = _providers_from_raw(raw)
    if not providers:
        raise ValueError("no providers in the price data")
    return providers


# --------------------------------------------------------------------------------------------
# The table


class PriceTable:
    """Prices LLM calls: overrides first, then genai-prices data (bundled, or refreshed).

    `quote` is safe to call from the event loop; `start()` runs the optional refresh in a daemon
    thread, which parses new data off the loop and swaps it in atomically.
    """

    def __init__(
        self,
        overrides: Sequence[Override] = (),
        *,
        refresh: RefreshConfig | None = None,
        cache_size: int = 10_000,
        providers: list[gp.Provider] | None = None,
    ) -> None:
        self._overrides = [
            (ov, re.compile(ov.model_regex, re.IGNORECASE) if ov.model_regex else None,
             ov.model.casefold() if ov.model else None, ov.provider.casefold() if ov.provider else None,
             _OverrideEntry(ov))
            for ov in overrides
        ]
        self._cache_size = cache_size
        self._refresh = refresh
        self._data = _Data(providers if providers is not None else _bundled_providers(), "bundled", cache_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_digest: bytes | None = None
        self._warned: set[str] = set()

    # --- quoting ---

    def quote(
        self,
        model: str,
        provider: str | None = None,
        *,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        at: datetime | int | None = None,
        service_tier: str | None = None,
    ) -> Quote | None:
        """The price of one call, or None when no price is known (never a guess).

        `provider` is the canonical provider name (None: genai-prices infers it from the model).
        `input_tokens` includes cache reads and writes (OTel). `at` is the call's start time
        (a datetime, naive = UTC, or unix nanoseconds); None means now.
        """
        data = self._data
        key = (provider, model, service_tier)
        entry = data.entries.get(key, _MISS)
        if entry is _MISS:
            entry = self._resolve(data, provider, model, service_tier)
            data.entries.put(key, entry)
        if entry is None:
            return None
        inp = input_tokens or 0
        out = output_tokens if output_tokens and output_tokens > 0 else 0
        cr = cache_read_tokens if cache_read_tokens and cache_read_tokens > 0 else 0
        cw = cache_write_tokens if cache_write_tokens and cache_write_tokens > 0 else 0
        if inp < cr + cw:  # cache tokens not included in input: count them in (semconv says they are)
            inp = cr + cw
        return entry.quote(inp, out, cr, cw, at)

    def _resolve(self, data: _Data, provider: str | None, model: str, service_tier: str | None) -> Any:
        if not model:
            return None
        try:
            stripped = strip_provider_prefix(model)
        except Exception:  # noqa: BLE001 - a helper's bug must not stop pricing
            stripped = model
        names = (model,) if not stripped or stripped == model else (model, stripped)
        folded = tuple(n.casefold() for n in names)
        prov = provider.casefold() if provider else None
        for _ov, regex, exact, ov_provider, entry in self._overrides:
            if ov_provider is not None and ov_provider != prov:
                continue
            if exact is not None and exact in folded:
                return entry
            if regex is not None and any(regex.fullmatch(n) for n in names):
                return entry
        provider_id: str | None = None
        if provider is not None:
            provider_id = GENAI_PRICES_PROVIDER.get(provider) or GENAI_PRICES_PROVIDER.get(provider.lower())
            if provider_id is None:
                # Not in the table: only an exact genai-prices id counts (no substring matching,
                # which would price e.g. a self-hosted "vllm" model as someone else's).
                provider_id = provider.lower() if any(p.id == provider.lower() for p in data.providers) else None
                if provider_id is None:
                    return None
        ctx = {"service_tier": service_tier.lower()} if service_tier else None
        for name in names:
            try:
                found = data.find(provider_id, name)
                if found is not None:
                    return _ComputedEntry(found[0], found[1], ctx)
            except (ValueError, ArithmeticError, LookupError, TypeError) as e:
                _log.debug("price entry unusable", provider=provider, model=name, error=str(e))
                return None
        return None

    # --- data ---

    @property
    def data_source(self) -> str:
        return self._data.source

    @property
    def loaded_at(self) -> datetime:
        return self._data.loaded_at

    def load(self, providers: list[gp.Provider], source: str) -> None:
        """Use `providers` from now on (one reference swap: every cache starts empty)."""
        self._data = _Data(providers, source, self._cache_size)

    def refresh_now(self) -> bool:
        """Fetch and load the configured data once; False (old data kept) on failure or no change.

        Blocking: call it from a thread, never from the event loop.
        """
        cfg = self._refresh
        if cfg is None:
            return False
        stage = "read"
        try:
            if cfg.url is not None:
                stage = "fetch"
                content = self._fetch(cfg.url, cfg.timeout)
            else:
                content = Path(cfg.file or "").read_bytes()
            digest = hashlib.sha256(content).digest()
            if digest == self._last_digest:
                return False
            stage = "parse"
            providers = parse_price_data(content)
        except Exception as e:  # noqa: BLE001 - any failure keeps the old data
            kind = f"{stage}:{type(e).__name__}"
            if kind not in self._warned:
                self._warned.add(kind)
                _log.warning("price data refresh failed; keeping the current prices", source=cfg.source,
                             stage=stage, error=f"{type(e).__name__}: {e}"[:500])
            return False
        self._last_digest = digest
        self.load(providers, cfg.source)
        if self._warned:
            self._warned.clear()
        _log.info("price data loaded", source=cfg.source, providers=len(providers))
        return True

    @staticmethod
    def _fetch(url: str, timeout: float) -> bytes:
        import httpx2  # genai-prices' own HTTP client (as in UpdatePrices.fetch)

        r = httpx2.get(url, timeout=httpx2.Timeout(timeout=timeout, connect=min(timeout, 5.0)))
        r.raise_for_status()
        return r.content

    def start(self) -> None:
        """Start the periodic refresh in a daemon thread, if one is configured (idempotent)."""
        if self._refresh is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="otelgate-price-refresh", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        interval = self._refresh.interval if self._refresh else 3600.0
        while not self._stop.is_set():
            try:
                self.refresh_now()
            except Exception as e:  # noqa: BLE001 - the thread must survive anything
                _log.error("price data refresh crashed", error=str(e)[:500])
            if self._stop.wait(interval):
                return

