"""Synthetic H&M data in the exact Kaggle layout, calibrated to the real aggregates.

The generative story
--------------------

**Catalogue.** Products are drawn as (department, product type) pairs in proportion to the real
catalogue's counts (so index group, section, garment group and product type shares follow the real
ones); each product has a number of colour variants drawn from the real variants-per-product
distribution, each variant an article ``<product_code><001..>`` with its own colour (real colour
shares) and mostly the product's graphical appearance. A product has a *launch day*: a third of the
catalogue exists at the start, the rest launches uniformly over the period, with product codes
increasing with launch (as in the real data). After launch an article's appeal follows a lifecycle
(a week of ramp-up, then exponential decay with a product-specific half-life; a fifth of the
products are long-lived basics) and its family's season (swimwear peaks in summer, coats in
winter). A lognormal base appeal gives the long tail; it is raked so that the expected sales per
product type and colour match the real transaction shares.

**Customers.** Age, club status, fashion-news frequency (and FN / Active with it) follow the real
shares; postal codes follow a heavy-tailed distribution with one code shared by ~9 % of customers,
as in the real data. Each customer also has hidden tastes: a *primary index group* that depends on
age (Divided for the young, Baby/Children around 30-45, ...; raked so that transactions follow the
real index-group shares), a *colour family* (monochrome, blues, neutrals, bright, or none), a
*price tier* (budget, regular, premium; older customers lean premium), a preferred *sales
channel*, a sign-up day and a lognormal *activity* level (median/mean purchases as in the real data).

**Transactions.** Each day has the real number of transactions (the daily curve of the real data,
scaled). Shoppers are drawn in proportion to activity among customers already signed up; each buys
a basket of about 3.3 distinct items, one after another. Each item is, in order of the rules:

* a **repurchase** (3 %, when the customer has history): an article from their last 8 purchases,
  half of the time a colour variant of it (same product code);
* a **complement** (45 %, when there is a previous item, also across days): an article of a
  complementary product group in the previous item's index group (a top, then trousers; a dress,
  then shoes);
* otherwise a **browse**: an article of the customer's primary index group (80 %) or any index
  group, drawn by the week's appeal times the customer's colour and price affinities.

A unit bought several times gives consecutive identical rows (about 10 % of rows), as H&M writes
one row per unit. The price is the article's base price (family factor x product lognormal,
scaled to the real average), discounted on sale late in the lifecycle, rounded to real H&M price
steps (SEK/59000). The channel is the customer's preferred one with probability 0.93.

POP can learn the long tail and the trends; only a personalised, sequential model can learn the
tastes, the complements and the repurchases. Everything is deterministic for a seed. ``full``
streams day by day to disk with memory bounded by the catalogue and customer tables.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
from tqdm.auto import tqdm

from hm_recs.data.schema import ARTICLES, CUSTOMERS, TRANSACTIONS, image_relpath
from hm_recs.synth.calibration import load_calibration
from hm_recs.synth.garments import COLOUR_SEGMENTS, COMPLEMENTS, FAMILIES, family_of, season_factor

PRICE_STEP = 1 / 59000  # real H&M prices are SEK amounts divided by 59000
HISTORY = 8  # purchases remembered per customer for repurchases


@dataclass(frozen=True)
class Scale:
    name: str
    articles: int
    customers: int
    transactions: int
    start: dt.date
    end: dt.date


END = dt.date(2020, 9, 22)
SCALES = {
    s.name: s
    for s in (
        Scale("tiny", 600, 1_000, 12_000, dt.date(2020, 6, 24), END),
        Scale("small", 4_000, 20_000, 200_000, dt.date(2020, 3, 25), END),
        Scale("medium", 20_000, 90_000, 2_000_000, dt.date(2018, 9, 20), END),
        Scale("full", 105_542, 1_371_980, 31_788_324, dt.date(2018, 9, 20), END),
    )
}


@dataclass(frozen=True)
class Behaviour:
    """The knobs of the story above; defaults measured on or chosen to resemble the real sample."""

    p_repurchase: float = 0.03
    p_variant_on_repurchase: float = 0.5
    p_complement: float = 0.45
    p_primary_index_group: float = 0.8
    mean_basket_items: float = 3.3
    p_extra_unit: float = 0.1
    colour_boost: float = 3.0
    channel_loyalty: float = 0.93
    activity_sigma: float = 1.3
    appeal_sigma: float = 1.1
    share_existing_at_start: float = 0.35
    share_signed_up_at_start: float = 0.6
    p_basic: float = 0.2
    median_half_life_weeks: float = 8.0


# ---------------------------------------------------------------------------------------------
# catalogue
# ---------------------------------------------------------------------------------------------
@dataclass
class Catalogue:
    """Articles in internal order: sorted by (index group, product group, product type, product, variant)."""

    columns: dict[str, np.ndarray]  # the 25 Kaggle columns
    launch_day: np.ndarray
    half_life: np.ndarray  # weeks
    base_appeal: np.ndarray
    base_price: np.ndarray
    family: np.ndarray
    product_start: np.ndarray
    product_size: np.ndarray
    ig_code: np.ndarray
    pg_code: np.ndarray
    index_groups: list[str]
    product_groups: list[str]
    colour_segment: np.ndarray
    price_tier: np.ndarray  # 0 cheap, 1 mid, 2 expensive for its type

    @property
    def n(self) -> int:
        return len(self.launch_day)


def _names(rng: np.random.Generator, n: int) -> list[str]:
    syl = [
        "ma",
        "ri",
        "lo",
        "ju",
        "ne",
        "sa",
        "ti",
        "ka",
        "vi",
        "ro",
        "el",
        "an",
        "bo",
        "de",
        "fi",
        "mo",
        "la",
        "nu",
    ]
    extra = ["", "", "", " HW", " Slim", " Basic", " Rib", " Wide", " Soft", " Oversized", " Tech", " Linen"]
    first = rng.integers(0, len(syl), size=(n, 3))
    nsyl = rng.integers(2, 4, size=n)
    suffix = rng.integers(0, len(extra), size=n)
    return ["".join(syl[j] for j in first[i, : nsyl[i]]).capitalize() + extra[suffix[i]] for i in range(n)]


_MATERIALS = {
    "Jersey Basic": "soft cotton jersey",
    "Jersey Fancy": "printed jersey",
    "Knitwear": "a fine knit",
    "Trousers": "woven twill",
    "Trousers Denim": "washed denim",
    "Shorts": "cotton twill",
    "Dresses Ladies": "airy woven fabric",
    "Outdoor": "padded water-repellent fabric",
    "Shoes": "faux leather",
    "Socks and Tights": "fine-knit stretch",
    "Swimwear": "recycled swim fabric",
    "Under-, Nightwear": "soft microfibre",
    "Accessories": "mixed materials",
    "Blouses": "crinkled viscose",
    "Shirts": "cotton poplin",
    "Skirts": "flowing crepe",
    "Dressed": "a suit fabric",
}
_DETAILS = {
    "top": "a round neckline and short sleeves",
    "sweater": "long sleeves and ribbing at the cuffs",
    "jacket": "a zip down the front and side pockets",
    "trousers": "a high waist and tapered legs",
    "shorts": "an elasticated waist",
    "skirt": "a concealed zip at the back",
    "dress": "a fitted bodice and a flared skirt",
    "swim_top": "padded cups and adjustable straps",
    "swim_bottom": "a low waist and fully lined",
    "bra": "underwired cups and adjustable straps",
    "underwear_bottom": "a narrow waistband",
    "socks": "a ribbed top",
    "shoes": "a padded footbed and rubber soles",
    "bag": "an inner compartment and a zip",
    "hat": "a soft lining",
    "scarf": "fringes at the ends",
    "jewellery": "a secure clasp",
    "other": "a neat finish",
}


def _detail_desc(appearance: str, type_name: str, garment_group: str, family: str) -> str:
    material = _MATERIALS.get(garment_group, "a durable fabric")
    look = (
        "" if appearance in ("Solid", "Unknown", "Other structure", "Treatment") else appearance.lower() + " "
    )
    kind = type_name.lower() if look else type_name
    return f"{look.capitalize()}{kind} in {material} with {_DETAILS[family]}.".strip()


def build_catalogue(scale: Scale, rng: np.random.Generator, cal: dict, behaviour: Behaviour) -> Catalogue:
    tax = cal["taxonomy"]
    types = {row[0]: row for row in tax["product_types"]}
    depts = {row[0]: row for row in tax["departments"]}
    pairs = np.array(tax["department_product_types"], dtype=np.int64)
    colours = tax["colours"]
    appearances = tax["graphical_appearances"]
    variants = {int(k): v for k, v in tax["variants_per_product"].items()}
    days = (scale.end - scale.start).days + 1

    # products until the articles are covered, variants from the real distribution
    v_vals = np.array(sorted(variants))
    v_p = np.array([variants[k] for k in v_vals], dtype=float)
    n_products_guess = int(scale.articles / (v_vals @ v_p / v_p.sum())) + 10
    sizes = rng.choice(v_vals, size=n_products_guess * 2, p=v_p / v_p.sum())
    cum = np.cumsum(sizes)
    n_products = int(np.searchsorted(cum, scale.articles) + 1)
    sizes = sizes[:n_products].copy()
    sizes[-1] -= cum[n_products - 1] - scale.articles

    pair_idx = rng.choice(len(pairs), size=n_products, p=pairs[:, 2] / pairs[:, 2].sum())
    prod_dept, prod_type = pairs[pair_idx, 0], pairs[pair_idx, 1]
    app_p = np.array([a[2] for a in appearances], float)
    prod_app = rng.choice(len(appearances), size=n_products, p=app_p / app_p.sum())
    existing = rng.random(n_products) < behaviour.share_existing_at_start
    prod_launch = np.where(existing, -rng.integers(0, 120, n_products), rng.integers(0, days, n_products))
    basic = rng.random(n_products) < behaviour.p_basic
    half_life = np.where(basic, 200.0, behaviour.median_half_life_weeks * rng.lognormal(0, 0.5, n_products))
    prod_appeal = rng.lognormal(0.0, behaviour.appeal_sigma, n_products)
    prod_price = rng.lognormal(0.0, 0.35, n_products)
    prod_names = _names(rng, n_products)
    # product codes increase with launch, like the real ones
    codes = np.sort(rng.choice(np.arange(108775, 959462), size=n_products, replace=False))
    code_of = np.empty(n_products, np.int64)
    code_of[np.argsort(prod_launch, kind="stable")] = codes

    col_p = np.array([c[6] for c in colours], float)
    col_p /= col_p.sum()
    rows = []
    for p in range(n_products):
        k = int(sizes[p])
        cidx = rng.choice(len(colours), size=min(k, len(colours)), replace=False, p=col_p)
        if k > len(colours):
            cidx = np.concatenate([cidx, rng.choice(len(colours), size=k - len(colours), p=col_p)])
        for v in range(k):
            app = prod_app[p] if rng.random() > 0.15 else rng.choice(len(appearances), p=app_p / app_p.sum())
            rows.append((p, v, int(cidx[v]), int(app)))
    rows = np.array(rows, dtype=np.int64)
    prod, var, col, app = rows.T

    t_rows = [types[int(t)] for t in prod_type[prod]]
    d_rows = [depts[int(d)] for d in prod_dept[prod]]
    c_rows = [colours[int(c)] for c in col]
    a_rows = [appearances[int(a)] for a in app]
    type_names = np.array([t[1] for t in t_rows], dtype=object)
    fam = np.array([family_of(n) for n in type_names], dtype=object)
    cols = {
        "article_id": np.array(
            [f"{code_of[p]:07d}{v + 1:03d}" for p, v in zip(prod, var, strict=True)], dtype=object
        ),
        "product_code": np.array([f"{code_of[p]:07d}" for p in prod], dtype=object),
        "prod_name": np.array([prod_names[p] for p in prod], dtype=object),
        "product_type_no": prod_type[prod],
        "product_type_name": type_names,
        "product_group_name": np.array([t[2] for t in t_rows], dtype=object),
        "graphical_appearance_no": np.array([a[0] for a in a_rows]),
        "graphical_appearance_name": np.array([a[1] for a in a_rows], dtype=object),
        "colour_group_code": np.array([c[0] for c in c_rows]),
        "colour_group_name": np.array([c[1] for c in c_rows], dtype=object),
        "perceived_colour_value_id": np.array([c[2] for c in c_rows]),
        "perceived_colour_value_name": np.array([c[3] for c in c_rows], dtype=object),
        "perceived_colour_master_id": np.array([c[4] for c in c_rows]),
        "perceived_colour_master_name": np.array([c[5] for c in c_rows], dtype=object),
        "department_no": prod_dept[prod],
        "department_name": np.array([d[1] for d in d_rows], dtype=object),
        "index_code": np.array([d[2] for d in d_rows], dtype=object),
        "index_name": np.array([d[3] for d in d_rows], dtype=object),
        "index_group_no": np.array([d[4] for d in d_rows]),
        "index_group_name": np.array([d[5] for d in d_rows], dtype=object),
        "section_no": np.array([d[6] for d in d_rows]),
        "section_name": np.array([d[7] for d in d_rows], dtype=object),
        "garment_group_no": np.array([d[8] for d in d_rows]),
        "garment_group_name": np.array([d[9] for d in d_rows], dtype=object),
    }
    missing_desc = rng.random(len(prod)) < 0.004  # real: 416 of 105,542 articles have none
    cols["detail_desc"] = np.array(
        [
            None
            if missing_desc[i]
            else _detail_desc(
                cols["graphical_appearance_name"][i], type_names[i], cols["garment_group_name"][i], fam[i]
            )
            for i in range(len(prod))
        ],
        dtype=object,
    )

    # internal order: index group, product group, product type, product code, variant
    order = np.lexsort(
        (cols["article_id"], cols["product_type_name"], cols["product_group_name"], cols["index_group_name"])
    )
    cols = {k: v[order] for k, v in cols.items()}
    prod, fam = prod[order], fam[order]
    index_groups = sorted(set(cols["index_group_name"]))
    product_groups = sorted(set(cols["product_group_name"]))
    ig_code = np.array([index_groups.index(x) for x in cols["index_group_name"]], np.int64)
    pg_code = np.array([product_groups.index(x) for x in cols["product_group_name"]], np.int64)
    change = np.r_[True, cols["product_code"][1:] != cols["product_code"][:-1]]
    starts = np.flatnonzero(change)
    group_id = np.cumsum(change) - 1
    product_start = starts[group_id]
    product_size = np.diff(np.r_[starts, len(prod)])[group_id]

    factor = np.array([FAMILIES[f].price_factor for f in fam])
    base_price = factor * prod_price[prod]
    seg_of_master = {m: i for i, (_, ms) in enumerate(COLOUR_SEGMENTS.items()) for m in ms}
    colour_segment = np.array(
        [seg_of_master.get(m, -1) for m in cols["perceived_colour_master_name"]], np.int64
    )
    # price tier relative to the article's product type
    tier = np.ones(len(prod), np.int64)
    for t in np.unique(cols["product_type_no"]):
        m = cols["product_type_no"] == t
        lo, hi = np.quantile(base_price[m], [0.33, 0.67])
        tier[m & (base_price < lo)] = 0
        tier[m & (base_price > hi)] = 2

    return Catalogue(
        columns=cols,
        launch_day=prod_launch[prod],
        half_life=half_life[prod],
        base_appeal=prod_appeal[prod],
        base_price=base_price,
        family=fam,
        product_start=product_start,
        product_size=product_size,
        ig_code=ig_code,
        pg_code=pg_code,
        index_groups=index_groups,
        product_groups=product_groups,
        colour_segment=colour_segment,
        price_tier=tier,
    )


def weekly_appeal(cat: Catalogue, scale: Scale) -> np.ndarray:
    """Appeal of every article in every week of the period, shape (weeks, articles)."""
    days = (scale.end - scale.start).days + 1
    n_weeks = math.ceil(days / 7)
    out = np.zeros((n_weeks, cat.n))
    families = sorted(set(cat.family))
    fam_idx = np.array([families.index(f) for f in cat.family])
    for w in range(n_weeks):
        day = w * 7 + 3  # middle of the week
        age_weeks = (day - cat.launch_day) / 7.0
        life = np.where(
            age_weeks < 0,
            0.0,
            np.minimum(1.0, (age_weeks + 1) / 2.0) * np.exp2(-np.maximum(age_weeks, 0) / cat.half_life),
        )
        week_of_year = (scale.start + dt.timedelta(days=day)).isocalendar()[1]
        season = np.array([season_factor(f, week_of_year) for f in families])[fam_idx]
        out[w] = cat.base_appeal * np.maximum(life, 0.02 * (age_weeks >= 0)) * season
    return out


def rake_appeal(cat: Catalogue, appeal: np.ndarray, cal: dict, iterations: int = 15) -> np.ndarray:
    """Scale base appeal per product type and colour so expected sales match the real transaction shares."""
    exposure = appeal.sum(axis=0)
    targets = [
        (cat.columns["product_type_name"], cal["transaction_share"]["product_type"]),
        (cat.columns["colour_group_name"], cal["transaction_share"]["colour_group"]),
    ]
    mult = np.ones(cat.n)
    for _ in range(iterations):
        for labels, share in targets:
            sales = exposure * mult
            uniq, inv = np.unique(labels, return_inverse=True)
            have = np.bincount(inv, weights=sales)
            want = np.array([share.get(u, 0.0) for u in uniq])
            want = want / want.sum() * have.sum() if want.sum() > 0 else have
            ratio = np.divide(want, have, out=np.ones_like(want), where=have > 0)
            ratio[want == 0] = 1.0
            mult *= ratio[inv]
    return appeal * mult[None, :]


# ---------------------------------------------------------------------------------------------
# customers
# ---------------------------------------------------------------------------------------------
@dataclass
class Customers:
    ids: np.ndarray  # hex strings, internal order = sign-up order
    age: np.ndarray  # float, nan when unknown
    columns: dict[str, np.ndarray]
    primary_ig: np.ndarray
    segment: np.ndarray  # colour family * 3 + price tier
    online: np.ndarray  # prefers channel 2
    activity_cdf: np.ndarray
    signed_up_by_day: np.ndarray  # number of customers signed up on each day
    first_visit: list[np.ndarray]  # per day: customers whose first purchase of the period it is


_AGE_RANGES = {
    "under_20": (16, 20),
    "20_to_29": (20, 30),
    "30_to_39": (30, 40),
    "40_to_49": (40, 50),
    "50_to_59": (50, 60),
    "60_plus": (60, 86),
}
# how much each age bucket leans to each index group (before raking to the real shares)
_AGE_LEAN = {
    "Divided": {"under_20": 4.0, "20_to_29": 2.0},
    "Baby/Children": {"30_to_39": 3.0, "40_to_49": 2.0, "under_20": 0.3},
    "Menswear": {},
    "Sport": {"20_to_29": 1.5, "30_to_39": 1.3},
    "Ladieswear": {"50_to_59": 1.5, "60_plus": 1.5},
}


def _hex_ids(seed: int, kind: str, n: int) -> np.ndarray:
    return np.array(
        [hashlib.sha256(f"{seed}:{kind}:{i}".encode()).hexdigest() for i in range(n)], dtype=object
    )


def build_customers(
    scale: Scale,
    rng: np.random.Generator,
    cal: dict,
    behaviour: Behaviour,
    seed: int,
    index_groups: list[str],
) -> Customers:
    n = scale.customers
    days = (scale.end - scale.start).days + 1
    buckets = list(cal["age_buckets"])
    bucket = rng.choice(len(buckets), size=n, p=_norm([cal["age_buckets"][b] for b in buckets]))
    age = np.full(n, np.nan)
    for i, b in enumerate(buckets):
        if b in _AGE_RANGES:
            lo, hi = _AGE_RANGES[b]
            m = bucket == i
            age[m] = np.floor(rng.uniform(lo, hi, m.sum()))

    status_keys = list(cal["club_member_status"])
    status = rng.choice(status_keys, size=n, p=_norm(list(cal["club_member_status"].values())))
    status = np.where(status == "Unknown", None, status)
    news_keys = list(cal["fashion_news_frequency"])
    news = rng.choice(news_keys, size=n, p=_norm(list(cal["fashion_news_frequency"].values())))
    news = np.where(news == "Unknown", None, news)
    fn = np.where(np.isin(news, ["Regularly", "Monthly"]) | (rng.random(n) < 0.01), 1.0, np.nan)
    active = np.where((fn == 1.0) & (rng.random(n) < 0.96), 1.0, np.nan)
    # postal codes: a heavy tail with one code shared by ~9 % of customers (as in the real data)
    n_codes = max(2, n // 3)
    code_idx = np.where(rng.random(n) < 0.09, 0, np.minimum(rng.zipf(1.3, n), n_codes - 1))
    postal = _hex_ids(seed, "postal", n_codes)[code_idx]

    # hidden tastes: primary index group leaning by age, raked to the real transaction shares
    target = np.array([cal["transaction_share"]["index_group"].get(g, 0.0) for g in index_groups])
    target = target / target.sum()
    lean = np.ones((len(buckets), len(index_groups)))
    for j, g in enumerate(index_groups):
        for i, b in enumerate(buckets):
            lean[i, j] = _AGE_LEAN.get(g, {}).get(b, 1.0)
    bucket_share = np.bincount(bucket, minlength=len(buckets)) / n
    for _ in range(30):
        p = lean / lean.sum(axis=1, keepdims=True)
        have = bucket_share @ p
        lean *= np.divide(target, have, out=np.ones_like(target), where=have > 0)[None, :]
    p = lean / lean.sum(axis=1, keepdims=True)
    u = rng.random(n)[:, None]
    primary_ig = (u > np.cumsum(p[bucket], axis=1)).sum(axis=1)

    colour_family = rng.choice(len(COLOUR_SEGMENTS), size=n, p=[0.35, 0.2, 0.2, 0.15, 0.1])
    old = np.nan_to_num(age, nan=35.0)
    tier_p = np.stack([np.clip(0.45 - (old - 20) * 0.006, 0.1, 0.6), np.full(n, 0.4)], axis=1)
    tier_p = np.concatenate([tier_p, 1 - tier_p.sum(axis=1, keepdims=True)], axis=1)
    tier = (rng.random(n)[:, None] > np.cumsum(tier_p, axis=1)).sum(axis=1)
    segment = colour_family * 3 + np.minimum(tier, 2)

    share2 = cal["sales_channel"].get("2", 0.704)
    loyal = behaviour.channel_loyalty
    online = rng.random(n) < (share2 - (1 - loyal)) / (2 * loyal - 1)
    signup = np.where(rng.random(n) < behaviour.share_signed_up_at_start, 0, rng.integers(0, days, n))
    order = np.argsort(signup, kind="stable")  # internal order: sign-up order, so active = a prefix
    activity = rng.lognormal(0.0, behaviour.activity_sigma, n)[order]
    signed_up_by_day = np.searchsorted(np.sort(signup), np.arange(days), side="right")
    # everyone in customers.csv buys at least once: on sign-up day, or some day for those already there
    first_day = np.where(signup > 0, signup, rng.integers(0, days, n))[order]
    by_day = np.argsort(first_day, kind="stable")
    bounds = np.searchsorted(first_day[by_day], np.arange(days + 1))
    first_visit = [by_day[bounds[d] : bounds[d + 1]] for d in range(days)]
    ids = _hex_ids(seed, "customer", n)
    columns = {
        "customer_id": ids,
        "FN": fn,
        "Active": active,
        "club_member_status": status,
        "fashion_news_frequency": news,
        "age": age,
        "postal_code": postal,
    }
    columns = {k: v[order] for k, v in columns.items()}
    return Customers(
        ids=columns["customer_id"],
        age=columns["age"],
        columns=columns,
        primary_ig=primary_ig[order],
        segment=segment[order],
        online=online[order],
        activity_cdf=np.cumsum(activity),
        signed_up_by_day=signed_up_by_day,
        first_visit=first_visit,
    )


def _norm(x) -> np.ndarray:
    x = np.asarray(x, float)
    return x / x.sum()


# ---------------------------------------------------------------------------------------------
# transactions
# ---------------------------------------------------------------------------------------------
def daily_targets(scale: Scale, cal: dict) -> np.ndarray:
    """Rows per day: the real daily curve over the scale's period, scaled to its total exactly."""
    start = dt.date.fromisoformat(cal["daily"]["start"])
    curve = np.array(cal["daily"]["transactions"], float)
    days = (scale.end - scale.start).days + 1
    offsets = [(scale.start - start).days + d for d in range(days)]
    w = np.array([curve[o] if 0 <= o < len(curve) else curve.mean() for o in offsets])
    exact = w / w.sum() * scale.transactions
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts))[: scale.transactions - counts.sum()]] += 1
    return counts


class _Sampler:
    """Samples articles for customer segments from contiguous blocks of the internal order."""

    def __init__(self, cat: Catalogue, behaviour: Behaviour, ig_share: np.ndarray):
        self.cat = cat
        self.ig_cdf = np.cumsum(ig_share / ig_share.sum())
        n_colour = len(COLOUR_SEGMENTS)
        self.n_segments = n_colour * 3
        colour_aff = np.ones((n_colour, cat.n))
        for s in range(n_colour):
            colour_aff[s, cat.colour_segment == s] = behaviour.colour_boost
        price_aff = np.array([[1.8, 1.0, 0.5], [1.0, 1.0, 1.0], [0.6, 1.0, 1.8]])[:, cat.price_tier]
        self.affinity = (colour_aff[:, None, :] * price_aff[None, :, :]).reshape(self.n_segments, cat.n)
        n_ig, n_pg = len(cat.index_groups), len(cat.product_groups)
        self.ig_lo = np.searchsorted(cat.ig_code, np.arange(n_ig), side="left")
        self.ig_hi = np.searchsorted(cat.ig_code, np.arange(n_ig), side="right")
        key = cat.ig_code * n_pg + cat.pg_code
        self.block_lo = np.searchsorted(key, np.arange(n_ig * n_pg), side="left")
        self.block_hi = np.searchsorted(key, np.arange(n_ig * n_pg), side="right")
        self.n_pg = n_pg
        comp = np.zeros((n_pg, n_pg))
        for g, targets in COMPLEMENTS.items():
            if g in cat.product_groups:
                for t, w in targets.items():
                    if t in cat.product_groups:
                        comp[cat.product_groups.index(g), cat.product_groups.index(t)] = w
        self.has_complement = comp.sum(axis=1) > 0
        self.comp_cdf = np.cumsum(comp / np.maximum(comp.sum(axis=1, keepdims=True), 1e-12), axis=1)
        self.stride = cat.n + 1

    def set_week(self, appeal: np.ndarray) -> None:
        w = self.affinity * appeal[None, :]
        cdf = np.zeros((self.n_segments, self.stride))
        np.cumsum(w, axis=1, out=cdf[:, 1:])
        total = np.maximum(cdf[:, -1:], 1e-300)
        self.flat = (cdf / total + np.arange(self.n_segments)[:, None]).ravel()

    def draw(self, rng, segment, lo, hi) -> tuple[np.ndarray, np.ndarray]:
        """One article per row in [lo, hi) of its segment's distribution; ok=False where the block is
        empty."""
        base = segment * self.stride
        a, b = self.flat[base + lo], self.flat[base + hi]
        ok = b - a > 1e-12
        u = a + rng.random(len(segment)) * (b - a)
        idx = np.searchsorted(self.flat, u, side="right") - 1 - base
        return np.clip(idx, lo, np.maximum(hi - 1, lo)), ok

    def complement_group(self, rng, pg: np.ndarray) -> np.ndarray:
        u = rng.random(len(pg))[:, None]
        return np.minimum((u > self.comp_cdf[pg]).sum(axis=1), self.n_pg - 1)


def _choose_baskets(rng, cust: Customers, day: int, n_rows: int, behaviour: Behaviour):
    """Shoppers, items per basket and units per item such that the day has exactly ``n_rows`` rows."""
    n_active = max(int(cust.signed_up_by_day[day]), 1)
    total_activity = cust.activity_cdf[n_active - 1]
    p_item = 1.0 / behaviour.mean_basket_items
    factor = 1.3
    while True:
        n_draw = int(n_rows / (behaviour.mean_basket_items * (1 + behaviour.p_extra_unit)) * factor) + 5
        who = np.searchsorted(cust.activity_cdf, rng.random(n_draw) * total_activity, side="right")
        who = np.concatenate([cust.first_visit[day], np.minimum(who, n_active - 1)])
        _, first = np.unique(who, return_index=True)
        who = who[np.sort(first)]  # one basket per shopper per day, in draw order
        items = np.minimum(rng.geometric(p_item, len(who)), 40)
        units = rng.geometric(1 - behaviour.p_extra_unit, int(items.sum()))
        if units.sum() >= n_rows:
            break
        factor *= 1.5
    cum = np.cumsum(units)
    last = int(np.searchsorted(cum, n_rows))  # the item that reaches n_rows
    units = units[: last + 1].copy()
    units[-1] -= cum[last] - n_rows
    basket_end = np.cumsum(items)
    n_baskets = int(np.searchsorted(basket_end, last + 1)) + 1
    items = items[:n_baskets].copy()
    items[-1] = last + 1 - (basket_end[n_baskets - 2] if n_baskets > 1 else 0)
    return who[:n_baskets], items, units


def generate_day(
    rng, day, n_rows, cat: Catalogue, cust: Customers, sampler: _Sampler, hist, hist_n, behaviour: Behaviour
):
    """Rows of one day as arrays (customer index, article index, units, channel)."""
    who, items, units = _choose_baskets(rng, cust, day, n_rows, behaviour)
    n_b = len(who)
    seg = cust.segment[who]
    chosen = np.full((n_b, int(items.max())), -1, np.int64)
    prev = np.where(hist_n[who] > 0, hist[who, (hist_n[who] - 1) % HISTORY], -1)
    for j in range(int(items.max())):
        act = np.flatnonzero(items > j)
        c, s, p = who[act], seg[act], prev[act]
        m = len(act)
        out = np.full(m, -1, np.int64)
        u = rng.random(m)
        has_hist = hist_n[c] > 0
        # repurchase
        rep = has_hist & (u < behaviour.p_repurchase)
        if rep.any():
            k = rng.integers(0, np.minimum(hist_n[c[rep]], HISTORY))
            a = hist[c[rep], k]
            variant = rng.random(rep.sum()) < behaviour.p_variant_on_repurchase
            a = np.where(variant, cat.product_start[a] + rng.integers(0, cat.product_size[a]), a)
            out[rep] = a
        # complement of the previous item, same index group
        comp = (out < 0) & (p >= 0) & (u < behaviour.p_repurchase + behaviour.p_complement)
        comp &= sampler.has_complement[cat.pg_code[np.maximum(p, 0)]]
        if comp.any():
            pp = p[comp]
            g = sampler.complement_group(rng, cat.pg_code[pp])
            key = cat.ig_code[pp] * sampler.n_pg + g
            idx, ok = sampler.draw(rng, s[comp], sampler.block_lo[key], sampler.block_hi[key])
            out[np.flatnonzero(comp)[ok]] = idx[ok]
        # browse: primary index group or any
        rest = np.flatnonzero(out < 0)
        if len(rest):
            anywhere = np.minimum(
                (rng.random(len(rest))[:, None] > sampler.ig_cdf).sum(axis=1), len(sampler.ig_lo) - 1
            )
            ig = np.where(
                rng.random(len(rest)) < behaviour.p_primary_index_group, cust.primary_ig[c[rest]], anywhere
            )
            idx, ok = sampler.draw(rng, s[rest], sampler.ig_lo[ig], sampler.ig_hi[ig])
            bad = ~ok
            if bad.any():  # index group with nothing on sale this week: anything
                idx2, _ = sampler.draw(
                    rng, s[rest][bad], np.zeros(bad.sum(), np.int64), np.full(bad.sum(), cat.n)
                )
                idx[bad] = idx2
            out[rest] = idx
        chosen[act, j] = out
        prev[act] = out
        slot = hist_n[c] % HISTORY
        hist[c, slot] = out
        hist_n[c] += 1
    mask = np.arange(chosen.shape[1])[None, :] < items[:, None]
    articles = chosen[mask]  # basket by basket, item order within a basket
    buyer = np.repeat(who, items)
    channel = np.where(cust.online[who] ^ (rng.random(n_b) > behaviour.channel_loyalty), 2, 1)
    return buyer, articles, units, np.repeat(channel, items)


def _price(rng, cat: Catalogue, articles: np.ndarray, day: int, scale_price: float) -> np.ndarray:
    age_weeks = (day - cat.launch_day[articles]) / 7.0
    on_sale = rng.random(len(articles)) < np.clip((age_weeks - cat.half_life[articles]) / 20.0, 0, 0.6)
    discount = np.where(on_sale, rng.choice([0.5, 0.6, 0.7, 0.8], len(articles)), 1.0)
    price = cat.base_price[articles] * discount * scale_price
    return np.maximum(np.round(price / PRICE_STEP), 1) * PRICE_STEP


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _write_csv(path: Path, table: pa.Table) -> None:
    """Quotes only where a value needs them, like the Kaggle files (pyarrow quotes every string)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(table.column_names)
        for batch in table.to_batches(max_chunksize=65536):
            cols = [_csv_text(c) for c in batch.columns]
            writer.writerows(zip(*cols, strict=True))


def _csv_text(col: pa.Array) -> list[str]:
    if pa.types.is_floating(col.type):
        return ["" if v is None else repr(float(v)) for v in col.to_pylist()]
    return ["" if v is None else str(v) for v in col.to_pylist()]


def _article_table(cat: Catalogue) -> pa.Table:
    order = np.argsort(cat.columns["article_id"])
    arrays = {}
    for c in ARTICLES.columns:
        v = cat.columns[c.name][order]
        arrays[c.name] = pa.array(v.tolist() if v.dtype == object else v, type=c.type)
    return pa.table(arrays)


def _customer_table(cust: Customers) -> pa.Table:
    order = np.argsort(cust.columns["customer_id"])
    arrays = {}
    for c in CUSTOMERS.columns:
        v = cust.columns[c.name][order]
        if v.dtype == object:
            arrays[c.name] = pa.array(v.tolist(), type=pa.string())
        else:
            arrays[c.name] = pa.array(v, type=pa.float64(), from_pandas=True)
    return pa.table(arrays)


def _render_images_chunk(args) -> int:
    out_dir, rows = args
    from hm_recs.synth.images import render_article_image

    for article_id, family, colour, appearance in rows:
        path = Path(out_dir) / image_relpath(article_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        render_article_image(article_id, family, colour, appearance).save(path, quality=85)
    return len(rows)


def write_images(out: Path, cat: Catalogue, workers: int = 2, progress: bool = True) -> int:
    rows = list(
        zip(
            cat.columns["article_id"],
            cat.family,
            cat.columns["colour_group_name"],
            cat.columns["graphical_appearance_name"],
            strict=True,
        )
    )
    chunks = [(str(out), rows[i : i + 500]) for i in range(0, len(rows), 500)]
    done = 0
    with (
        ProcessPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(rows), desc="images", unit="img", disable=not progress) as bar,
    ):
        for n in pool.map(_render_images_chunk, chunks):
            done += n
            bar.update(n)
    return done


@dataclass
class GenerationReport:
    scale: str
    seed: int
    out: str
    articles: int
    customers: int
    transactions: int
    images: int
    start: str
    end: str


def generate(
    out: str | Path,
    scale: str | Scale = "small",
    seed: int = 0,
    images: str = "all",
    behaviour: Behaviour | None = None,
    progress: bool = True,
    workers: int = 2,
    log: Callable[[str], None] = lambda s: None,
) -> GenerationReport:
    """Write a Kaggle-layout dataset to ``out``: three CSV files and (``images='all'``) the photos."""
    sc = SCALES[scale] if isinstance(scale, str) else scale
    if images not in ("all", "none"):
        raise ValueError(f"images must be 'all' or 'none', got {images!r}")
    behaviour = behaviour or Behaviour()
    cal = load_calibration()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cat = build_catalogue(sc, rng, cal, behaviour)
    log(f"catalogue: {cat.n} articles")
    cust = build_customers(sc, rng, cal, behaviour, seed, cat.index_groups)
    log(f"customers: {len(cust.ids)}")
    appeal = rake_appeal(cat, weekly_appeal(cat, sc), cal)
    _write_csv(out / "articles.csv", _article_table(cat))
    _write_csv(out / "customers.csv", _customer_table(cust))

    ig_share = np.array([cal["transaction_share"]["index_group"].get(g, 0.0) for g in cat.index_groups])
    sampler = _Sampler(cat, behaviour, ig_share)
    hist = np.full((len(cust.ids), HISTORY), -1, np.int64)
    hist_n = np.zeros(len(cust.ids), np.int64)
    targets = daily_targets(sc, cal)
    # price scale: the real average price over the catalogue's expected sales mix
    expected_mix = appeal.sum(axis=0)
    scale_price = (
        cal["totals"]["avg_price"] / float(cat.base_price @ expected_mix / expected_mix.sum()) / 0.93
    )
    ids = pa.array(cust.ids.tolist(), pa.string())
    art_ids = pa.array(cat.columns["article_id"].tolist(), pa.string())
    schema = pa.schema([(c.name, pa.string() if c.name == "t_dat" else c.type) for c in TRANSACTIONS.columns])
    tmp = out / "transactions_train.csv.partial"
    # no value of a transaction needs quotes: pyarrow's fast writer, told never to quote
    with (
        open(tmp, "wb") as sink,
        pcsv.CSVWriter(
            sink, schema, write_options=pcsv.WriteOptions(include_header=False, quoting_style="none")
        ) as writer,
    ):
        sink.write((",".join(schema.names) + "\n").encode())
        for day in tqdm(range(len(targets)), desc="days", unit="day", disable=not progress):
            if day % 7 == 0:
                sampler.set_week(appeal[day // 7])
            buyer, arts, units, channel = generate_day(
                rng, day, int(targets[day]), cat, cust, sampler, hist, hist_n, behaviour
            )
            price = _price(rng, cat, arts, day, scale_price)
            rep = np.repeat(np.arange(len(arts)), units)
            date = (sc.start + dt.timedelta(days=day)).isoformat()
            writer.write_table(
                pa.table(
                    {
                        "t_dat": pa.array(np.full(len(rep), date, dtype=object), pa.string()),
                        "customer_id": ids.take(pa.array(buyer[rep])),
                        "article_id": art_ids.take(pa.array(arts[rep])),
                        "price": pa.array(price[rep], pa.float64()),
                        "sales_channel_id": pa.array(channel[rep], pa.int8()),
                    },
                    schema=schema,
                )
            )
    tmp.replace(out / "transactions_train.csv")
    n_images = write_images(out, cat, workers=workers, progress=progress) if images == "all" else 0
    report = GenerationReport(
        scale=sc.name,
        seed=seed,
        out=str(out),
        articles=cat.n,
        customers=len(cust.ids),
        transactions=int(targets.sum()),
        images=n_images,
        start=sc.start.isoformat(),
        end=sc.end.isoformat(),
    )
    (out / "SYNTHETIC.json").write_text(json.dumps(report.__dict__, indent=1) + "\n")
    return report
