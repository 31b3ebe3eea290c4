"""Garment families: how a product type looks, costs and sells through the year.

The real catalogue has 132 product types. The generator groups them into a few silhouette families
by name; a family decides the drawn shape of the product photo, a price factor and a seasonal
pattern (swimwear sells in summer, coats in winter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    price_factor: float
    season_peak_week: int | None = None  # ISO week of the yearly peak, None = no season
    season_amplitude: float = 0.0


FAMILIES = {
    f.name: f
    for f in (
        Family("top", 0.8),
        Family("sweater", 1.3, season_peak_week=2, season_amplitude=0.6),
        Family("jacket", 2.2, season_peak_week=46, season_amplitude=0.7),
        Family("trousers", 1.3),
        Family("shorts", 0.8, season_peak_week=26, season_amplitude=0.8),
        Family("skirt", 1.0, season_peak_week=24, season_amplitude=0.3),
        Family("dress", 1.4, season_peak_week=24, season_amplitude=0.4),
        Family("swim_top", 0.8, season_peak_week=25, season_amplitude=0.9),
        Family("swim_bottom", 0.7, season_peak_week=25, season_amplitude=0.9),
        Family("bra", 0.7),
        Family("underwear_bottom", 0.4),
        Family("socks", 0.4, season_peak_week=50, season_amplitude=0.2),
        Family("shoes", 1.6),
        Family("bag", 1.2),
        Family("hat", 0.6, season_peak_week=50, season_amplitude=0.6),
        Family("scarf", 0.7, season_peak_week=50, season_amplitude=0.7),
        Family("jewellery", 0.5),
        Family("other", 0.7),
    )
}

# first matching keyword (lower-case substring of the product type name) wins
_KEYWORDS = (
    ("bikini top", "swim_top"),
    ("swimwear top", "swim_top"),
    ("swimwear bottom", "swim_bottom"),
    ("swimsuit", "dress"),
    ("earring", "jewellery"),
    ("necklace", "jewellery"),
    ("bracelet", "jewellery"),
    ("bra", "bra"),
    ("underwear bottom", "underwear_bottom"),
    ("brief", "underwear_bottom"),
    ("boxer", "underwear_bottom"),
    ("sock", "socks"),
    ("tights", "socks"),
    ("leggings", "trousers"),
    ("trousers", "trousers"),
    ("jumpsuit", "dress"),
    ("dungarees", "trousers"),
    ("shorts", "shorts"),
    ("skirt", "skirt"),
    ("dress", "dress"),
    ("sweater", "sweater"),
    ("cardigan", "sweater"),
    ("hoodie", "sweater"),
    ("jacket", "jacket"),
    ("coat", "jacket"),
    ("blazer", "jacket"),
    ("outdoor", "jacket"),
    ("sneakers", "shoes"),
    ("boots", "shoes"),
    ("sandals", "shoes"),
    ("heels", "shoes"),
    ("pumps", "shoes"),
    ("ballerinas", "shoes"),
    ("shoe", "shoes"),
    ("slippers", "shoes"),
    ("flip flop", "shoes"),
    ("wedge", "shoes"),
    ("bag", "bag"),
    ("backpack", "bag"),
    ("purse", "bag"),
    ("wallet", "bag"),
    ("hat", "hat"),
    ("cap", "hat"),
    ("beanie", "hat"),
    ("scarf", "scarf"),
    ("ring", "jewellery"),
    ("hair", "jewellery"),
    ("bootie", "shoes"),
    ("moccasin", "shoes"),
    ("pre-walkers", "shoes"),
    ("t-shirt", "top"),
    ("top", "top"),
    ("blouse", "top"),
    ("shirt", "top"),
    ("vest", "top"),
    ("bodysuit", "top"),
    ("pyjama", "top"),
    ("night gown", "dress"),
    ("robe", "dress"),
    ("polo", "top"),
)


def family_of(product_type_name: str) -> str:
    name = product_type_name.lower()
    for word, fam in _KEYWORDS:
        if word in name:
            return fam
    return "other"


def season_factor(family: str, iso_week: int) -> float:
    """Multiplier in [1 - a, 1 + a]: 1 + a at the family's peak week, 1 - a half a year later."""
    f = FAMILIES[family]
    if f.season_peak_week is None:
        return 1.0
    return 1.0 + f.season_amplitude * math.cos(2 * math.pi * (iso_week - f.season_peak_week) / 52.0)


# Product groups whose articles are bought together (an outfit): after an item of the key group the
# next item comes, with the given weights, from these groups (same index group).
COMPLEMENTS: dict[str, dict[str, float]] = {
    "Garment Upper body": {
        "Garment Lower body": 0.7,
        "Garment Upper body": 0.2,
        "Shoes": 0.05,
        "Accessories": 0.05,
    },
    "Garment Lower body": {"Garment Upper body": 0.85, "Shoes": 0.08, "Accessories": 0.07},
    "Garment Full body": {
        "Garment Upper body": 0.4,
        "Garment Full body": 0.25,
        "Shoes": 0.2,
        "Accessories": 0.15,
    },
    "Swimwear": {"Swimwear": 0.9, "Accessories": 0.1},
    "Underwear": {"Underwear": 0.7, "Socks & Tights": 0.15, "Nightwear": 0.15},
    "Socks & Tights": {"Underwear": 0.6, "Socks & Tights": 0.2, "Shoes": 0.2},
    "Shoes": {"Socks & Tights": 0.4, "Garment Lower body": 0.4, "Accessories": 0.2},
    "Accessories": {"Garment Upper body": 0.6, "Accessories": 0.4},
    "Nightwear": {"Underwear": 0.5, "Nightwear": 0.5},
}

# Colour families by perceived master colour: a customer prefers one of them (or none).
COLOUR_SEGMENTS: dict[str, tuple[str, ...]] = {
    "monochrome": ("Black", "White", "Grey", "Metal"),
    "blues": ("Blue", "Turquoise", "Bluish Green"),
    "neutrals": ("Beige", "Brown", "Mole", "Khaki green", "Yellowish Brown"),
    "bright": ("Pink", "Red", "Orange", "Yellow", "Lilac Purple", "Green", "Yellowish Green"),
    "any": (),
}
