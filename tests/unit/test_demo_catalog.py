from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cli.demo_catalog import HEADER, write_demo_catalog

N = 60
TAXONOMY = {
    "Tshirts": ("Apparel", "Topwear"),
    "Shirts": ("Apparel", "Topwear"),
    "Dresses": ("Apparel", "Dress"),
    "Trousers": ("Apparel", "Bottomwear"),
    "Casual Shoes": ("Footwear", "Shoes"),
    "Sports Shoes": ("Footwear", "Shoes"),
    "Heels": ("Footwear", "Shoes"),
    "Handbags": ("Accessories", "Bags"),
    "Backpacks": ("Accessories", "Bags"),
    "Watches": ("Accessories", "Watches"),
}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("demo")
    assert write_demo_catalog(directory, N, seed=3) == N
    return directory


def lines(directory: Path) -> list[str]:
    return (directory / "styles.csv").read_text(encoding="utf-8").splitlines()


def rows(directory: Path) -> list[list[str]]:
    """The data rows as our importer must read them: the name is everything after 9 commas."""
    return [line.split(",", 9) for line in lines(directory)[1:]]


def image_path(directory: Path, row: list[str]) -> Path:
    return directory / "images" / f"{row[0]}.jpg"


def test_header_is_the_real_one(catalog):
    assert lines(catalog)[0] == (
        "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
        "productDisplayName"
    )
    assert lines(catalog)[0] == HEADER


def test_one_row_per_item_with_unique_ids_from_10000(catalog):
    ids = [int(row[0]) for row in rows(catalog)]
    assert len(ids) == N
    assert len(set(ids)) == N
    assert min(ids) == 10000


def test_fields_are_plausible(catalog):
    for row in rows(catalog):
        _, gender, master, sub, article, colour, season, year, usage, name = row
        assert TAXONOMY[article] == (master, sub)
        assert gender in {"Men", "Women", "Unisex"}
        if article in {"Dresses", "Heels", "Handbags"}:
            assert gender == "Women"
        assert season in {"Summer", "Winter", "Fall", "Spring", ""}
        assert usage in {"Casual", "Formal", "Sports", ""}
        assert 2011 <= int(year) <= 2018
        assert colour in name


def test_every_type_appears_even_in_a_small_catalog(catalog):
    assert {row[4] for row in rows(catalog)} == set(TAXONOMY)


def test_images_are_240x320_rgb_jpegs(catalog):
    present = [row for row in rows(catalog) if image_path(catalog, row).exists()]
    assert len(present) >= N - 3
    for row in present:
        with Image.open(image_path(catalog, row)) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (240, 320))


def test_some_listed_rows_have_no_image(catalog):
    listed = {row[0] for row in rows(catalog)}
    on_disk = {path.stem for path in (catalog / "images").iterdir()}
    assert on_disk < listed
    assert 1 <= len(listed - on_disk) <= 3


def test_some_rows_have_an_empty_season_or_usage(catalog):
    empty = [row for row in rows(catalog) if "" in (row[6], row[8])]
    assert 1 <= len(empty) <= 3


def test_some_names_have_unquoted_commas_that_default_pandas_cannot_parse(catalog):
    with_comma = [row for row in rows(catalog) if "," in row[9]]
    assert 1 <= len(with_comma) <= 6
    assert all(", " in row[9] and '"' not in row[9] for row in with_comma)
    raw = [line for line in lines(catalog)[1:] if line.count(",") > 9]
    assert len(raw) == len(with_comma)  # written raw, not quoted
    with pytest.raises(pd.errors.ParserError):
        pd.read_csv(catalog / "styles.csv")


def test_same_seed_same_bytes_other_seed_other_catalog(tmp_path):
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for directory, seed in ((first, 5), (second, 5), (other, 6)):
        write_demo_catalog(directory, 20, seed=seed)
    files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes()
    assert (first / "styles.csv").read_bytes() != (other / "styles.csv").read_bytes()


def test_progress_counts_items_written(tmp_path):
    seen: list[int] = []
    write_demo_catalog(tmp_path, 7, seed=1, progress=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6, 7]


def test_rewriting_removes_a_stale_image_of_a_row_without_one(tmp_path):
    write_demo_catalog(tmp_path, 30, seed=2)
    missing = [row for row in rows(tmp_path) if not image_path(tmp_path, row).exists()]
    image_path(tmp_path, missing[0]).write_bytes(b"stale")
    write_demo_catalog(tmp_path, 30, seed=2)
    assert not image_path(tmp_path, missing[0]).exists()


def silhouette(path: Path) -> np.ndarray:
    """Where the picture is not background, as a 30x40 thumbnail: the product's shape."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), np.int16)
    foreground = np.abs(pixels - pixels[2, 2]).sum(axis=-1) > 30
    mask = Image.fromarray(foreground.astype(np.uint8) * 255)
    small = mask.resize((30, 40), Image.Resampling.BOX)
    return np.asarray(small, np.float64).ravel()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def half_means(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per articleType, the mean silhouette of every other picture, and of the rest."""
    halves: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = defaultdict(lambda: ([], []))
    for row in rows(directory):
        if image_path(directory, row).exists():
            first, second = halves[row[4]]
            (first if len(first) <= len(second) else second).append(
                silhouette(image_path(directory, row))
            )
    return {t: (np.mean(a, axis=0), np.mean(b, axis=0)) for t, (a, b) in halves.items() if b}


def test_pictures_of_a_type_look_more_alike_than_pictures_of_other_types(catalog):
    # silhouettes, not grey levels: colours vary within a type and would swamp the shapes
    means = half_means(catalog)
    assert set(means) == set(TAXONOMY)
    for article, (first, second) in means.items():
        others = max(cosine(first, pair[1]) for t, pair in means.items() if t != article)
        assert cosine(first, second) > others, article
