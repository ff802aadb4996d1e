"""The evaluate report's arithmetic: precision@k per label and per group, and the chance level."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.evaluate import Evaluation, chance_precision
from cli.main import build_parser, main


def hit(score: float = 1.0, **metadata: str) -> dict:
    return {"product_id": "x", "score": score, "metadata": metadata}


def product(product_id: str, **metadata: str) -> dict:
    return {"product_id": product_id, "metadata": metadata}


def test_precision_is_the_share_of_neighbours_with_the_same_label():
    queries = [
        (product("a", articleType="Shirts", baseColour="Red"), [hit(articleType="Shirts"), hit()]),
        (product("b", articleType="Shoes", baseColour=""), [hit(articleType="Shoes")] * 2),
        (product("c", articleType="Shirts"), []),  # no neighbours: not counted
    ]
    report = Evaluation.of(2, "articleType", queries)
    overall = report.overall()
    assert report.items == 2
    assert overall.loc["articleType", "items"] == 2
    assert overall.loc["articleType", "precision"] == pytest.approx(0.75)
    assert overall.loc["baseColour", "precision"] == pytest.approx(0.0)
    assert "subCategory" not in overall.index  # no query carries it
    groups = report.groups()
    assert groups.loc["Shirts", "precision"] == pytest.approx(0.5)
    assert groups.loc["Shoes", "precision"] == pytest.approx(1.0)


def test_table_lists_each_label_and_group():
    queries = [(product("a", articleType="Bags"), [hit(articleType="Bags")])]
    report = Evaluation.of(1, "articleType", queries)
    lines = report.table().splitlines()
    assert lines[0] == "precision@1 over 1 indexed items"
    assert lines[3].split() == ["articleType", "1", "1.000", "0.000"]
    assert lines[-1].split() == ["Bags", "1", "1.000"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], 0.0), (["a"], 0.0), (["a", "a"], 1.0), (["a", "b"], 0.0), (["a", "a", "b", ""], 1 / 3)],
)
def test_chance_precision_is_that_of_random_neighbours(values, expected):
    assert chance_precision(values) == pytest.approx(expected)


def test_worst_queries_are_the_least_precise_then_the_most_confidently_wrong():
    queries = [
        (product("good", articleType="Bags"), [hit(0.9, articleType="Bags")]),
        (product("wrong", articleType="Bags"), [hit(0.5, articleType="Shoes")]),
        (product("sure-wrong", articleType="Bags"), [hit(0.99, articleType="Shoes")]),
        (product("unlabelled"), [hit(0.1)]),
    ]
    report = Evaluation.of(1, "articleType", queries)
    assert report.worst(2) == ["sure-wrong", "wrong"]
    assert report.worst(10) == ["sure-wrong", "wrong", "good"]


def test_queries_keep_their_record_and_neighbours():
    shirt = product("a", articleType="Shirts", productDisplayName="Red shirt")
    found = [hit(0.7, articleType="Shirts")]
    report = Evaluation.of(1, "articleType", [(shirt, found), (product("b"), [])])
    assert report.queries == {"a": shirt}
    assert report.hits == {"a": found}


def test_evaluate_command_samples_a_thousand_queries_by_default():
    args = build_parser().parse_args(["evaluate"])
    assert (args.sample, args.seed, args.sheet, args.html) == (1000, 0, 8, None)
    args = build_parser().parse_args(["evaluate", "--html", "r.html", "--sample", "0"])
    assert (args.sample, args.html) == (0, Path("r.html"))


@pytest.mark.parametrize("option", ["--sample", "--sheet"])
def test_evaluate_command_refuses_negative_counts(option, capsys):
    assert main(["evaluate", option, "-1", "--api-url", "http://127.0.0.1:9"]) == 2
    assert "0 or more" in capsys.readouterr().err
