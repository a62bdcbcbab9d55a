"""Generates the seeded e-commerce sample dataset that the feature store reads (Parquet).

    .venv/bin/pip install -r scripts/requirements-data.txt
    .venv/bin/python scripts/make_sample_data.py --size small            # -> features/data/
    .venv/bin/python scripts/make_sample_data.py --size large [--out DIR] # -> ~/.cache/ferrite-data/large

Deterministic: a fixed seed, one random stream per stage, stable sorts and integer arithmetic for
every windowed sum, so two runs with the same pinned numpy/pyarrow write byte-identical files.

The events come first (users, merchants, transactions with fraud, items, orders); every statistic
is then computed from those events, point in time: a snapshot at time t only sees events at or
before t, and a window of length w covers (t - w, t]. Events that become known later than they
happen (a chargeback, a return) count only once they are known. features/data/README.md
documents every column.
"""

import argparse
import os
import sys
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SEED = 20260801

SEC = 1_000_000  # timestamps are int64 microseconds since the Unix epoch, UTC
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
START = int(datetime(2026, 8, 1, tzinfo=timezone.utc).timestamp()) * SEC
BIG = 1 << 20  # composite sort keys: entity * BIG + time bin (bins stay well below BIG)

# Distinct id ranges per entity, so that joining on the wrong key finds nothing.
USER_ID0, MERCHANT_ID0, ITEM_ID0 = 1_000_000, 2_000_000, 3_000_000
TXN_ID0, ORDER_ID0 = 10_000_000, 50_000_000


@dataclass(frozen=True)
class Size:
    days: int
    users: int
    merchants: int
    items: int
    txns: int
    orders: int
    zstd_level: int
    sessions: int  # recommendation sessions of SLATE impressions each


SIZES = {
    "small": Size(days=60, users=2_000, merchants=200, items=500, txns=30_000, orders=8_000, zstd_level=19,
                  sessions=15_000),
    "large": Size(
        days=90, users=150_000, merchants=5_000, items=20_000, txns=3_700_000, orders=950_000, zstd_level=3,
        sessions=600_000,
    ),
}

# ISO-2 country, currency, UTC offset in hours (fixed, summer time), share of users.
COUNTRIES = [
    ("DE", "EUR", 2, 0.20), ("FR", "EUR", 2, 0.13), ("GB", "GBP", 1, 0.15), ("US", "USD", -5, 0.13),
    ("NL", "EUR", 2, 0.07), ("ES", "EUR", 2, 0.07), ("IT", "EUR", 2, 0.07), ("IE", "EUR", 1, 0.04),
    ("BE", "EUR", 2, 0.04), ("AT", "EUR", 2, 0.04), ("PT", "EUR", 1, 0.03),
]
CURRENCIES = ["EUR", "USD", "GBP"]
EUR_RATE = np.array([1.0, 0.86, 1.16])  # EUR per unit; statistics convert amounts with these
DEVICES = ["web", "ios", "android"]
CHANNELS = ["web", "ios", "android", "partner"]
TIERS = ["none", "silver", "gold", "platinum"]
# Merchant category, amount multiplier, share of merchants, share of risky merchants in it.
MERCHANT_CATEGORIES = [
    ("grocery", 0.6, 0.16, 0.01), ("restaurants", 0.8, 0.12, 0.01), ("fuel", 1.3, 0.06, 0.02),
    ("fashion", 1.6, 0.12, 0.03), ("electronics", 4.0, 0.08, 0.25), ("travel", 6.0, 0.05, 0.10),
    ("digital_goods", 0.5, 0.07, 0.30), ("gift_cards", 2.0, 0.04, 0.45), ("gaming", 0.7, 0.06, 0.30),
    ("health_beauty", 1.0, 0.08, 0.02), ("home_garden", 2.2, 0.08, 0.02), ("entertainment", 1.0, 0.08, 0.05),
]
# Item category, median price (EUR), share of items, return rate.
ITEM_CATEGORIES = [
    ("fashion", 39, 0.22, 0.22), ("electronics", 149, 0.12, 0.08), ("home_garden", 45, 0.12, 0.06),
    ("health_beauty", 18, 0.10, 0.04), ("sports", 55, 0.08, 0.09), ("toys", 25, 0.08, 0.05),
    ("books", 15, 0.10, 0.02), ("grocery", 8, 0.06, 0.01), ("jewelry", 89, 0.05, 0.12),
    ("pet_supplies", 22, 0.07, 0.03),
]
EMBEDDING_DIM = 16

# Local-time hour-of-day shapes (relative weights).
SHOP_HOURS = [1.2, 0.7, 0.45, 0.35, 0.35, 0.5, 1.0, 2.0, 3.2, 4.0, 4.6, 5.2,
              6.2, 5.8, 5.2, 5.0, 5.2, 5.8, 6.4, 7.0, 7.2, 6.4, 4.6, 2.6]
ORDER_HOURS = [1.5, 0.8, 0.4, 0.3, 0.3, 0.4, 0.8, 1.5, 2.5, 3.2, 3.8, 4.2,
               4.8, 4.6, 4.2, 4.0, 4.2, 4.8, 5.8, 7.0, 8.0, 8.2, 6.5, 3.5]
FRAUD_HOURS = [6, 7, 7, 7, 6, 5, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 4, 5]
NIGHT_END_HOUR = 6  # "night" is local hour 0-5

BURST_SHARE = 0.011  # share of transactions that come from fraud bursts
BURST_FRAUD_P = 0.9  # share of burst transactions that end up labelled (reported) as fraud
BACKGROUND_FRAUD = 0.0045  # mean fraud probability of the ordinary transactions


def chargeback_delay_days(txn_id):
    """A fraudulent transaction is charged back this many days after it happened."""
    return 7 + txn_id % 38


def return_delay_days(order_id):
    """A returned order is recorded as returned this many days after it was placed."""
    return 3 + order_id % 25


def rng(seed, stage):
    return np.random.default_rng([seed, zlib.crc32(stage.encode())])


def ceil_div(a, b):
    return -((-a) // b)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def shift_to_rate(logit, target):
    """Adds the constant that makes the mean of sigmoid(logit) equal target."""
    lo, hi = -30.0, 30.0
    for _ in range(45):
        mid = (lo + hi) / 2
        if sigmoid(logit + mid).mean() > target:
            hi = mid
        else:
            lo = mid
    return logit + (lo + hi) / 2


def zipf_weights(r, n, s):
    """Zipf-like popularity: the entity with rank k gets weight 1/k^s; ranks shuffled."""
    return r.permutation(1.0 / np.arange(1, n + 1) ** s)


def place_in_day(r, ts, offset, hours, lo, hi):
    """Keeps each timestamp's local day but redraws its local time of day from the hour shape."""
    p = np.asarray(hours, float) / np.sum(hours)
    day = (ts + offset) // DAY
    hour = r.choice(24, size=len(ts), p=p)
    out = day * DAY + hour * HOUR + r.integers(0, HOUR, len(ts)) - offset
    out = np.where(out < lo, out + DAY, out)
    out = np.where(out >= hi, out - DAY, out)
    bad = (out < lo) | (out >= hi)
    return np.where(bad, lo + ((hi - lo) * r.random(len(ts))).astype(np.int64), out)


def local_hour(ts, offset):
    return ((ts + offset) // HOUR) % 24


# ----------------------------------------------------------------------------------------------
# Window helpers. Events are sorted by a composite key entity * BIG + bin, where bin is the
# event time rounded up to the snapshot grid, so an event belongs to the window (t - w, t] of
# the snapshot at grid point t exactly when t - w < bin <= t.


def window_lo(key, q, w):
    """Index of the first event with key > q - w (the window's start) in the sorted keys."""
    return np.searchsorted(key, q - w, "right")


def intervals_containing(a_key, b_key, q):
    """How many half-open intervals [a, b) of q's entity contain q (empty intervals ignored)."""
    keep = a_key < b_key
    return np.searchsorted(np.sort(a_key[keep]), q, "right") - np.searchsorted(np.sort(b_key[keep]), q, "right")


def distinct_in_window(entity, bins, value, q, w):
    """Distinct values among the entity's events in (q - w, q], for each query key q.

    An event counts when it is the first of its value inside the window, that is while its
    predecessor with the same value has left the window: for grid points
    [max(bin, prev_bin + w), bin + w). Summing those intervals gives the distinct count.
    """
    # One int64 key (entity, value, bin) sorts several times faster than lexsort on three
    # arrays; the order of equal keys does not change the counts.
    nv = int(value.max()) + 1
    assert (int(entity.max()) + 1) * nv * BIG < 2**63, "sort key overflow"
    o = np.argsort((entity * nv + value.astype(np.int64)) * BIG + bins)
    e, b, v = entity[o], bins[o], value[o]
    same = np.r_[False, (e[1:] == e[:-1]) & (v[1:] == v[:-1])]
    prev = np.where(same, np.r_[0, b[:-1]], -BIG)
    a = np.maximum(b, prev + w)
    return intervals_containing(e * BIG + a, e * BIG + b + w, q)


def range_max(v, lo, hi):
    """max(v[lo:hi]) for each pair (all ranges non-empty), by a sparse table built level by level."""
    k = np.frexp((hi - lo).astype(np.float64))[1] - 1  # floor(log2(length))
    out = np.empty(len(lo), v.dtype)
    level = v
    for p in range(int(k.max()) + 1):
        sel = np.nonzero(k == p)[0]
        out[sel] = np.maximum(level[lo[sel]], level[hi[sel] - (1 << p)])
        if p < k.max():
            level = np.maximum(level[: -(1 << p)], level[(1 << p):])
    return out


def prefix(x):
    return np.concatenate([[0], np.cumsum(x)])


# ----------------------------------------------------------------------------------------------
# Entities


def make_users(cfg, seed):
    r = rng(seed, "users")
    n = cfg.users
    end = START + cfg.days * DAY
    country = r.choice(len(COUNTRIES), n, p=np.array([c[3] for c in COUNTRIES]) / sum(c[3] for c in COUNTRIES))
    existing = r.random(n) < 0.75
    age_at_start = np.exp(r.normal(np.log(400), 0.9, n))  # days before START, in (1, 3000)
    age_at_start = np.where(age_at_start > 3000, r.uniform(1000, 3000, n), np.maximum(age_at_start, 1 + r.random(n)))
    signup = np.where(
        existing,
        START - (age_at_start * DAY).astype(np.int64),
        START + (r.random(n) * 0.8 * cfg.days * DAY).astype(np.int64),
    )
    channel = r.choice(4, n, p=[0.45, 0.25, 0.22, 0.08])
    primary = np.where(channel < 3, channel, r.integers(0, 3, n))
    secondary = (primary + r.integers(1, 3, n)) % 3
    activity = np.exp(r.normal(0.0, 1.0, n)).clip(0.02, 40.0)
    activity[r.random(n) < 0.08] *= 0.05  # dormant accounts
    email_risk = np.where(r.random(n) < 0.06, r.beta(5, 2, n), r.beta(1.3, 9, n)).round(4)
    verified = r.random(n) < np.where(existing, 0.8, 0.45)
    # Loyalty grows with activity and tenure; new accounts start with none.
    loyalty = np.log(activity) + 0.3 * np.log(age_at_start) + r.normal(0, 0.7, n)
    cuts = np.quantile(loyalty[existing], [0.55, 0.80, 0.94]) if existing.any() else [np.inf] * 3
    tier = np.where(existing, np.searchsorted(cuts, loyalty), 0)
    return NS(
        n=n, id=USER_ID0 + 1 + np.arange(n), country=country, signup=signup, channel=channel,
        primary=primary, secondary=secondary, third=3 - primary - secondary,
        p_primary=r.beta(18, 1.5, n), activity=activity, spend_mu=r.normal(np.log(32), 0.5, n),
        email_risk=email_risk, verified=verified, tier=tier,
        home=np.array([CURRENCIES.index(c[1]) for c in COUNTRIES])[country],
        offset=np.array([c[2] * HOUR for c in COUNTRIES])[country],
        active_from=np.maximum(signup, START), end=end,
    )


def make_merchants(cfg, seed):
    r = rng(seed, "merchants")
    n = cfg.merchants
    cat_share = np.array([c[2] for c in MERCHANT_CATEGORIES])
    category = r.choice(len(MERCHANT_CATEGORIES), n, p=cat_share / cat_share.sum())
    risky = r.random(n) < np.array([c[3] for c in MERCHANT_CATEGORIES])[category]
    home = r.random(n) < 0.85
    country = np.where(home, r.choice(len(COUNTRIES), n, p=[c[3] / 0.97 for c in COUNTRIES]),
                       r.integers(0, len(COUNTRIES), n))
    return NS(
        n=n, id=MERCHANT_ID0 + 1 + np.arange(n), category=category, country=country, risky=risky,
        popularity=zipf_weights(r, n, 0.95), amount_mult=np.array([c[1] for c in MERCHANT_CATEGORIES])[category],
    )


# ----------------------------------------------------------------------------------------------
# Transactions, fraud, declines, chargebacks


def make_transactions(cfg, seed, U, M):
    r = rng(seed, "transactions")
    end = U.end
    n_burst = round(BURST_SHARE * cfg.txns)
    n_reg = cfg.txns - n_burst

    # Ordinary transactions: per-user counts follow activity over the time the account exists.
    span = end - U.active_from
    weight = U.activity * span
    u = np.repeat(np.arange(U.n), r.multinomial(n_reg, weight / weight.sum()))
    ts = U.active_from[u] + (r.random(n_reg) * span[u]).astype(np.int64)
    ts = place_in_day(r, ts, U.offset[u], SHOP_HOURS, U.active_from[u], end)
    o = np.lexsort((ts, u))
    u, ts = u[o], ts[o]
    # Shopping sessions: a fifth of transactions follow the user's previous one within minutes.
    follow = np.r_[False, (u[1:] == u[:-1]) & (r.random(n_reg - 1) < 0.2)]
    gap = SEC + r.exponential(12 * MIN, n_reg).astype(np.int64)
    ts = np.where(follow, np.minimum(np.r_[0, ts[:-1]] + gap, end - 1), ts)

    favourites = r.choice(M.n, (U.n, 4), p=M.popularity / M.popularity.sum())
    merchant = np.where(
        r.random(n_reg) < 0.55, favourites[u, r.integers(0, 4, n_reg)],
        r.choice(M.n, n_reg, p=M.popularity / M.popularity.sum()),
    )
    device = np.where(r.random(n_reg) < U.p_primary[u], U.primary[u], U.secondary[u])
    device = np.where(r.random(n_reg) < 0.01, U.third[u], device)  # the odd legitimate new device
    currency = np.where(r.random(n_reg) < 0.93, U.home[u], (U.home[u] + r.integers(1, 3, n_reg)) % 3)
    eur = np.exp(U.spend_mu[u] + np.log(M.amount_mult[merchant]) + r.normal(0, 0.85, n_reg))

    # Fraud bursts: account takeovers (another device, at night, big amounts at risky merchants)
    # and fresh accounts opened for fraud that spend within days of signing up.
    lens = 1 + r.poisson(1.8, n_burst)
    cs = np.cumsum(lens)
    nb = int(np.searchsorted(cs, n_burst)) + 1
    lens = lens[:nb]
    lens[-1] -= cs[nb - 1] - n_burst
    fresh = r.random(nb) < 0.35
    new_users = np.nonzero(U.signup >= START)[0]
    w_new = (1 + 4 * U.email_risk[new_users]) * (1 + 1.5 * ~U.verified[new_users])
    w_old = np.sqrt(U.activity) * (1 + 2 * U.email_risk)
    victim = np.where(
        fresh & (len(new_users) > 0),
        new_users[r.choice(len(new_users), nb, p=w_new / w_new.sum())] if len(new_users) else 0,
        r.choice(U.n, nb, p=w_old / w_old.sum()),
    )
    latest = end - 12 * HOUR
    lo = np.minimum(U.active_from[victim], latest - HOUR)
    start = np.where(
        fresh, U.signup[victim] + r.exponential(1.5 * DAY, nb).astype(np.int64),
        lo + (r.random(nb) * (latest - lo)).astype(np.int64),
    ).clip(lo, latest)
    start = place_in_day(r, start, U.offset[victim], FRAUD_HOURS, lo, latest)
    b = np.repeat(np.arange(nb), lens)
    step = np.where(np.r_[True, b[1:] != b[:-1]], 0, SEC + r.exponential(30 * MIN, n_burst).astype(np.int64))
    within = np.cumsum(step)
    within -= np.repeat(within[np.r_[0, np.cumsum(lens)[:-1]]], lens)
    bu = victim[b]
    bts = np.minimum(start[b] + within, end - 1)
    bdev = np.where(fresh, U.primary[victim], np.where(r.random(nb) < 0.75, U.third[victim], U.secondary[victim]))[b]
    bcur = np.where(r.random(nb) < 0.55, U.home[victim], (U.home[victim] + r.integers(1, 3, nb)) % 3)[b]
    risky_pop = M.popularity * (1 + 8 * M.risky)
    bmerchant = r.choice(M.n, n_burst, p=risky_pop / risky_pop.sum())
    beur = np.exp(U.spend_mu[bu] + np.log(M.amount_mult[bmerchant]) + np.log(r.uniform(2, 8, n_burst))
                  + r.normal(0, 0.4, n_burst))
    blabel = r.random(n_burst) < BURST_FRAUD_P

    # All transactions, by user then time.
    u = np.r_[u, bu]
    ts = np.r_[ts, bts]
    merchant = np.r_[merchant, bmerchant]
    device = np.r_[device, bdev]
    currency = np.r_[currency, bcur]
    eur = np.r_[eur, beur].clip(0.5, 20_000)
    burst = np.r_[np.zeros(n_reg, bool), np.ones(n_burst, bool)]
    burst_label = np.r_[np.zeros(n_reg, bool), blabel]
    o = np.lexsort((burst, ts, u))
    u, ts, merchant, device, currency, eur, burst, burst_label = (
        x[o] for x in (u, ts, merchant, device, currency, eur, burst, burst_label))
    amount = np.maximum(np.round(eur / EUR_RATE[currency], 2), 0.01)
    cents = eur_cents(amount, currency)

    # Per-transaction risk signals, from the user's own history only.
    n = len(u)
    first = np.r_[True, u[1:] != u[:-1]]
    start_idx = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    prior_n = np.arange(n) - start_idx
    csum = np.cumsum(cents) - cents
    prior_sum = csum - csum[start_idx]
    ratio = np.where(prior_n > 0, cents / np.maximum(prior_sum / np.maximum(prior_n, 1), 1), 1.0)
    new_device = first_use(u, device, ts) & ~first
    night = local_hour(ts, U.offset[u]) < NIGHT_END_HOUR
    young = (ts - U.signup[u]) < 14 * DAY
    signals = (1.4 * night + 1.6 * new_device + 1.1 * np.log(ratio.clip(0.2, 20)) + 1.6 * M.risky[merchant]
               + 2.0 * U.email_risk[u] + 0.5 * ~U.verified[u] + 0.9 * young)
    reg = ~burst
    p_reg = sigmoid(shift_to_rate(signals[reg], BACKGROUND_FRAUD))
    is_fraud = burst_label.copy()
    is_fraud[reg] = r.random(reg.sum()) < p_reg
    # The upstream model's score at authorisation: the same signals, noisy, not the label.
    score = np.round(sigmoid(shift_to_rate(signals + r.normal(0, 0.8, n), 0.03)), 4)

    # Declined attempts (not in the table: only authorised transactions are).
    p_decl = sigmoid(-4.6 + 1.0 * ~U.verified[u] + 2.0 * U.email_risk[u])
    n_decl = np.where(burst, r.poisson(1.2, n), (r.random(n) < p_decl).astype(np.int64))
    du = np.repeat(u, n_decl)
    dts = np.repeat(ts, n_decl) - (10 * SEC + r.random(n_decl.sum()) * 20 * MIN).astype(np.int64)
    keep = dts >= U.active_from[du]

    # Transaction ids in time order; chargebacks follow from the id.
    by_time = np.lexsort((u, ts))
    txn_id = np.empty(n, np.int64)
    txn_id[by_time] = TXN_ID0 + 1 + np.arange(n)
    chargeback_ts = np.where(is_fraud, ts + chargeback_delay_days(txn_id) * DAY, -1)
    return NS(
        n=n, u=u, ts=ts, merchant=merchant, device=device, currency=currency, amount=amount, cents=cents,
        is_fraud=is_fraud, burst=burst, night=night, new_device=new_device, score=score, id=txn_id,
        by_time=by_time, chargeback_ts=chargeback_ts, decline_u=du[keep], decline_ts=dts[keep],
    )


def eur_cents(amount, currency):
    """The EUR value of an amount in integer cents, as the statistics use it."""
    return np.rint(amount * EUR_RATE[currency] * 100).astype(np.int64)


def first_use(u, value, ts):
    """True where the user uses this value for the first time (inputs sorted by user, time)."""
    o = np.lexsort((ts, value, u))
    firsts = np.r_[True, (u[o][1:] != u[o][:-1]) | (value[o][1:] != value[o][:-1])]
    out = np.empty(len(u), bool)
    out[o] = firsts
    return out


# ----------------------------------------------------------------------------------------------
# Items and orders


def make_items(cfg, seed):
    r = rng(seed, "items")
    n = cfg.items
    weeks = ceil_div(cfg.days, 7)  # snapshots at START + 7k days, k < weeks
    share = np.array([c[2] for c in ITEM_CATEGORIES])
    category = r.choice(len(ITEM_CATEGORIES), n, p=share / share.sum())
    launch = np.where(r.random(n) < 0.9, 0, r.integers(1, weeks, n))
    retire = np.where((r.random(n) < 0.04) & (launch < weeks - 1), r.integers(np.minimum(launch + 1, weeks - 1), weeks), weeks)
    base = np.exp(np.log(np.array([c[1] for c in ITEM_CATEGORIES])[category]) + r.normal(0, 0.6, n))
    drift = np.exp(np.cumsum(r.normal(0, 0.02, (n, weeks)), axis=1))
    raw = base[:, None] * drift
    price = np.where(raw >= 5, np.floor(raw) + 0.99, np.round(raw, 1) + 0.09).round(2)
    promo = r.random((n, weeks))
    discount = np.where(promo < 0.72, 0.0, np.where(promo < 0.97, r.integers(1, 9, (n, weeks)) * 0.05,
                                                    r.integers(10, 19, (n, weeks)) * 0.05)).round(2)
    centroids = r.normal(0, 1, (len(ITEM_CATEGORIES), EMBEDDING_DIM))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    emb = centroids[category] + r.normal(0, 0.3, (n, EMBEDDING_DIM))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    return NS(
        n=n, weeks=weeks, id=ITEM_ID0 + 1 + np.arange(n), category=category, launch=launch, retire=retire,
        price=price, discount=discount, embedding=emb, popularity=zipf_weights(r, n, 0.85),
        quality=r.normal(4.0, 0.45, n).clip(1.5, 4.9), rating_bias=r.normal(0, 1, n),
        stock0=np.exp(r.normal(np.log(120), 0.8, n)).astype(np.int64),
        reviews0=np.where(launch == 0, np.exp(r.normal(np.log(30), 1.2, n)), 0).astype(np.int64),
        return_rate=np.array([c[3] for c in ITEM_CATEGORIES])[category],
    )


def make_orders(cfg, seed, U, I):
    r = rng(seed, "orders")
    n = cfg.orders
    span = U.end - U.active_from
    weight = U.activity**0.8 * span
    u = np.repeat(np.arange(U.n), r.multinomial(n, weight / weight.sum()))
    ts = U.active_from[u] + (r.random(n) * span[u]).astype(np.int64)
    ts = place_in_day(r, ts, U.offset[u], ORDER_HOURS, U.active_from[u], U.end)
    week = (ts - START) // (7 * DAY)
    item = np.empty(n, np.int64)
    for k in range(I.weeks):  # only items on sale that week
        sel = np.nonzero(week == k)[0]
        live = np.nonzero((I.launch <= k) & (I.retire > k))[0]
        item[sel] = live[r.choice(len(live), len(sel), p=I.popularity[live] / I.popularity[live].sum())]
    quantity = np.where(r.random(n) < 0.25, 1 + r.geometric(0.6, n), 1)
    unit_price = np.round(I.price[item, week] * (1 - I.discount[item, week]), 2)
    p_return = I.return_rate[item] * (1 + 0.8 * (I.quality[item] < 3.5)) * (1 + 0.5 * (quantity > 1))
    returned = r.random(n) < p_return
    reviewed = r.random(n) < 0.1
    o = np.lexsort((u, ts))
    u, ts, item, quantity, unit_price, returned, reviewed = (
        x[o] for x in (u, ts, item, quantity, unit_price, returned, reviewed))
    order_id = ORDER_ID0 + 1 + np.arange(n)
    return NS(n=n, id=order_id, u=u, ts=ts, item=item, quantity=quantity, unit_price=unit_price,
              returned=returned, reviewed=reviewed,
              value_cents=quantity * np.rint(unit_price * 100).astype(np.int64),
              return_ts=np.where(returned, ts + return_delay_days(order_id) * DAY, -1))


# ----------------------------------------------------------------------------------------------
# Tables


def ts_array(x):
    return pa.array(np.asarray(x, np.int64).view("datetime64[us]"), pa.timestamp("us", tz="UTC"))


def str_array(codes, names):
    return pa.DictionaryArray.from_arrays(pa.array(np.asarray(codes, np.int32)), pa.array(names)).dictionary_decode()


def f64(x, null=None):
    return pa.array(np.asarray(x, np.float64), pa.float64(), mask=null if null is not None and null.any() else None)


def i64(x):
    return pa.array(np.asarray(x, np.int64), pa.int64())


def bools(x):
    return pa.array(np.asarray(x, bool), pa.bool_())


def transactions_table(T, U, M):
    o = T.by_time
    return pa.table({
        "transaction_id": i64(T.id[o]),
        "user_id": i64(U.id[T.u[o]]),
        "merchant_id": i64(M.id[T.merchant[o]]),
        "amount": f64(T.amount[o]),
        "currency": str_array(T.currency[o], CURRENCIES),
        "device_type": str_array(T.device[o], DEVICES),
        "event_timestamp": ts_array(T.ts[o]),
        "is_fraud": bools(T.is_fraud[o]),
    })


def user_profile_table(seed, U):
    r = rng(seed, "user_profile")
    n = U.n
    # Signup rows, then 1-2 later updates (verification, loyalty tier) for about a fifth of users.
    updated = r.random(n) < 0.2
    n_updates = np.where(updated, 1 + (r.random(n) < 0.25), 0)
    rows_u = [np.arange(n)]
    rows_ts = [U.signup]
    rows_verified = [U.verified]
    rows_tier = [U.tier]
    verified, tier, last = U.verified.copy(), U.tier.copy(), U.active_from + DAY
    for k in (1, 2):
        sel = np.nonzero(n_updates >= k)[0]
        at = last[sel] + (r.random(len(sel)) * (U.end - last[sel]) / (3 - k)).astype(np.int64)
        verify = ~verified[sel] & (r.random(len(sel)) < 0.7)
        step = np.where(r.random(len(sel)) < 0.8, 1, -1)
        new_tier = np.where(verify, tier[sel], (tier[sel] + step).clip(0, 3))
        new_tier = np.where(~verify & (new_tier == tier[sel]), tier[sel] - step, new_tier)  # at the ends
        verified[sel] |= verify
        tier[sel] = new_tier
        last[sel] = at + HOUR
        rows_u.append(sel)
        rows_ts.append(at)
        rows_verified.append(verified[sel].copy())
        rows_tier.append(new_tier)
    ru, rts = np.concatenate(rows_u), np.concatenate(rows_ts)
    rverified, rtier = np.concatenate(rows_verified), np.concatenate(rows_tier)
    o = np.lexsort((ru, rts))
    ru, rts, rverified, rtier = ru[o], rts[o], rverified[o], rtier[o]
    m = len(ru)
    risk = U.email_risk[ru].copy()
    # A few bad rows for the data-quality rules: a missing risk, or one outside [0, 1].
    bad = r.random(m) < 0.005
    missing = bad & (r.random(m) < 0.5)
    risk = np.where(bad & ~missing, np.round(1 + r.uniform(0.01, 4, m), 4), risk)
    created = rts + (SEC + r.random(m) * 5 * MIN).astype(np.int64)
    return pa.table({
        "user_id": i64(U.id[ru]),
        "country": str_array(U.country[ru], [c[0] for c in COUNTRIES]),
        "signup_channel": str_array(U.channel[ru], CHANNELS),
        "account_age_days": i64((rts - U.signup[ru]) // DAY),
        "is_verified": bools(rverified),
        "loyalty_tier": str_array(rtier, TIERS),
        "email_domain_risk": f64(risk, missing),
        "event_timestamp": ts_array(rts),
        "created_timestamp": ts_array(created),
    })


def hourly_snapshots(T):
    """One snapshot per (user, hour with a transaction), at the end of that hour. Per
    transaction: its hour bin and (user, hour) key; per snapshot: its last transaction, key,
    user, time, and the end (exclusive) of its transactions."""
    bins = ceil_div(T.ts - START, HOUR)
    key = T.u * BIG + bins
    last = np.nonzero(np.r_[key[1:] != key[:-1], True])[0]
    return bins, key, last, key[last], T.u[last], START + bins[last] * HOUR, last + 1


def user_stats_table(seed, T, O, U):
    r = rng(seed, "user_stats")
    bins, key, last, q, su, snap_ts, hi = hourly_snapshots(T)
    lo = {w: window_lo(key, q, w) for w in (1, 24, 168, 720)}
    n = {w: hi - lo[w] for w in lo}
    p1 = prefix(T.cents)
    s = {w: p1[hi] - p1[lo[w]] for w in (24, 168, 720)}
    sq30 = prefix(T.cents * T.cents)
    sq30 = sq30[hi] - sq30[lo[720]]
    assert s[720].max() < 3_000_000_000 and (n[720] * sq30).max() < 2**62, "int64 headroom"
    var_num = n[720] * sq30 - s[720] * s[720]  # exact: n^2 * variance, in cents^2
    night = prefix(T.night)
    new_dev = prefix(T.new_device)
    has_prev = (last > 0) & (T.u[np.maximum(last - 1, 0)] == su)
    gap_h = (T.ts[last] - T.ts[np.maximum(last - 1, 0)]) / HOUR

    decl_key = np.sort(T.decline_u * BIG + ceil_div(T.decline_ts - START, HOUR))
    fraud = T.is_fraud
    cb_key = np.sort(T.u[fraud] * BIG + ceil_div(T.chargeback_ts[fraud] - START, HOUR))

    obins = ceil_div(O.ts - START, HOUR)
    okey = O.u * BIG + obins
    o_ord = np.argsort(okey, kind="stable")
    okey_s = okey[o_ord]
    o_hi = np.searchsorted(okey_s, q, "right")
    o_n30 = o_hi - window_lo(okey_s, q, 720)
    ov = prefix(O.value_cents[o_ord])
    o_sum30 = ov[o_hi] - ov[window_lo(okey_s, q, 720)]
    o_n90 = o_hi - window_lo(okey_s, q, 2160)
    ret = O.returned
    ret_known = intervals_containing(O.u[ret] * BIG + ceil_div(O.return_ts[ret] - START, HOUR),
                                     O.u[ret] * BIG + obins[ret] + 2160, q)

    cols = {
        "txn_count_1h": n[1], "txn_count_24h": n[24], "txn_count_7d": n[168], "txn_count_30d": n[720],
        "amount_sum_24h": s[24] / 100, "amount_sum_7d": s[168] / 100, "amount_sum_30d": s[720] / 100,
        "avg_amount_7d": s[168] / n[168] / 100, "avg_amount_30d": s[720] / n[720] / 100,
        "max_amount_30d": range_max(T.cents, lo[720], hi) / 100,
        "std_amount_30d": np.sqrt(var_num.astype(np.float64)) / n[720] / 100,
        "distinct_merchants_7d": distinct_in_window(T.u, bins, T.merchant, q, 168),
        "distinct_merchants_30d": distinct_in_window(T.u, bins, T.merchant, q, 720),
        "distinct_devices_30d": distinct_in_window(T.u, bins, T.device, q, 720),
        "night_txn_ratio_30d": (night[hi] - night[lo[720]]) / n[720],
        "declined_count_7d": np.searchsorted(decl_key, q, "right") - window_lo(decl_key, q, 168),
        "chargeback_count_90d": np.searchsorted(cb_key, q, "right") - window_lo(cb_key, q, 2160),
        "hours_since_prev_txn": np.where(has_prev, gap_h, np.nan),
        "orders_count_30d": o_n30,
        "avg_order_value_30d": np.where(o_n30 > 0, o_sum30 / np.maximum(o_n30, 1) / 100, np.nan),
        "refund_rate_90d": np.where(o_n90 > 0, ret_known / np.maximum(o_n90, 1), 0.0),
        "last_device_type": T.device[last],
        "uses_new_device_7d": (new_dev[hi] - new_dev[lo[168]]) > 0,
        "fraud_score_prev": T.score[last],
    }

    # ~1 % of snapshots were first ingested with stale FX rates and re-ingested with the correct
    # values later: same event_timestamp, later created_timestamp.
    m = len(q)
    created = snap_ts + (r.random(m) * 30 * MIN).astype(np.int64)
    fixed = np.nonzero(r.random(m) < 0.01)[0]
    factor = np.where(r.random(len(fixed)) < 0.5, r.uniform(0.93, 0.99, len(fixed)), r.uniform(1.01, 1.07, len(fixed)))
    stale = {k: v[fixed] for k, v in cols.items()}
    for k in ("amount_sum_24h", "amount_sum_7d", "amount_sum_30d", "avg_amount_7d", "avg_amount_30d",
              "max_amount_30d", "std_amount_30d"):
        stale[k] = np.round(stale[k] * factor, 2)
    stale["fraud_score_prev"] = np.round((stale["fraud_score_prev"] + r.normal(0, 0.05, len(fixed))).clip(0, 1), 4)
    later = created[fixed] + (HOUR + r.random(len(fixed)) * 5 * HOUR).astype(np.int64)
    all_u = np.r_[su, su[fixed]]
    all_ts = np.r_[snap_ts, snap_ts[fixed]]
    all_created = np.r_[created, created[fixed]]
    all_created[fixed] = later  # the first copy (true values) becomes the correction
    all_cols = {k: np.r_[cols[k], stale[k]] for k in cols}
    o = np.lexsort((all_created, all_u, all_ts))

    out = {"user_id": i64(U.id[all_u[o]]), "event_timestamp": ts_array(all_ts[o]),
           "created_timestamp": ts_array(all_created[o])}
    for k, v in all_cols.items():
        v = v[o]
        if k == "last_device_type":
            out[k] = str_array(v, DEVICES)
        elif v.dtype == bool:
            out[k] = bools(v)
        elif v.dtype.kind == "i":
            out[k] = i64(v)
        else:
            out[k] = f64(np.nan_to_num(v, nan=0.0), np.isnan(v))
    return pa.table(out)


def merchant_stats_table(seed, cfg, T, M):
    r = rng(seed, "merchant_stats")
    days = cfg.days + 1  # snapshots at midnight, START .. START + days
    o = np.lexsort((T.ts, T.merchant))
    mm, cents, fraud = T.merchant[o], T.cents[o], T.is_fraud[o]
    dbins = ceil_div(T.ts[o] - START, DAY)
    key = mm * BIG + dbins
    grid_m = np.repeat(np.arange(M.n), days)
    grid_d = np.tile(np.arange(days), M.n)
    q = grid_m * BIG + grid_d
    hi = np.searchsorted(key, q, "right")
    n7 = hi - window_lo(key, q, 7)
    lo30 = window_lo(key, q, 30)
    n30 = hi - lo30
    n90 = hi - window_lo(key, q, 90)
    p = prefix(cents)
    s30 = p[hi] - p[lo30]
    cb_bin = ceil_div(T.chargeback_ts[o][fraud] - START, DAY)
    known30 = intervals_containing(mm[fraud] * BIG + cb_bin, mm[fraud] * BIG + dbins[fraud] + 30, q)
    cb_key = np.sort(mm[fraud] * BIG + cb_bin)
    cb90 = np.searchsorted(cb_key, q, "right") - window_lo(cb_key, q, 90)
    event = START + grid_d * DAY
    created = event + (HOUR + r.random(len(q)) * 2 * HOUR).astype(np.int64)
    order = np.lexsort((grid_m, grid_d))
    return pa.table({
        "merchant_id": i64(M.id[grid_m][order]),
        "event_timestamp": ts_array(event[order]),
        "created_timestamp": ts_array(created[order]),
        "merchant_category": str_array(M.category[grid_m][order], [c[0] for c in MERCHANT_CATEGORIES]),
        "merchant_country": str_array(M.country[grid_m][order], [c[0] for c in COUNTRIES]),
        "txn_count_7d": i64(n7[order]),
        "avg_amount_30d": f64((s30 / np.maximum(n30, 1) / 100)[order], (n30 == 0)[order]),
        "fraud_rate_30d": f64((known30 / np.maximum(n30, 1))[order]),
        "chargeback_rate_90d": f64((cb90 / np.maximum(n90, 1))[order]),
    })


def item_features_table(seed, I, O):
    r = rng(seed, "item_features")
    W = I.weeks
    # Orders placed in (t_k - 7d, t_k] count for the snapshot at t_k = START + 7k days.
    wbin = ceil_div(O.ts - START, 7 * DAY)
    units = np.bincount(O.item * (W + 1) + wbin, weights=O.quantity, minlength=I.n * (W + 1))
    units = units.reshape(I.n, W + 1).astype(np.int64)[:, :W]
    review_at = ceil_div(O.ts + 3 * DAY - START, 7 * DAY)  # a review appears ~3 days after the order
    new_reviews = np.bincount(O.item[O.reviewed] * (W + 2) + np.minimum(review_at[O.reviewed], W + 1),
                              minlength=I.n * (W + 2)).reshape(I.n, W + 2)[:, :W]
    reviews = I.reviews0[:, None] + np.cumsum(new_reviews, axis=1)
    stock = np.zeros((I.n, W), np.int64)
    level = I.stock0.copy()
    for k in range(W):
        level = np.where(I.launch == k, I.stock0, np.maximum(level - units[:, k], 0))
        reorder = (level < 0.3 * I.stock0) & (r.random(I.n) < 0.7)
        level = level + np.where(reorder, (I.stock0 * r.uniform(0.8, 1.5, I.n)).astype(np.int64), 0)
        level = np.where(k >= I.retire, 0, level)
        stock[:, k] = level
    noise = I.rating_bias[:, None] * 0.8 / np.sqrt(1 + reviews / 15) + r.normal(0, 0.03, (I.n, W))
    rating = np.round(np.clip(I.quality[:, None] + noise, 1, 5), 2)

    it, wk = np.nonzero(np.arange(W)[None, :] >= I.launch[:, None])
    event = START + wk * 7 * DAY
    created = event + (10 * MIN + r.random(len(it)) * 110 * MIN).astype(np.int64)
    o = np.lexsort((it, wk))
    it, wk, event, created = it[o], wk[o], event[o], created[o]
    emb = I.embedding[it].reshape(-1)
    offsets = pa.array(np.arange(0, len(emb) + 1, EMBEDDING_DIM, dtype=np.int32))
    return pa.table({
        "item_id": i64(I.id[it]),
        "event_timestamp": ts_array(event),
        "created_timestamp": ts_array(created),
        "category": str_array(I.category[it], [c[0] for c in ITEM_CATEGORIES]),
        "price": f64(I.price[it, wk]),
        "discount_pct": f64(I.discount[it, wk]),
        "stock_level": i64(stock[it, wk]),
        "rating": f64(rating[it, wk]),
        "review_count": i64(reviews[it, wk]),
        "popularity_7d": i64(units[it, wk]),
        "is_active": bools(wk < I.retire[it]),
        "embedding": pa.ListArray.from_arrays(offsets, pa.array(emb, pa.float32())),
    })


def orders_table(O, U, I):
    return pa.table({
        "order_id": i64(O.id),
        "user_id": i64(U.id[O.u]),
        "item_id": i64(I.id[O.item]),
        "quantity": i64(O.quantity),
        "unit_price": f64(O.unit_price),
        "event_timestamp": ts_array(O.ts),
        "returned": bools(O.returned),
    })


# ----------------------------------------------------------------------------------------------
# Derived fraud tables (fraud_v2). Written after every other table and computed only from the
# arrays above, each with its own random stage, so that adding them changed none of the earlier
# files.

HIGH_RISK_CATEGORIES = ("digital_goods", "gift_cards", "gaming")
YOUNG_ACCOUNT_DAYS = 30
BIG_TICKET_RATIO = 3  # a transaction over 3x the user's mean of earlier ones


def window_share(flag, lo, hi, n):
    """Share of the events in [lo, hi) where flag is set; NaN (written as null) when none."""
    p = prefix(flag.astype(np.int64))
    return np.where(n > 0, (p[hi] - p[lo]) / np.maximum(n, 1), np.nan)


def user_geo_device_table(seed, T, U, M):
    r = rng(seed, "user_geo_device")
    # The same snapshots as user_stats.
    bins, key, last, q, su, snap_ts, hi = hourly_snapshots(T)
    lo = {w: window_lo(key, q, w) for w in (1, 6, 168, 720)}
    n30 = hi - lo[720]
    cents = prefix(T.cents)

    def count30(flag):
        p = prefix(flag.astype(np.int64))
        return p[hi] - p[lo[720]]

    mcountry = M.country[T.merchant]
    high_risk = np.isin(M.category[T.merchant],
                        [i for i, c in enumerate(MERCHANT_CATEGORIES) if c[0] in HIGH_RISK_CATEGORIES])
    decl_key = np.sort(T.decline_u * BIG + ceil_div(T.decline_ts - START, HOUR))
    decl_hi = np.searchsorted(decl_key, q, "right")
    day = (T.ts - START) // DAY
    cols = {
        "txn_count_6h": hi - lo[6],
        "amount_sum_1h": (cents[hi] - cents[lo[1]]) / 100,
        "max_amount_7d": range_max(T.cents, lo[168], hi) / 100,
        **{f"txn_count_{d}_30d": count30(T.device == k) for k, d in enumerate(DEVICES)},
        **{f"txn_count_{c.lower()}_30d": count30(T.currency == k) for k, c in enumerate(CURRENCIES)},
        "distinct_currencies_30d": distinct_in_window(T.u, bins, T.currency, q, 720),
        "distinct_merchant_countries_30d": distinct_in_window(T.u, bins, mcountry, q, 720),
        "distinct_merchant_categories_30d": distinct_in_window(T.u, bins, M.category[T.merchant], q, 720),
        "foreign_merchant_share_30d": count30(mcountry != U.country[T.u]) / n30,
        "foreign_currency_share_30d": count30(T.currency != U.home[T.u]) / n30,
        "high_risk_category_share_30d": count30(high_risk) / n30,
        "declined_count_1h": decl_hi - window_lo(decl_key, q, 1),
        "declined_count_24h": decl_hi - window_lo(decl_key, q, 24),
        "new_device_count_30d": count30(T.new_device),
        "active_days_30d": distinct_in_window(T.u, bins, day, q, 720),
        "last_amount_eur": T.cents[last] / 100,
        "last_txn_at_us": T.ts[last],
    }
    created = snap_ts + (r.random(len(q)) * 30 * MIN).astype(np.int64)
    o = np.lexsort((su, snap_ts))
    out = {"user_id": i64(U.id[su[o]]), "event_timestamp": ts_array(snap_ts[o]),
           "created_timestamp": ts_array(created[o])}
    for k, v in cols.items():
        out[k] = i64(v[o]) if v.dtype.kind == "i" else f64(v[o])
    return pa.table(out)


def user_account_table(seed, U):
    r = rng(seed, "user_account")
    # One row per user at signup: the signup time, so that request-time features can compute
    # the account's age at the transaction (user_profile's account_age_days is the age when its
    # row was written).
    o = np.lexsort((U.id, U.signup))
    created = U.signup[o] + (SEC + r.random(U.n) * MIN).astype(np.int64)
    return pa.table({
        "user_id": i64(U.id[o]),
        "event_timestamp": ts_array(U.signup[o]),
        "created_timestamp": ts_array(created),
        "signup_at_us": i64(U.signup[o]),
    })


def merchant_risk_table(seed, cfg, T, U, M):
    r = rng(seed, "merchant_risk")
    days = cfg.days + 1  # snapshots at midnight, START .. START + days, as merchant_stats
    # Per transaction (T is by user, then time): over the user's mean of earlier transactions,
    # and the user's first transaction at this merchant.
    n = T.n
    first = np.r_[True, T.u[1:] != T.u[:-1]]
    start_idx = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    prior_n = np.arange(n) - start_idx
    csum = np.cumsum(T.cents) - T.cents
    prior_sum = csum - csum[start_idx]
    big = (prior_n > 0) & (T.cents * prior_n > BIG_TICKET_RATIO * prior_sum)
    # T is by user then time, so a stable sort by (user, merchant) keeps each pair's first.
    pair = np.argsort(T.u * M.n + T.merchant, kind="stable")
    first_here = np.empty(n, bool)
    first_here[pair] = np.r_[True, np.diff((T.u * M.n + T.merchant)[pair]) != 0]
    age_days = (T.ts - U.signup[T.u]) / DAY
    foreign_user = U.country[T.u] != M.country[T.merchant]
    merchant_home = np.array([CURRENCIES.index(c[1]) for c in COUNTRIES])[M.country[T.merchant]]

    assert days * DAY < 1 << 44
    o = np.argsort(T.merchant * (1 << 44) + (T.ts - START), kind="stable")  # by merchant, then time
    mm, cents, u = T.merchant[o], T.cents[o], T.u[o]
    dbins = ceil_div(T.ts[o] - START, DAY)
    key = mm * BIG + dbins
    grid_m = np.repeat(np.arange(M.n), days)
    grid_d = np.tile(np.arange(days), M.n)
    q = grid_m * BIG + grid_d
    hi = np.searchsorted(key, q, "right")
    lo1, lo30 = window_lo(key, q, 1), window_lo(key, q, 30)
    n30 = hi - lo30
    p1, p2 = prefix(cents), prefix(cents * cents)
    assert p2[-1] < 2**53, "int64 headroom, and window sums exact as float64"
    s30, sq30 = p1[hi] - p1[lo30], p2[hi] - p2[lo30]
    has = n30 > 0
    # Exact integer sums; n * sq would overflow int64 at the busiest merchants of the large set.
    var = np.maximum(sq30 - s30.astype(np.float64) ** 2 / np.maximum(n30, 1), 0) / np.maximum(n30, 1)
    mx = np.full(len(q), np.nan)
    mx[has] = range_max(cents, lo30[has], hi[has]) / 100
    ages = prefix(age_days[o])
    fraud = T.is_fraud[o]
    cb_key = np.sort(mm[fraud] * BIG + ceil_div(T.chargeback_ts[o][fraud] - START, DAY))
    cols = {
        "txn_count_1d": hi - lo1,
        "txn_count_30d": n30,
        "distinct_users_7d": distinct_in_window(mm, dbins, u, q, 7),
        "distinct_users_30d": distinct_in_window(mm, dbins, u, q, 30),
        "std_amount_30d": np.where(has, np.sqrt(var) / 100, np.nan),
        "max_amount_30d": mx,
        "night_share_30d": window_share(T.night[o], lo30, hi, n30),
        "new_device_share_30d": window_share(T.new_device[o], lo30, hi, n30),
        "foreign_user_share_30d": window_share(foreign_user[o], lo30, hi, n30),
        "foreign_currency_share_30d": window_share(T.currency[o] != merchant_home[o], lo30, hi, n30),
        "mean_account_age_30d": np.where(has, (ages[hi] - ages[lo30]) / np.maximum(n30, 1), np.nan),
        "young_account_share_30d": window_share(age_days[o] < YOUNG_ACCOUNT_DAYS, lo30, hi, n30),
        "big_ticket_share_30d": window_share(big[o], lo30, hi, n30),
        "first_time_user_share_30d": window_share(first_here[o], lo30, hi, n30),
        "chargeback_count_30d": np.searchsorted(cb_key, q, "right") - window_lo(cb_key, q, 30),
    }
    event = START + grid_d * DAY
    created = event + (HOUR + r.random(len(q)) * 2 * HOUR).astype(np.int64)
    order = np.lexsort((grid_m, grid_d))
    out = {"merchant_id": i64(M.id[grid_m][order]), "event_timestamp": ts_array(event[order]),
           "created_timestamp": ts_array(created[order])}
    for k, v in cols.items():
        v = v[order]
        out[k] = i64(v) if v.dtype.kind == "i" else f64(np.nan_to_num(v, nan=0.0), np.isnan(v))
    return pa.table(out)


# ----------------------------------------------------------------------------------------------
# Recommendation and pricing tables. Written after every other table, from the users and items
# above and their own random stages, so that the files above are the same bytes with or
# without them.

SLATE = 10  # items shown per session (positions 0..9)
POPULAR_SLOT_SHARE = 0.4  # the logging policy fills a slot by popularity, else uniformly
TARGET_CTR, TARGET_CVR = 0.06, 0.2  # mean click rate of impressions, purchase rate of clicks
TASTE_CONCENTRATION = 0.3  # Dirichlet parameter of the category preference (small: few categories)
TASTE_NOISE = 0.2  # per-dimension noise of the taste vector around the preferred centroids
MATCH_WEIGHT = 10.0  # click logit per unit of cosine(taste, item embedding)
TASTE_WINDOW_DAYS = 30
# Own-price elasticity of demand per item category (ITEM_CATEGORIES order), before item noise.
ELASTICITY = [2.2, 2.6, 1.6, 1.3, 1.8, 1.7, 1.1, 1.0, 2.8, 1.2]
COMPETITOR_ELASTICITY = 0.8  # demand falls as (price / competitor's price)^-0.8
WEEKDAY_DEMAND = [0.9, 0.92, 0.95, 1.0, 1.08, 1.2, 1.12]  # Monday .. Sunday
PRICE_TEST_SHARE = 0.3  # item-days with a price test of +-2..15 %
WARMUP_DAYS = 7  # simulated before START so that the first snapshots have full 7-day windows


def make_taste(seed, U, I):
    """Each user's latent taste: a Dirichlet category preference (concentrated on a few
    categories) and a unit vector in the items' content-embedding space, near the
    preference-weighted category centroids."""
    r = rng(seed, "recs_taste")
    k = len(ITEM_CATEGORIES)
    pref = r.dirichlet(np.full(k, TASTE_CONCENTRATION), U.n)
    centroid = np.zeros((k, EMBEDDING_DIM))
    np.add.at(centroid, I.category, I.embedding.astype(np.float64))
    centroid /= np.maximum(np.linalg.norm(centroid, axis=1, keepdims=True), 1e-12)
    vec = pref @ centroid + r.normal(0, TASTE_NOISE, (U.n, EMBEDDING_DIM))
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    return NS(pref=pref, vec=vec)


def make_impressions(cfg, seed, U, I, taste):
    """Sessions of SLATE impressions chosen by a logging policy (each slot by popularity or
    uniformly among the items on sale that week, no item twice in a slate), clicks from the
    user's taste match, the item's quality, discount and the position, purchases from clicks."""
    r = rng(seed, "impressions")
    n = cfg.sessions
    span = U.end - U.active_from
    weight = U.activity**0.8 * span
    su = np.repeat(np.arange(U.n), r.multinomial(n, weight / weight.sum()))
    sts = U.active_from[su] + (r.random(n) * span[su]).astype(np.int64)
    sts = place_in_day(r, sts, U.offset[su], ORDER_HOURS, U.active_from[su], U.end - SLATE * SEC)
    week = (sts - START) // (7 * DAY)
    item = np.empty((n, SLATE), np.int64)
    for k in range(I.weeks):
        sel = np.nonzero(week == k)[0]
        live = np.nonzero((I.launch <= k) & (I.retire > k))[0]
        p = I.popularity[live] / I.popularity[live].sum()
        m = len(sel)
        slots = np.where(r.random((m, SLATE)) < POPULAR_SLOT_SHARE, live[r.choice(len(live), (m, SLATE), p=p)],
                         live[r.integers(0, len(live), (m, SLATE))])
        for _ in range(20):  # a repeated item in a slate is redrawn uniformly
            srt = np.sort(slots, axis=1)
            if not (srt[:, 1:] == srt[:, :-1]).any():
                break
            o = np.argsort(slots, axis=1, kind="stable")
            s = np.take_along_axis(slots, o, axis=1)
            dup_sorted = np.c_[np.zeros((m, 1), bool), s[:, 1:] == s[:, :-1]]
            dup = np.empty_like(dup_sorted)
            np.put_along_axis(dup, o, dup_sorted, axis=1)
            slots = np.where(dup, live[r.integers(0, len(live), (m, SLATE))], slots)
        item[sel] = slots
    u = np.repeat(su, SLATE)
    ts = np.repeat(sts, SLATE) + np.tile(np.arange(SLATE), n) * SEC  # one second apart
    position = np.tile(np.arange(SLATE), n)
    item = item.reshape(-1)
    wk = np.repeat(week, SLATE)
    match = np.einsum("ij,ij->i", taste.vec[u], I.embedding[item].astype(np.float64))
    disc = I.discount[item, wk]
    logit = MATCH_WEIGHT * match + 0.9 * (I.quality[item] - 4.0) + 2.0 * disc - 0.12 * position
    clicked = r.random(len(u)) < sigmoid(shift_to_rate(logit, TARGET_CTR))
    rel_price = np.log(I.price[item, wk] / np.median(I.price[:, 0]))
    buy = 1.5 * match + 1.0 * (I.quality[item] - 4.0) + 3.0 * disc - 0.3 * rel_price
    purchased = np.zeros(len(u), bool)
    purchased[clicked] = r.random(clicked.sum()) < sigmoid(shift_to_rate(buy[clicked], TARGET_CVR))
    o = np.lexsort((position, u, ts))
    return NS(n=len(u), u=u[o], ts=ts[o], item=item[o], position=position[o], clicked=clicked[o],
              purchased=purchased[o])


def impressions_table(E, U, I):
    return pa.table({
        "user_id": i64(U.id[E.u]),
        "item_id": i64(I.id[E.item]),
        "event_timestamp": ts_array(E.ts),
        "position": i64(E.position),
        "clicked": bools(E.clicked),
        "purchased": bools(E.purchased),
    })


def user_taste_table(seed, cfg, E, U, I):
    r = rng(seed, "user_taste")
    # A snapshot at midnight whenever the user's 30-day window changes: the midnight after a day
    # with an impression (it enters) and 30 days later (it leaves), up to the end of the range.
    w = TASTE_WINDOW_DAYS
    o = np.lexsort((E.ts, E.u))
    eu, item, clicked, purchased = E.u[o], E.item[o], E.clicked[o], E.purchased[o]
    dbins = ceil_div(E.ts[o] - START, DAY)
    key = eu * BIG + dbins
    grid = np.unique(np.r_[key, key + w])
    grid = grid[grid % BIG <= cfg.days]
    gu, gd = grid // BIG, grid % BIG
    hi = np.searchsorted(key, grid, "right")
    lo = window_lo(key, grid, w)
    n_imp = hi - lo

    def count(flag):
        p = prefix(flag.astype(np.int64))
        return p[hi] - p[lo]

    n_click = count(clicked)
    cols = {}
    for c, (name, *_rest) in enumerate(ITEM_CATEGORIES):
        cols[f"click_share_{name}_30d"] = np.round(count(clicked & (I.category[item] == c)) / np.maximum(n_click, 1), 4)
    # Integer micro-units, so that window sums are exact and an empty window gives exactly 0.
    emb = np.rint(I.embedding[item].astype(np.float64) * 1e6).astype(np.int64) * clicked[:, None]
    for j in range(EMBEDDING_DIM):
        p = prefix(emb[:, j])
        cols[f"taste_{j}"] = np.round((p[hi] - p[lo]) / np.maximum(n_click, 1) / 1e6, 4)
    cols["clicks_30d"] = n_click
    cols["purchases_30d"] = count(purchased)
    cols["impressions_30d"] = n_imp
    cols["ctr_30d"] = np.round(n_click / np.maximum(n_imp, 1), 4)
    # The items purchased in the window, most recent purchase first, each once: the positions of
    # the purchases in the (user, time) order, the window's slice of them read backwards. A
    # purchase enters or leaves the window with its impression, so these snapshots cover it.
    bought = np.nonzero(purchased)[0]
    plo, phi = np.searchsorted(bought, lo), np.searchsorted(bought, hi)
    item_ids = I.id[item]
    recent = np.full(len(grid), "", dtype=object)
    for g in np.nonzero(phi > plo)[0]:
        ids = item_ids[bought[plo[g]:phi[g]][::-1]]
        recent[g] = ",".join(str(x) for x in dict.fromkeys(ids.tolist()))
    event = START + gd * DAY
    created = event + (5 * MIN + r.random(len(grid)) * 25 * MIN).astype(np.int64)
    order = np.lexsort((gu, gd))
    out = {"user_id": i64(U.id[gu][order]), "event_timestamp": ts_array(event[order]),
           "created_timestamp": ts_array(created[order])}
    for k, v in cols.items():
        out[k] = i64(v[order]) if v.dtype.kind == "i" else f64(v[order])
    out["purchased_items_30d"] = pa.array(recent[order].tolist(), pa.string())
    return pa.table(out)


def item_content_table(seed, I):
    r = rng(seed, "item_content")
    # One row per item at its launch snapshot: the content embedding as 16 scalar columns.
    launch = START + I.launch * 7 * DAY
    o = np.lexsort((I.id, launch))
    created = launch[o] + (MIN + r.random(I.n) * 9 * MIN).astype(np.int64)
    out = {"item_id": i64(I.id[o]), "event_timestamp": ts_array(launch[o]), "created_timestamp": ts_array(created)}
    for j in range(EMBEDDING_DIM):
        out[f"content_{j}"] = f64(I.embedding[o, j].astype(np.float64))
    return pa.table(out)


def make_prices(cfg, seed, I):
    """Daily prices and demand per item: the week's price with seeded price tests on some
    days, a competitor's price, and units sold ~ Poisson(base demand x weekday x
    (price / launch price)^-elasticity x (price / competitor)^-0.8), views independent of
    the own price. Simulated from WARMUP_DAYS before START; item-days off sale are empty."""
    r = rng(seed, "item_prices")
    nd = cfg.days + WARMUP_DAYS
    day = np.arange(nd) - WARMUP_DAYS  # day index relative to START
    wk = np.clip(day // 7, 0, I.weeks - 1)
    live = (I.launch[:, None] * 7 <= np.maximum(day, 0)[None, :]) & (day[None, :] < I.retire[:, None] * 7)
    live &= (I.launch[:, None] == 0) | (day[None, :] >= 0)
    week_price = I.price[:, wk]
    launch_price = I.price[np.arange(I.n), I.launch]
    cost = np.round(launch_price * r.uniform(0.4, 0.8, I.n), 2)
    test = r.random((I.n, nd)) < PRICE_TEST_SHARE
    step = r.uniform(0.02, 0.15, (I.n, nd)) * np.where(r.random((I.n, nd)) < 0.5, -1, 1)
    list_price = np.round(week_price * np.where(test, 1 + step, 1.0), 2)
    bias = np.exp(r.normal(0, 0.08, I.n))
    competitor = np.round(week_price * bias[:, None] * np.exp(r.normal(0, 0.05, (I.n, nd))), 2)
    pop = I.popularity / np.median(I.popularity)
    base = (4.0 * pop**0.6 * np.exp(r.normal(0, 0.3, I.n))).clip(0.2, 80)
    elasticity = np.array(ELASTICITY)[I.category] * np.exp(r.normal(0, 0.1, I.n))
    weekday = np.array(WEEKDAY_DEMAND)[(day + 5) % 7]  # 2026-08-01 is a Saturday
    mean = (base[:, None] * weekday[None, :] * (list_price / launch_price[:, None]) ** -elasticity[:, None]
            * (list_price / competitor) ** -COMPETITOR_ELASTICITY)
    units = np.where(live, r.poisson(mean), 0)
    views = np.where(live, r.poisson(base[:, None] * weekday[None, :] * 15), 0)
    return NS(nd=nd, day=day, live=live, cost=cost, list_price=list_price, competitor=competitor,
              week_price=week_price, units=units, views=views, mean=mean, elasticity=elasticity)


def item_prices_tables(seed, cfg, I, P):
    r = rng(seed, "item_prices_rows")
    # Windows of the 7 days before each day (that day's sales come after its snapshot).
    cu = np.concatenate([np.zeros((I.n, 1), np.int64), np.cumsum(P.units, axis=1)], axis=1)
    cv = np.concatenate([np.zeros((I.n, 1), np.int64), np.cumsum(P.views, axis=1)], axis=1)
    cents = np.where(P.live, np.rint(P.list_price * 100).astype(np.int64), 0)
    cp = np.concatenate([np.zeros((I.n, 1), np.int64), np.cumsum(cents, axis=1)], axis=1)
    cn = np.concatenate([np.zeros((I.n, 1), np.int64), np.cumsum(P.live, axis=1)], axis=1)
    j = np.arange(WARMUP_DAYS, P.nd)  # the written days: 0 .. days - 1
    lo = j - 7
    units7 = cu[:, j] - cu[:, lo]
    views7 = cv[:, j] - cv[:, lo]
    n7 = cn[:, j] - cn[:, lo]
    avg7 = np.where(n7 > 0, np.round((cp[:, j] - cp[:, lo]) / np.maximum(n7, 1) / 100, 2), P.week_price[:, j])
    it, dd = np.nonzero(P.live[:, j])
    o = np.lexsort((it, dd))
    it, dd = it[o], dd[o]
    col = dd + WARMUP_DAYS
    event = START + dd * DAY
    created = event + (15 * MIN + r.random(len(it)) * 45 * MIN).astype(np.int64)
    prices = pa.table({
        "item_id": i64(I.id[it]),
        "event_timestamp": ts_array(event),
        "created_timestamp": ts_array(created),
        "cost": f64(P.cost[it]),
        "list_price": f64(P.list_price[it, col]),
        "competitor_price": f64(P.competitor[it, col]),
        "units_sold_7d": i64(units7[it, dd]),
        "views_7d": i64(views7[it, dd]),
        "avg_price_7d": f64(avg7[it, dd]),
    })
    demand = pa.table({
        "item_id": i64(I.id[it]),
        "event_timestamp": ts_array(event),
        "price": f64(P.list_price[it, col]),
        "units": i64(P.units[it, col]),
    })
    return prices, demand


NULLABLE = {  # every other column is never null (a required Parquet column)
    "user_profile": {"email_domain_risk"},
    "user_stats": {"hours_since_prev_txn", "avg_order_value_30d"},
    "merchant_stats": {"avg_amount_30d"},
    "merchant_risk": {"std_amount_30d", "max_amount_30d", "night_share_30d", "new_device_share_30d",
                      "foreign_user_share_30d", "foreign_currency_share_30d", "mean_account_age_30d",
                      "young_account_share_30d", "big_ticket_share_30d", "first_time_user_share_30d"},
}


def write(table, out, name, cfg, seed, size, t0):
    fields = [pa.field(f.name, f.type, nullable=f.name in NULLABLE.get(name, ())) for f in table.schema]
    meta = {"generator": "scripts/make_sample_data.py", "seed": str(seed), "size": size}
    table = table.cast(pa.schema(fields, metadata=meta))
    path = out / f"{name}.parquet"
    pq.write_table(table, path, compression="zstd", compression_level=cfg.zstd_level)
    print(f"{path.name:24} {table.num_rows:>10,} rows {path.stat().st_size / 1e6:8.2f} MB "
          f"{time.perf_counter() - t0:6.1f} s", flush=True)
    return table.num_rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=SIZES, default="small")
    ap.add_argument("--out", type=Path, help="default: features/data (small), ~/.cache/ferrite-data/large (large)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    cfg = SIZES[args.size]
    out = args.out or (ROOT / "features/data" if args.size == "small"
                       else Path(os.environ.get("HOME", "~")).expanduser() / ".cache/ferrite-data/large")
    out.mkdir(parents=True, exist_ok=True)
    seed = args.seed
    begin = time.perf_counter()

    t0 = time.perf_counter()
    U = make_users(cfg, seed)
    M = make_merchants(cfg, seed)
    T = make_transactions(cfg, seed, U, M)
    write(transactions_table(T, U, M), out, "transactions", cfg, seed, args.size, t0)
    t0 = time.perf_counter()
    write(user_profile_table(seed, U), out, "user_profile", cfg, seed, args.size, t0)
    t0 = time.perf_counter()
    I = make_items(cfg, seed)
    O = make_orders(cfg, seed, U, I)
    write(orders_table(O, U, I), out, "orders", cfg, seed, args.size, t0)
    t0 = time.perf_counter()
    write(item_features_table(seed, I, O), out, "item_features", cfg, seed, args.size, t0)
    t0 = time.perf_counter()
    write(user_stats_table(seed, T, O, U), out, "user_stats", cfg, seed, args.size, t0)
    t0 = time.perf_counter()
    write(merchant_stats_table(seed, cfg, T, M), out, "merchant_stats", cfg, seed, args.size, t0)
    t0 = time.perf_counter()
    write(user_geo_device_table(seed, T, U, M), out, "user_geo_device", cfg, seed, args.size, t0)
    t0 = time.perf_counter()
    write(user_account_table(seed, U), out, "user_account", cfg, seed, args.size, t0)
    t0 = time.perf_counter()
    write(merchant_risk_table(seed, cfg, T, U, M), out, "merchant_risk", cfg, seed, args.size, t0)
    t0 = time.perf_counter()
    taste = make_taste(seed, U, I)
    E = make_impressions(cfg, seed, U, I, taste)
    write(impressions_table(E, U, I), out, "impressions", cfg, seed, args.size, t0)
    t0 = time.perf_counter()
    write(user_taste_table(seed, cfg, E, U, I), out, "user_taste", cfg, seed, args.size, t0)
    t0 = time.perf_counter()
    write(item_content_table(seed, I), out, "item_content", cfg, seed, args.size, t0)
    t0 = time.perf_counter()
    P = make_prices(cfg, seed, I)
    prices, demand = item_prices_tables(seed, cfg, I, P)
    write(prices, out, "item_prices", cfg, seed, args.size, t0)
    write(demand, out, "item_demand", cfg, seed, args.size, t0)
    print(f"{args.size}: {out} in {time.perf_counter() - begin:.1f} s; fraud rate {T.is_fraud.mean():.2%}; "
          f"click rate {E.clicked.mean():.2%}, purchases per click {E.purchased.sum() / max(E.clicked.sum(), 1):.2%}")


if __name__ == "__main__":
    sys.exit(main())
