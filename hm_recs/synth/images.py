"""Product photos drawn from an article's attributes, so that image tokens carry real signal.

A photo is 128x192 pixels (the size of the real sample's photos) on a light studio background:

* the **silhouette** comes from the garment family of the product type (a T-shirt, trousers, a
  dress, shoes, a bag, ...), with small per-article variations in proportions;
* the **colour** is the article's colour group;
* the **pattern** inside the silhouette comes from the graphical appearance (stripes, checks,
  dots, melange noise, denim twill, a placement print, colour blocking, metallic sheen, lace, ...).

Two colour variants of one product therefore share the shape and pattern and differ in colour.
"""

from __future__ import annotations

import zlib

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 128, 192

COLOURS: dict[str, tuple[int, int, int]] = {
    "Unknown": (128, 128, 128),
    "Other": (150, 140, 130),
    "Transparent": (225, 225, 230),
    "Silver": (192, 192, 200),
    "Bronze/Copper": (176, 110, 60),
    "Gold": (212, 175, 55),
    "Light Grey": (200, 200, 200),
    "Grey": (140, 140, 140),
    "Dark Grey": (75, 75, 78),
    "Black": (22, 22, 24),
    "White": (250, 250, 248),
    "Off White": (240, 234, 220),
    "Light Beige": (232, 216, 190),
    "Beige": (210, 185, 150),
    "Dark Beige": (170, 145, 110),
    "Greyish Beige": (180, 170, 155),
    "Yellowish Brown": (150, 110, 50),
    "Greenish Khaki": (120, 120, 70),
    "Other Yellow": (230, 210, 90),
    "Light Yellow": (250, 240, 150),
    "Yellow": (245, 215, 30),
    "Dark Yellow": (200, 160, 20),
    "Other Orange": (235, 140, 70),
    "Light Orange": (250, 180, 120),
    "Orange": (240, 120, 30),
    "Dark Orange": (200, 90, 20),
    "Other Red": (200, 60, 60),
    "Light Red": (240, 120, 120),
    "Red": (200, 20, 30),
    "Dark Red": (120, 15, 25),
    "Other Pink": (230, 140, 170),
    "Light Pink": (250, 200, 210),
    "Pink": (240, 120, 160),
    "Dark Pink": (190, 60, 110),
    "Other Purple": (150, 100, 170),
    "Light Purple": (200, 170, 220),
    "Purple": (120, 50, 150),
    "Dark Purple": (70, 25, 90),
    "Other Blue": (90, 120, 180),
    "Light Blue": (160, 195, 230),
    "Blue": (40, 80, 180),
    "Dark Blue": (20, 30, 80),
    "Other Turquoise": (80, 170, 170),
    "Light Turquoise": (160, 225, 220),
    "Turquoise": (40, 180, 180),
    "Dark Turquoise": (10, 100, 110),
    "Other Green": (110, 150, 90),
    "Light Green": (170, 220, 160),
    "Green": (40, 140, 60),
    "Dark Green": (20, 70, 35),
}


def _seed(article_id: str, salt: int = 0) -> int:
    return zlib.crc32(f"{article_id}:{salt}".encode())


def _shape(draw: ImageDraw.ImageDraw, family: str, r: np.random.Generator) -> None:
    """Draw the family's silhouette in white on a black mask."""
    w = 1.0 + r.uniform(-0.1, 0.1)  # width jitter
    ln = 1.0 + r.uniform(-0.08, 0.08)  # length jitter
    cx = WIDTH / 2

    def xs(dx: float) -> float:
        return cx + dx * w

    fill = 255
    if family in ("top", "sweater", "jacket"):
        bottom = (150 if family == "top" else 158 if family == "sweater" else 172) * ln
        sleeve = 70 if family == "top" else 135 * ln
        draw.polygon([(xs(-30), 38), (xs(30), 38), (xs(32), bottom), (xs(-32), bottom)], fill=fill)
        draw.polygon(
            [
                (xs(-30), 38),
                (xs(-54), 60 if family == "top" else 50),
                (xs(-58), sleeve),
                (xs(-36), sleeve),
                (xs(-30), 80),
            ],
            fill=fill,
        )
        draw.polygon(
            [
                (xs(30), 38),
                (xs(54), 60 if family == "top" else 50),
                (xs(58), sleeve),
                (xs(36), sleeve),
                (xs(30), 80),
            ],
            fill=fill,
        )
        draw.ellipse([xs(-12), 30, xs(12), 46], fill=0)  # neckline
    elif family in ("trousers", "shorts"):
        bottom = (178 if family == "trousers" else 100) * ln
        draw.rectangle([xs(-30), 28, xs(30), 46], fill=fill)
        draw.polygon([(xs(-30), 46), (xs(-2), 46), (xs(-6), bottom), (xs(-34), bottom)], fill=fill)
        draw.polygon([(xs(2), 46), (xs(30), 46), (xs(34), bottom), (xs(6), bottom)], fill=fill)
    elif family == "skirt":
        draw.polygon([(xs(-22), 40), (xs(22), 40), (xs(40), 140 * ln), (xs(-40), 140 * ln)], fill=fill)
    elif family == "dress":
        draw.polygon([(xs(-18), 26), (xs(18), 26), (xs(22), 80), (xs(-22), 80)], fill=fill)
        draw.polygon([(xs(-22), 80), (xs(22), 80), (xs(44), 176 * ln), (xs(-44), 176 * ln)], fill=fill)
        draw.ellipse([xs(-9), 20, xs(9), 34], fill=0)
    elif family in ("swim_top", "bra"):
        draw.ellipse([xs(-40), 70, xs(-4), 112], fill=fill)
        draw.ellipse([xs(4), 70, xs(40), 112], fill=fill)
        draw.line([(xs(-22), 72), (xs(-20), 30)], fill=fill, width=3)
        draw.line([(xs(22), 72), (xs(20), 30)], fill=fill, width=3)
    elif family in ("swim_bottom", "underwear_bottom"):
        draw.polygon([(xs(-40), 70), (xs(40), 70), (xs(12), 125), (xs(-12), 125)], fill=fill)
    elif family == "socks":
        draw.polygon(
            [(xs(-12), 30), (xs(12), 30), (xs(12), 140), (xs(40), 150), (xs(40), 172), (xs(-12), 172)],
            fill=fill,
        )
    elif family == "shoes":
        draw.ellipse([xs(-50), 120, xs(50), 160], fill=fill)
        draw.polygon([(xs(-48), 140), (xs(-30), 100), (xs(0), 104), (xs(10), 130)], fill=fill)
    elif family == "bag":
        draw.rounded_rectangle([xs(-40), 80, xs(40), 160], radius=8, fill=fill)
        draw.arc([xs(-24), 45, xs(24), 110], start=180, end=360, fill=fill, width=5)
    elif family == "hat":
        draw.pieslice([xs(-36), 60, xs(36), 140], start=180, end=360, fill=fill)
        draw.ellipse([xs(-52), 92, xs(52), 110], fill=fill)
    elif family == "scarf":
        draw.polygon([(xs(-30), 20), (xs(-8), 20), (xs(30), 176), (xs(8), 176)], fill=fill)
    elif family == "jewellery":
        draw.ellipse([xs(-30), 66, xs(30), 126], outline=fill, width=7)
        draw.ellipse([xs(-8), 118, xs(8), 134], fill=fill)
    else:
        draw.rounded_rectangle([xs(-32), 50, xs(32), 150], radius=14, fill=fill)


def _contrast(rgb) -> tuple[int, int, int]:
    return (245, 245, 240) if sum(rgb) < 380 else (30, 30, 35)


def _pattern(appearance: str, rgb, r: np.random.Generator) -> np.ndarray:
    """Full-canvas RGB array of the article's surface."""
    base = np.empty((HEIGHT, WIDTH, 3), dtype=np.float32)
    base[:] = rgb
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    a = appearance.lower()
    alt = np.array(_contrast(rgb), dtype=np.float32)
    if "stripe" in a:
        period = int(r.integers(6, 16))
        mask = (yy // (period // 2)) % 2 == 1
        base[mask] = alt
    elif "check" in a or "argyle" in a:
        period = int(r.integers(10, 20))
        if "argyle" in a:
            mask = ((xx + yy) // period + (xx - yy + 400) // period) % 2 == 1
        else:
            mask = ((xx // period) + (yy // period)) % 2 == 1
        base[mask] = base[mask] * 0.55 + alt * 0.45
    elif "dot" in a:
        period = int(r.integers(9, 16))
        rad = period / 4
        mask = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < rad**2
        base[mask] = alt
    elif "melange" in a or "neps" in a or "slub" in a:
        base += r.normal(0, 22, size=(HEIGHT, WIDTH, 1)).astype(np.float32)
    elif "denim" in a or "chambray" in a:
        twill = ((xx + yy) % 4 < 2).astype(np.float32)[..., None]
        base = base * (0.85 + 0.25 * twill) + r.normal(0, 10, size=(HEIGHT, WIDTH, 1)).astype(np.float32)
    elif "print" in a or "embroidery" in a or "application" in a or "sequin" in a:
        cy, cx, rad = HEIGHT * 0.45, WIDTH / 2, r.uniform(12, 22)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < rad**2
        base[mask] = alt if "sequin" not in a else np.array([230, 220, 160], np.float32)
    elif "blocking" in a or "contrast" in a or "mixed" in a:
        base[yy > HEIGHT * r.uniform(0.4, 0.6)] = alt
    elif "metal" in a or "glitter" in a or "hologram" in a:
        base *= (0.7 + 0.6 * (yy / HEIGHT))[..., None]
        specks = r.random((HEIGHT, WIDTH)) < 0.04
        base[specks] = 255
    elif "lace" in a or "mesh" in a or "transparent" in a:
        mask = (xx % 6 == 0) | (yy % 6 == 0)
        base[~mask] = base[~mask] * 0.6 + 240 * 0.4
    elif "all over" in a or "pattern" in a or "jacquard" in a:
        for _ in range(int(r.integers(12, 24))):
            cy, cx, rad = r.uniform(0, HEIGHT), r.uniform(0, WIDTH), r.uniform(3, 7)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < rad**2
            base[mask] = alt
    else:  # solid, treatment, structure, unknown: soft light from the top left
        base *= (1.08 - 0.16 * (yy + xx) / (HEIGHT + WIDTH))[..., None]
    return np.clip(base, 0, 255)


def render_article_image(
    article_id: str, family: str, colour_group_name: str, graphical_appearance_name: str
) -> Image.Image:
    """The synthetic photo of one article; deterministic for the same attributes and id."""
    shape_rng = np.random.default_rng(_seed(article_id[:7]))  # one product, one silhouette
    pattern_rng = np.random.default_rng(_seed(article_id[:7], 1))
    rgb = COLOURS.get(colour_group_name, COLOURS["Unknown"])
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    _shape(ImageDraw.Draw(mask), family, shape_rng)
    surface = Image.fromarray(_pattern(graphical_appearance_name, rgb, pattern_rng).astype(np.uint8), "RGB")
    photo = Image.new("RGB", (WIDTH, HEIGHT), (238, 237, 235))
    photo.paste(surface, (0, 0), mask)
    return photo
