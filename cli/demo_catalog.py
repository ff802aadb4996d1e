"""A synthetic catalog in the Fashion Product Images layout, drawn with PIL, for demos and tests."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

WIDTH, HEIGHT = 240, 320
SUPERSAMPLE = 2  # shapes are drawn at twice the size and shrunk, for smooth edges
FIRST_ID = 10000
HEADER = (
    "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName"
)
# jitter of each product: scale, shift (fractions of the canvas) and rotation (degrees)
SCALE, SHIFT, TURN = (0.9, 1.02), (0.03, 0.02), 4.0
COMMA_SHARE, EMPTY_FIELD_SHARE, NO_IMAGE_SHARE = 0.05, 0.02, 0.01

RGB = tuple[int, int, int]
RGBA = tuple[int, int, int, int]
Point = tuple[float, float]

COLOURS: dict[str, RGB] = {
    "Black": (32, 32, 34),
    "White": (240, 240, 236),
    "Blue": (40, 95, 200),
    "Navy Blue": (28, 38, 84),
    "Red": (200, 32, 42),
    "Green": (40, 140, 64),
    "Yellow": (240, 204, 48),
    "Pink": (238, 150, 182),
    "Grey": (130, 130, 134),
    "Brown": (122, 78, 42),
    "Purple": (112, 52, 142),
    "Orange": (240, 122, 32),
}
SEASONS = ("Summer", "Winter", "Fall", "Spring")
PATTERN_WORDS = {"solid": "Solid", "stripes": "Striped", "checks": "Checked", "dots": "Polka Dot"}
METALS: tuple[RGBA, ...] = ((196, 196, 202, 255), (206, 172, 90, 255))
WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)
GRID_Y, GRID_X = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
# one grain texture, cropped at a random offset per item: drawing fresh noise is the slow part
GRAIN = np.random.default_rng(0).normal(0, 2.5, (HEIGHT + 64, WIDTH + 64, 3)).astype(np.float32)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _luma(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _opaque(c: RGB, alpha: int = 255) -> RGBA:
    return (c[0], c[1], c[2], alpha)


def _ink(c: RGB) -> RGB:
    """Seams and outlines: lighter than dark colours, darker than the rest."""
    return _mix(c, WHITE, 0.35) if _luma(c) < 70 else _mix(c, BLACK, 0.42)


def _contrast(c: RGB) -> RGB:
    """The second tone of a pattern."""
    return _mix(c, WHITE, 0.7) if _luma(c) < 120 else _mix(c, BLACK, 0.5)


def symmetric(left: Sequence[Point]) -> list[Point]:
    """A closed outline from its left half (top centre, down the left side, to bottom centre)."""
    return [*left, *((1 - x, y) for x, y in reversed(left))]


def mirrored(points: Sequence[Point]) -> list[Point]:
    return [(1 - x, y) for x, y in points]


@dataclass(frozen=True)
class Pen:
    """Maps fractions of the canvas (x across, y down) to supersampled pixels, jittered, turned."""

    scale: float
    dx: float
    dy: float
    angle: float  # degrees; points are turned rather than the picture, which is much faster

    @property
    def centre(self) -> Point:
        return self._raw(0.5, 0.5)

    def _raw(self, x: float, y: float) -> Point:
        return (
            (0.5 + (x - 0.5) * self.scale + self.dx) * WIDTH * SUPERSAMPLE,
            (0.5 + (y - 0.5) * self.scale + self.dy) * HEIGHT * SUPERSAMPLE,
        )

    def _turn(self, u: float, v: float) -> Point:
        (cx, cy), t = self.centre, math.radians(self.angle)
        du, dv = u - cx, v - cy
        return cx + math.cos(t) * du + math.sin(t) * dv, cy - math.sin(t) * du + math.cos(t) * dv

    def xy(self, x: float, y: float) -> Point:
        return self._turn(*self._raw(x, y))

    def pts(self, points: Sequence[Point]) -> list[Point]:
        return [self.xy(x, y) for x, y in points]

    def size(self, r: float) -> int:
        """A length of r (a fraction of the width) in pixels."""
        return max(1, round(r * self.scale * WIDTH * SUPERSAMPLE))

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> list[Point]:
        return self.pts([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])

    def oval(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        start: float = 0,
        end: float = 360,
        inset: float = 0,
    ) -> list[Point]:
        """An arc (degrees, clockwise from 3 o'clock) of the ellipse in a box, inset pixels in."""
        (a, b), (c, d) = self._raw(x0, y0), self._raw(x1, y1)
        cx, cy, rx, ry = (a + c) / 2, (b + d) / 2, (c - a) / 2 - inset, (d - b) / 2 - inset
        steps = max(2, round(abs(end - start) / 8))
        angles = (math.radians(start + (end - start) * i / steps) for i in range(steps + 1))
        return [self._turn(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in angles]

    def circle(self, x: float, y: float, r: float) -> list[Point]:
        """A circle of radius r (a fraction of the width) centred on (x, y)."""
        ry = r * WIDTH / HEIGHT
        return self.oval(x - r, y - ry, x + r, y + ry)

    def rounded(self, x0: float, y0: float, x1: float, y1: float, r: float) -> list[Point]:
        """A rectangle with corners of radius r (a fraction of the width)."""
        rx, ry = 2 * r, 2 * r * WIDTH / HEIGHT
        return [
            *self.oval(x0, y0, x0 + rx, y0 + ry, 180, 270),
            *self.oval(x1 - rx, y0, x1, y0 + ry, 270, 360),
            *self.oval(x1 - rx, y1 - ry, x1, y1, 0, 90),
            *self.oval(x0, y1 - ry, x0 + rx, y1, 90, 180),
        ]

    def handle(self, x0: float, y0: float, x1: float, y1: float, width: float) -> list[Point]:
        """The upper half of an elliptic ring in a box, width thick (a fraction of the width)."""
        outer = self.oval(x0, y0, x1, y1, 180, 360)
        return [*outer, *reversed(self.oval(x0, y0, x1, y1, 180, 360, inset=self.size(width)))]


@dataclass(frozen=True)
class Sketch:
    """A drawing's surfaces: the body mask (later filled with colour and pattern) and details."""

    body: ImageDraw.ImageDraw
    detail: ImageDraw.ImageDraw
    pen: Pen
    colour: RGB
    rng: random.Random

    @property
    def ink(self) -> RGBA:
        return _opaque(_ink(self.colour))

    def shape(self, points: Sequence[Point]) -> None:
        self.blob(self.pen.pts(points))

    def blob(self, pixels: Sequence[Point]) -> None:
        self.body.polygon(pixels, fill=255)

    def patch(
        self,
        pixels: Sequence[Point],
        fill: RGBA | None,
        outline: RGBA | None = None,
        width: float = 0.004,
    ) -> None:
        self.detail.polygon(pixels, fill=fill, outline=outline, width=self.pen.size(width))

    def line(self, points: Sequence[Point], fill: RGBA, width: float) -> None:
        self.stroke(self.pen.pts(points), fill, width)

    def stroke(self, pixels: Sequence[Point], fill: RGBA, width: float) -> None:
        self.detail.line(pixels, fill=fill, width=self.pen.size(width), joint="curve")

    def dot(self, x: float, y: float, r: float, fill: RGBA, outline: RGBA | None = None) -> None:
        self.patch(self.pen.circle(x, y, r), fill, outline)


# Outlines in fractions of the canvas; the symmetric ones are built from their left halves.
# fmt: off
TSHIRT = symmetric([(0.50, 0.255), (0.44, 0.245), (0.39, 0.20), (0.28, 0.23), (0.10, 0.36),
                    (0.18, 0.46), (0.30, 0.41), (0.30, 0.80), (0.50, 0.80)])
TSHIRT_NECK = [(0.39, 0.20), (0.44, 0.245), (0.50, 0.255), (0.56, 0.245), (0.61, 0.20)]
SHIRT = symmetric([(0.50, 0.20), (0.40, 0.18), (0.27, 0.215), (0.09, 0.70), (0.20, 0.73),
                   (0.30, 0.42), (0.30, 0.82), (0.40, 0.85), (0.50, 0.83)])
SHIRT_COLLAR = [(0.395, 0.17), (0.50, 0.26), (0.445, 0.295), (0.375, 0.215)]
DRESS = symmetric([(0.50, 0.25), (0.44, 0.245), (0.42, 0.13), (0.38, 0.13), (0.37, 0.25),
                   (0.36, 0.31), (0.39, 0.44), (0.18, 0.86), (0.34, 0.895), (0.50, 0.905)])
TROUSERS = symmetric([(0.50, 0.10), (0.31, 0.10), (0.29, 0.40), (0.30, 0.92), (0.47, 0.92),
                      (0.50, 0.38)])
CASUAL_SHOE = [(0.10, 0.55), (0.13, 0.48), (0.30, 0.445), (0.50, 0.39), (0.58, 0.37),
               (0.70, 0.40), (0.86, 0.37), (0.90, 0.45), (0.90, 0.58), (0.10, 0.58)]
CASUAL_OPENING = [(0.58, 0.37), (0.70, 0.40), (0.85, 0.375), (0.70, 0.415)]
TOE_CAP = [(0.13, 0.50), (0.20, 0.47), (0.26, 0.47), (0.25, 0.55)]
SPORTS_SHOE = [(0.10, 0.54), (0.14, 0.46), (0.32, 0.41), (0.46, 0.34), (0.50, 0.26),
               (0.57, 0.25), (0.60, 0.30), (0.70, 0.30), (0.83, 0.26), (0.90, 0.33),
               (0.91, 0.56), (0.10, 0.56)]
SPORTS_OPENING = [(0.60, 0.30), (0.70, 0.30), (0.83, 0.265), (0.70, 0.32)]
SPORTS_STRIPE = [(0.28, 0.53), (0.52, 0.42), (0.82, 0.36), (0.62, 0.46), (0.42, 0.53)]
HEEL = [(0.125, 0.641), (0.158, 0.60), (0.25, 0.575), (0.396, 0.556), (0.542, 0.516),
        (0.688, 0.438), (0.771, 0.381), (0.817, 0.369), (0.833, 0.39), (0.829, 0.469),
        (0.804, 0.663), (0.781, 0.663), (0.775, 0.49), (0.688, 0.516), (0.583, 0.563),
        (0.458, 0.619), (0.333, 0.647), (0.208, 0.653), (0.133, 0.65)]
HEEL_LINING = [(0.396, 0.556), (0.542, 0.516), (0.688, 0.438), (0.771, 0.381), (0.817, 0.369),
               (0.822, 0.39), (0.775, 0.40), (0.695, 0.455), (0.55, 0.532), (0.42, 0.565)]
HEEL_SOLE = [(0.133, 0.652), (0.208, 0.655), (0.333, 0.649), (0.458, 0.621), (0.583, 0.564),
             (0.688, 0.518), (0.775, 0.492)]
HANDBAG = [(0.22, 0.41), (0.78, 0.41), (0.85, 0.74), (0.83, 0.78), (0.17, 0.78), (0.15, 0.74)]
WATCH_STRAP = [(0.41, 0.10), (0.59, 0.10), (0.61, 0.50), (0.59, 0.90), (0.41, 0.90),
               (0.39, 0.50)]
# fmt: on
SOLES: tuple[RGB, ...] = ((236, 232, 222), (96, 62, 36), (40, 40, 40))
LINING: RGBA = (50, 44, 40, 255)


def draw_tshirt(s: Sketch) -> None:
    s.shape(TSHIRT)
    s.line(TSHIRT_NECK, s.ink, 0.03)
    for hem in ([(0.121, 0.351), (0.201, 0.451)], [(0.31, 0.77), (0.50, 0.77)]):
        s.line(hem, s.ink, 0.008)
        s.line(mirrored(hem), s.ink, 0.008)


def draw_shirt(s: Sketch) -> None:
    s.shape(SHIRT)
    cuff = [(0.097, 0.665), (0.208, 0.695)]
    for flip in (list, mirrored):
        s.patch(s.pen.pts(flip(SHIRT_COLLAR)), _opaque(s.colour), s.ink, 0.008)
        s.line(flip(cuff), s.ink, 0.008)
    s.line([(0.50, 0.26), (0.50, 0.835)], s.ink, 0.008)
    for y in (0.33, 0.43, 0.53, 0.63, 0.73):
        s.dot(0.515, y, 0.009, _opaque(_mix(s.colour, WHITE, 0.6)), s.ink)
    s.patch(s.pen.rect(0.34, 0.34, 0.44, 0.44), None, s.ink, 0.005)


def draw_dress(s: Sketch) -> None:
    s.shape(DRESS)
    s.line([(0.39, 0.44), (0.61, 0.44)], s.ink, 0.025)
    folds = _opaque(_ink(s.colour), 110)
    for fold in ([(0.45, 0.46), (0.37, 0.86)], [(0.48, 0.46), (0.46, 0.88)]):
        s.line(fold, folds, 0.01)
        s.line(mirrored(fold), folds, 0.01)


def draw_trousers(s: Sketch) -> None:
    s.shape(TROUSERS)
    s.line([(0.305, 0.15), (0.695, 0.15)], s.ink, 0.008)
    s.line([(0.50, 0.15), (0.50, 0.30), (0.47, 0.33)], s.ink, 0.008)
    crease = _opaque(_ink(s.colour), 110)
    for flip in (list, mirrored):
        s.line(flip([(0.33, 0.15), (0.38, 0.24)]), s.ink, 0.008)
        s.line(flip([(0.385, 0.45), (0.385, 0.90)]), crease, 0.008)
    for x in (0.36, 0.45, 0.55, 0.64):
        s.line([(x, 0.10), (x, 0.16)], s.ink, 0.012)


def _laces(s: Sketch, start: Point, end: Point, count: int) -> None:
    lace = _opaque(WHITE if _luma(s.colour) < 160 else _ink(s.colour))
    for i in range(count):
        t = i / max(1, count - 1)
        x, y = start[0] + (end[0] - start[0]) * t, start[1] + (end[1] - start[1]) * t
        s.line([(x - 0.025, y - 0.008), (x + 0.025, y + 0.012)], lace, 0.012)


def draw_casual_shoes(s: Sketch) -> None:
    s.shape(CASUAL_SHOE)
    sole = s.rng.choice(SOLES)
    s.patch(s.pen.rounded(0.09, 0.565, 0.91, 0.615, 0.02), _opaque(sole), _opaque(_ink(sole)))
    s.patch(s.pen.pts(CASUAL_OPENING), LINING)
    s.line([(0.12, 0.545), (0.89, 0.545)], s.ink, 0.006)
    s.line(TOE_CAP, s.ink, 0.006)
    _laces(s, (0.36, 0.435), (0.54, 0.39), 4)


def draw_sports_shoes(s: Sketch) -> None:
    s.shape(SPORTS_SHOE)
    accent = WHITE if _luma(s.colour) < 160 else (30, 30, 30)
    s.patch(s.pen.pts(SPORTS_STRIPE), _opaque(accent))
    sole = s.pen.rounded(0.08, 0.54, 0.92, 0.65, 0.035)
    s.patch(sole, (245, 245, 245, 255), (150, 150, 150, 255))
    s.line([(0.10, 0.62), (0.91, 0.62)], s.ink, 0.012)
    s.patch(s.pen.pts(SPORTS_OPENING), LINING)
    _laces(s, (0.34, 0.425), (0.50, 0.30), 5)


def draw_heels(s: Sketch) -> None:
    s.shape(HEEL)
    s.patch(s.pen.pts(HEEL_LINING), _opaque(_mix(s.colour, (60, 40, 30), 0.6)))
    s.line(HEEL_SOLE, (30, 30, 30, 255), 0.01)
    s.patch(s.pen.rect(0.779, 0.655, 0.806, 0.675), (25, 25, 25, 255))


def draw_handbag(s: Sketch) -> None:
    s.blob(s.pen.handle(0.33, 0.20, 0.67, 0.62, 0.035))
    s.shape(HANDBAG)
    metal = s.rng.choice(METALS)
    s.line([(0.20, 0.48), (0.80, 0.48)], s.ink, 0.008)
    s.patch(s.pen.rect(0.46, 0.46, 0.54, 0.53), metal, s.ink)
    for x in (0.35, 0.65):
        s.dot(x, 0.415, 0.018, metal, s.ink)


def draw_backpack(s: Sketch) -> None:
    s.blob(s.pen.handle(0.43, 0.13, 0.57, 0.25, 0.022))
    for flip in (list, mirrored):
        s.shape(flip([(0.30, 0.52), (0.235, 0.54), (0.235, 0.77), (0.30, 0.79)]))
    dome = s.pen.oval(0.27, 0.19, 0.73, 0.45, 180, 360)
    corners = s.pen.oval(0.61, 0.72, 0.73, 0.81, 0, 90) + s.pen.oval(
        0.27, 0.72, 0.39, 0.81, 90, 180
    )
    s.blob(dome + corners)
    s.stroke(s.pen.oval(0.31, 0.24, 0.69, 0.62, 195, 345), s.ink, 0.01)
    pocket = _opaque(_mix(s.colour, BLACK, 0.12))
    s.patch(s.pen.rounded(0.33, 0.56, 0.67, 0.78, 0.05), pocket, s.ink, 0.008)
    s.line([(0.35, 0.61), (0.65, 0.61)], s.ink, 0.008)
    s.dot(0.59, 0.62, 0.012, (200, 200, 205, 255))


def draw_watch(s: Sketch) -> None:
    s.shape(WATCH_STRAP)
    metal = s.rng.choice(METALS)
    dial = (25, 25, 28) if _luma(s.colour) > 200 else (246, 246, 242)
    marks = _opaque((200, 200, 200) if dial[0] < 100 else (40, 40, 40))
    if s.rng.random() < 0.6:
        face = s.pen.circle(0.5, 0.5, 0.2)
    else:
        face = s.pen.rounded(0.31, 0.36, 0.69, 0.64, 0.05)
    s.patch(face, _opaque(dial), metal, 0.03)
    s.patch(s.pen.rect(0.69, 0.485, 0.725, 0.515), metal)
    for dx, dy in ((0, -0.1), (0.077, 0), (0, 0.1), (-0.077, 0)):
        s.dot(0.5 + dx, 0.5 + dy, 0.01, marks)
    s.line([(0.5, 0.5), (0.5, 0.43)], marks, 0.014)
    s.line([(0.5, 0.5), (0.56, 0.53)], marks, 0.01)
    s.line([(0.5, 0.52), (0.5, 0.41)], (200, 30, 30, 255), 0.004)
    s.patch(s.pen.rect(0.40, 0.12, 0.60, 0.15), None, metal, 0.012)
    for y in (0.74, 0.78, 0.82):
        s.dot(0.5, y, 0.008, _opaque(_ink(s.colour)))


@dataclass(frozen=True)
class Article:
    """An articleType: where it sits in the taxonomy, who wears it, and how to draw it."""

    name: str
    master: str
    sub: str
    noun: str
    weight: int
    genders: dict[str, float]
    usages: dict[str, float]
    brands: tuple[str, ...]
    patterns: dict[str, float]
    draw: Callable[[Sketch], None]


CLOTHES = ("Roadster", "United Colors of Benetton", "Arrow", "Wrangler", "Levis", "Mango")
SHOES = ("Puma", "Nike", "Adidas", "Woodland", "Red Tape", "Catwalk")
BAGS = ("Baggit", "Lavie", "Wildcraft", "Fastrack", "Kiara")
WATCHES = ("Titan", "Fastrack", "Casio", "Timex", "Q&Q")
MOSTLY_MEN, WOMEN = {"Men": 0.8, "Women": 0.2}, {"Women": 1.0}
ANYONE = {"Men": 0.6, "Women": 0.3, "Unisex": 0.1}
CASUAL = {"Casual": 1.0}
WEAR = {"solid": 0.45, "stripes": 0.2, "checks": 0.2, "dots": 0.15}
GOODS = {"solid": 0.7, "stripes": 0.1, "checks": 0.1, "dots": 0.1}
PLAIN = {"solid": 0.85, "stripes": 0.05, "checks": 0.05, "dots": 0.05}
# fmt: off
ARTICLES = (
    Article("Tshirts", "Apparel", "Topwear", "Tshirt", 3, ANYONE,
            {"Casual": 0.8, "Sports": 0.2}, (*CLOTHES, "Nike", "Puma"), WEAR, draw_tshirt),
    Article("Shirts", "Apparel", "Topwear", "Shirt", 2, MOSTLY_MEN,
            {"Casual": 0.6, "Formal": 0.4}, CLOTHES, WEAR, draw_shirt),
    Article("Dresses", "Apparel", "Dress", "Dress", 1, WOMEN,
            {"Casual": 0.8, "Formal": 0.2}, CLOTHES, WEAR, draw_dress),
    Article("Trousers", "Apparel", "Bottomwear", "Trousers", 1, {"Men": 0.6, "Women": 0.4},
            {"Casual": 0.5, "Formal": 0.5}, CLOTHES, WEAR, draw_trousers),
    Article("Casual Shoes", "Footwear", "Shoes", "Casual Shoes", 2, ANYONE,
            CASUAL, SHOES, GOODS, draw_casual_shoes),
    Article("Sports Shoes", "Footwear", "Shoes", "Sports Shoes", 2, ANYONE,
            {"Sports": 1.0}, SHOES, GOODS, draw_sports_shoes),
    Article("Heels", "Footwear", "Shoes", "Heels", 1, WOMEN,
            {"Casual": 0.6, "Formal": 0.4}, SHOES, GOODS, draw_heels),
    Article("Handbags", "Accessories", "Bags", "Handbag", 1, WOMEN,
            CASUAL, BAGS, GOODS, draw_handbag),
    Article("Backpacks", "Accessories", "Bags", "Backpack", 1, {"Unisex": 0.6, "Men": 0.3,
            "Women": 0.1}, {"Casual": 0.8, "Sports": 0.2}, BAGS, GOODS, draw_backpack),
    Article("Watches", "Accessories", "Watches", "Watch", 2, {"Men": 0.55, "Women": 0.4,
            "Unisex": 0.05}, {"Casual": 0.6, "Formal": 0.3, "Sports": 0.1}, WATCHES, PLAIN,
            draw_watch),
)
# fmt: on


@dataclass(frozen=True)
class Item:
    """One catalog row and what its picture shows."""

    id: int
    article: Article
    gender: str
    colour: str
    second_colour: str | None
    pattern: str
    season: str
    year: int
    usage: str
    name: str
    has_image: bool

    def csv_line(self) -> str:
        """The row as the real file has it: no quoting, even when the name holds a comma."""
        a = self.article
        kind = (self.gender, a.master, a.sub, a.name, self.colour)
        return ",".join(map(str, (self.id, *kind, self.season, self.year, self.usage, self.name)))


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _display_name(
    rng: random.Random, a: Article, gender: str, colour: str, second: str | None, pattern: str
) -> str:
    brand = rng.choice(a.brands)
    if second is not None:
        who = gender if gender == "Unisex" else f"{gender}'s"
        return f"{brand} {who} {colour}, {second} {a.noun}"
    word = PATTERN_WORDS[pattern] if pattern != "solid" or rng.random() < 0.3 else ""
    return " ".join(part for part in (brand, gender, colour, word, a.noun) if part)


def _make_item(rng: random.Random, index: int, a: Article, flags: tuple[bool, bool, bool]) -> Item:
    comma, empty_field, no_image = flags
    gender, colour = _pick(rng, a.genders), rng.choice(list(COLOURS))
    second = rng.choice([c for c in COLOURS if c != colour]) if comma else None
    pattern = _pick(rng, a.patterns)
    season, usage = rng.choice(SEASONS), _pick(rng, a.usages)
    if empty_field and rng.random() < 0.5:
        season = ""
    elif empty_field:
        usage = ""
    name = _display_name(rng, a, gender, colour, second, pattern)
    return Item(
        FIRST_ID + index,
        a,
        gender,
        colour,
        second,
        pattern,
        season,
        rng.randint(2011, 2018),
        usage,
        name,
        not no_image,
    )


def _pattern_mix(pattern: str, pen: Pen, rng: random.Random) -> np.ndarray:
    """Where the pattern's second tone goes, 0..1 per pixel, turned with the product."""
    (cx, cy), t = (c / SUPERSAMPLE for c in pen.centre), math.radians(pen.angle)
    du, dv = GRID_X - cx, GRID_Y - cy
    period = rng.randint(14, 24)
    x = cx + math.cos(t) * du - math.sin(t) * dv + rng.randint(0, period)
    y = cy + math.sin(t) * du + math.cos(t) * dv + rng.randint(0, period)
    if pattern == "stripes":
        return ((y % period) < period * 0.4).astype(np.float32)
    if pattern == "checks":
        return 0.5 * ((y % period) < period / 2) + 0.5 * ((x % period) < period / 2)
    if pattern == "dots":
        shift = (y // period) % 2 * period / 2
        dx, dy = (x + shift) % period - period / 2, y % period - period / 2
        return (dx * dx + dy * dy < (period * 0.2) ** 2).astype(np.float32)
    return np.zeros((HEIGHT, WIDTH), np.float32)


def _fill(item: Item, colour: RGB, pen: Pen, rng: random.Random) -> Image.Image:
    """The product's material: colour, pattern, light from the left and a little grain."""
    second = COLOURS[item.second_colour] if item.second_colour else _contrast(colour)
    pattern = "stripes" if item.second_colour and item.pattern == "solid" else item.pattern
    mix = _pattern_mix(pattern, pen, rng)[..., None]
    rgb = np.asarray(colour, np.float32) * (1 - mix) + np.asarray(second, np.float32) * mix
    rgb *= (1.06 - 0.14 * GRID_X / WIDTH)[..., None]
    top, left = rng.randint(0, 64), rng.randint(0, 64)
    rgb += GRAIN[top : top + HEIGHT, left : left + WIDTH]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def _shrink(image: Image.Image) -> Image.Image:
    return image.resize((WIDTH, HEIGHT), Image.Resampling.BOX)


def render(item: Item, rng: random.Random) -> Image.Image:
    """The item's picture: its product, jittered, on a light background with a soft shadow."""
    red, green, blue = (v + rng.randint(-6, 6) for v in COLOURS[item.colour])
    colour = (red, green, blue)
    (low, high), (shift_x, shift_y), turn = SCALE, SHIFT, TURN
    pen = Pen(
        rng.uniform(low, high),
        rng.uniform(-shift_x, shift_x),
        rng.uniform(-shift_y, shift_y),
        rng.uniform(-turn, turn),
    )
    big = (WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE)
    mask, overlay = Image.new("L", big, 0), Image.new("RGBA", big, (0, 0, 0, 0))
    item.article.draw(Sketch(ImageDraw.Draw(mask), ImageDraw.Draw(overlay), pen, colour, rng))
    mask, overlay = _shrink(mask), _shrink(overlay)
    layer = _fill(item, colour, pen, rng).convert("RGBA")
    layer.putalpha(mask)
    outline = ImageChops.subtract(mask, mask.filter(ImageFilter.MinFilter(3)))
    layer.paste(_opaque(_ink(colour)), mask=outline)
    layer.alpha_composite(overlay)
    return _on_background(layer, rng)


def _on_background(layer: Image.Image, rng: random.Random) -> Image.Image:
    """The layer on a white or off-white background, with a soft shadow to the lower right."""
    level = rng.randint(242, 255)
    background = Image.new(
        "RGBA", layer.size, (level, level - rng.randint(0, 3), level - rng.randint(0, 6), 255)
    )
    shadow = Image.new("L", layer.size, 0)
    shadow.paste(layer.getchannel("A").filter(ImageFilter.GaussianBlur(5)), (3, 5))
    background.paste((0, 0, 0, 255), mask=shadow.point(lambda v: v * 0.22))
    background.alpha_composite(layer)
    return background.convert("RGB")


def _chosen(rng: random.Random, n: int, share: float) -> set[int]:
    """About share of range(n), at least one row once there are any."""
    return set(rng.sample(range(n), min(n, max(1, round(n * share))))) if n else set()


def _articles(rng: random.Random) -> Iterator[Article]:
    """Shuffled decks of articleTypes by weight, so even a small catalog has every type."""
    while True:
        deck = [a for a in ARTICLES for _ in range(a.weight)]
        rng.shuffle(deck)
        yield from deck


def write_demo_catalog(
    directory: Path,
    n: int = 300,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write n synthetic items as directory/styles.csv + directory/images/<id>.jpg; returns n.

    Like the real Fashion Product Images files, and deterministically given seed: about 5% of
    the names hold an unquoted comma ("Puma Men's Black, Grey Sports Shoes"), about 2% of the
    rows have an empty season or usage, and about 1% of the rows have no image file (at least
    one row of each kind whenever n > 0). progress, if given, gets the count written so far
    after each item.
    """
    rng = random.Random(seed)
    commas = _chosen(rng, n, COMMA_SHARE)
    empties = _chosen(rng, n, EMPTY_FIELD_SHARE)
    no_images = _chosen(rng, n, NO_IMAGE_SHARE)
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    articles = _articles(rng)
    with (directory / "styles.csv").open("w", encoding="utf-8", newline="") as styles:
        styles.write(HEADER + "\n")
        for i in range(n):
            flags = (i in commas, i in empties, i in no_images)
            item = _make_item(rng, i, next(articles), flags)
            _write_image(item, images / f"{item.id}.jpg", random.Random(rng.getrandbits(64)))
            styles.write(item.csv_line() + "\n")
            if progress is not None:
                progress(i + 1)
    return n


def _write_image(item: Item, path: Path, rng: random.Random) -> None:
    if item.has_image:
        render(item, rng).save(path, "JPEG", quality=90)
    else:
        path.unlink(missing_ok=True)  # a previous catalog in the same place may have left one
