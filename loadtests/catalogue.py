"""Realistic preference content for the seed: products, sizes and notes people actually keep."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

COLOURS = [
    "navy",
    "stone",
    "olive",
    "black",
    "charcoal",
    "sand",
    "burgundy",
    "white",
    "sky blue",
    "forest green",
    "camel",
    "rust",
]
FITS = ["slim", "regular", "relaxed", "tapered", "straight"]
LETTER_SIZES = ["XS", "S", "M", "L", "XL", "XXL"]
UK_DRESS_SIZES = [str(n) for n in range(6, 24, 2)]

NOTES = [
    "The only ones that fit my long legs.",
    "Buy two if the {size} is in stock.",
    "Not the stretch version, it bags at the knee.",
    "My husband wears these too, one size up.",
    "Ask for the darker dye lot if there is a choice.",
    "Runs small, always take the larger size.",
    "Wore these for years until they disappeared from the shelf.",
    "Gift for my father every Christmas.",
    "Please keep aside when the new season arrives.",
    "Fits perfectly after one wash.",
    "Größe passt perfekt, nicht die schmale Variante.",
    "Très confortable, le seul modèle qui tient toute la journée.",
    "Grind it for the stovetop pot, not espresso.",
    "The tall length, never the regular.",
    "Only in the cotton one, the blend itches.",
]


def _trousers(rng: random.Random) -> dict[str, str]:
    return {
        "waist": str(rng.choice(range(28, 42, 2))),
        "leg": str(rng.choice(range(28, 37, 2))),
        "colour": rng.choice(COLOURS),
        "fit": rng.choice(FITS),
    }


def _shirt(rng: random.Random) -> dict[str, str]:
    return {
        "size": rng.choice(LETTER_SIZES),
        "collar": rng.choice(["15", "15.5", "16", "16.5", "17"]),
        "colour": rng.choice(COLOURS),
        "fit": rng.choice(FITS[:3]),
    }


def _shoes(rng: random.Random) -> dict[str, str]:
    return {
        "size": f"EU {rng.choice(range(36, 48))}",
        "width": rng.choice(["narrow", "standard", "wide"]),
        "colour": rng.choice(["black", "brown", "tan", "white", "navy"]),
    }


def _knitwear(rng: random.Random) -> dict[str, str]:
    return {
        "size": rng.choice(LETTER_SIZES),
        "colour": rng.choice(COLOURS),
        "fabric": rng.choice(["merino", "lambswool", "cotton", "cashmere blend"]),
    }


def _dress(rng: random.Random) -> dict[str, str]:
    return {
        "size": f"UK {rng.choice(UK_DRESS_SIZES)}",
        "length": rng.choice(["petite", "regular", "tall"]),
        "colour": rng.choice(COLOURS),
    }


def _coffee(rng: random.Random) -> dict[str, str]:
    return {
        "grind": rng.choice(["whole bean", "espresso", "filter", "cafetière", "stovetop"]),
        "weight": rng.choice(["250 g", "500 g", "1 kg"]),
    }


def _tea(rng: random.Random) -> dict[str, str]:
    return {"format": rng.choice(["loose leaf", "bags"]), "weight": rng.choice(["100 g", "250 g"])}


CATEGORIES: list[
    tuple[str, str, list[str], list[str], Callable[[random.Random], dict[str, str]]]
] = [
    (
        "trousers",
        "TRS",
        ["Classic Chino", "Slim Chino", "Straight Jeans", "Cord Trousers", "Pleated Wool Trousers"],
        ["Harbour & Vale", "Northway", "Oakmere"],
        _trousers,
    ),
    (
        "shirts",
        "SHI",
        ["Oxford Shirt", "Linen Shirt", "Flannel Overshirt", "Poplin Shirt"],
        ["Northway", "Albion Mill", "Oakmere"],
        _shirt,
    ),
    (
        "shoes",
        "SHO",
        ["Leather Derby", "Canvas Trainer", "Chelsea Boot", "Suede Loafer"],
        ["Coldharbour", "Fenwick & Rowe"],
        _shoes,
    ),
    (
        "knitwear",
        "KNT",
        ["Merino Crew Neck", "Lambswool Cardigan", "Fisherman Jumper"],
        ["Albion Mill", "Shetland Co."],
        _knitwear,
    ),
    (
        "dresses",
        "DRS",
        ["Wrap Dress", "Shirt Dress", "Jersey Midi Dress"],
        ["Marlowe", "Northway"],
        _dress,
    ),
    (
        "coffee",
        "COF",
        ["Single-Origin Colombia", "House Espresso Blend", "Decaf Swiss Water"],
        ["Roastery No. 7"],
        _coffee,
    ),
    ("tea", "TEA", ["Earl Grey", "Assam Breakfast", "Sencha"], ["Leaf & Kettle"], _tea),
]


def preference(rng: random.Random, rank: int, today: date) -> dict[str, Any]:
    """One preference as plain values: product, attributes, note, rank, status, purchases, date."""
    category, prefix, names, brands, attributes_of = rng.choice(CATEGORIES)
    name_index = rng.randrange(len(names))
    attributes = attributes_of(rng)
    note = None
    if rng.random() < 0.6:
        size = (
            attributes.get("size")
            or f"{attributes.get('waist', '32')}/{attributes.get('leg', '32')}"
        )
        note = rng.choice(NOTES).replace("{size}", size)
    purchases = rng.choice([0, 1, 1, 2, 3, 4, 6, 9, 12])
    return {
        "product": {
            "sku": f"{prefix}-{name_index:03d}{rng.randrange(100):02d}",
            "name": names[name_index],
            "brand": rng.choice(brands),
            "category": category,
        },
        "attributes": attributes,
        "note": note,
        "rank": rank,
        "status": "discontinued" if rng.random() < 0.15 else "available",
        "purchases": purchases,
        "last_purchased_on": today - timedelta(days=rng.randrange(1, 1100)) if purchases else None,
    }


def catalogue_products(seed: int = 2026) -> list[dict[str, Any]]:
    """The retailer's catalogue behind those preferences: every SKU ``preference`` can draw
    (about 2 500), one in seven discontinued, each with the sizes it comes in."""
    rng = random.Random(seed)
    products = []
    for category, prefix, names, brands, attributes_of in CATEGORIES:
        for name_index, name in enumerate(names):
            for variant in range(100):
                options: dict[str, set[str]] = {}
                for _ in range(6):
                    for attribute, value in attributes_of(rng).items():
                        options.setdefault(attribute, set()).add(value)
                products.append(
                    {
                        "sku": f"{prefix}-{name_index:03d}{variant:02d}",
                        "name": name,
                        "brand": rng.choice(brands),
                        "category": category,
                        "status": "discontinued" if rng.random() < 1 / 7 else "available",
                        "attributes": {k: sorted(v) for k, v in options.items()},
                    }
                )
    return products
