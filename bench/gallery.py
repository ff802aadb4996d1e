"""The gallery's catalog grid at catalog size: server time of a page, 300 items against 44,000.

The app runs against a real redis-server; its replica's catalog holds N products' metadata in the
Fashion Product Images shape (the grid reads only metadata, so no vectors are built). Each row is
the median server time of one page (Flask's test client, so no network) over repeats, and its
ratio to the same page on the 300-item catalog measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.app import create_app
from cli.redis_server import RedisServer
from shared.settings import Settings

GENDERS = ("Men", "Women", "Boys", "Girls", "Unisex")
PAGES = {
    "first page": "/",
    "page 900": "/?page=900",
    "gender filter, page 50": "/?gender=Men&page=50",
    "two filters": "/?gender=Women&articleType=Type7",
    "last page of a filter": "/?baseColour=Colour3&page=40",
}


def fill(catalog: object, n: int) -> None:
    for i in range(n):
        catalog._set_metadata(  # type: ignore[attr-defined]
            str(10000 + i),
            {
                "gender": GENDERS[i % 5],
                "masterCategory": f"Master{i % 7}",
                "articleType": f"Type{i % 143}",
                "baseColour": f"Colour{i % 46}",
                "productDisplayName": f"Product {i}",
            },
        )


def page_ms(client: object, path: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(path)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    return statistics.median(times)


def measure(server: RedisServer, n: int, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data:
        app = create_app(Settings(redis_url=server.url, data_dir=Path(data)))
        services = app.extensions["lookalike"]
        services.replica.stop()
        fill(services.replica.catalog, n)
        client = app.test_client()
        return {name: page_ms(client, path, repeats) for name, path in PAGES.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=44_000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp), appendonly=False) as server:
        base = measure(server, 300, args.repeats)
        large = measure(server, args.items, args.repeats)
    print(f"gallery grid page, server time (median of {args.repeats}), ms")
    print(f"{'page':<26}{'300 items':>11}{f'{args.items} items':>14}{'ratio':>8}")
    for name in PAGES:
        print(f"{name:<26}{base[name]:>11.2f}{large[name]:>14.2f}{large[name] / base[name]:>8.2f}")


if __name__ == "__main__":
    main()
