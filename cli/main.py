"""The `lookalike` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cli import generations
from cli.client import ApiClient
from shared.errors import LookalikeError
from shared.settings import get_settings


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed image files into an (n, 2048) float32 .npy array, in input order."""
    import numpy as np
    from tqdm import tqdm

    from workers.embedder import get_embedder

    missing = [path for path in args.images if not path.is_file()]
    if missing:
        print("error: no such file: " + ", ".join(map(str, missing)), file=sys.stderr)
        return 2
    embedder = get_embedder(get_settings())
    vectors = np.zeros((len(args.images), embedder.dim), np.float32)
    failures: list[str] = []
    chunks = [
        args.images[start : start + embedder.batch_size]
        for start in range(0, len(args.images), embedder.batch_size)
    ]
    blobs = ([path.read_bytes() for path in chunk] for chunk in chunks)
    with tqdm(total=len(args.images), unit="img", disable=args.quiet) as progress:
        row = 0
        for chunk, results in zip(chunks, embedder.embed_stream(blobs), strict=True):
            for path, result in zip(chunk, results, strict=True):
                if isinstance(result, Exception):
                    failures.append(f"{path}: {result}")
                else:
                    vectors[row] = result
                row += 1
            progress.update(len(chunk))
    if failures:
        print("error: nothing written, these images failed:", file=sys.stderr)
        print("\n".join("  " + failure for failure in failures), file=sys.stderr)
        return 1
    np.save(args.out, vectors)
    print(f"wrote {args.out}: {vectors.shape[0]}x{vectors.shape[1]} float32 ({embedder.model_id})")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Run the whole stack: Redis (unless LOOKALIKE_REDIS_URL), embed worker, writer, API."""
    from cli.stack import run_stack

    return run_stack(
        get_settings(), args.host, args.port, args.demo, args.flower, insecure=args.insecure
    )


def cmd_api(args: argparse.Namespace) -> int:
    """Become one API process (gunicorn) against LOOKALIKE_REDIS_URL."""
    from cli.stack import serve_api

    serve_api(get_settings(), args.host, args.port, args.insecure)


def api_client(args: argparse.Namespace) -> ApiClient:
    settings = get_settings()
    return ApiClient(args.api_url or settings.api_url, settings.client_api_key)


def cmd_import(args: argparse.Namespace) -> int:
    """Upload a catalog in the Fashion Product Images layout; resumable."""
    from cli.importer import CatalogImporter

    if not (args.dataset / "styles.csv").is_file():
        print(f"error: {args.dataset / 'styles.csv'} not found", file=sys.stderr)
        return 2
    importer = CatalogImporter(api_client(args), args.concurrency, args.force)
    report = importer.run(args.dataset, progress=not args.quiet)
    print(report.summary())
    return 1 if report.failed else 0


def print_results(results: list[dict[str, Any]]) -> None:
    """A table: id, score, name, category."""
    print(f"{'id':<14}{'score':>8}  {'name':<44}category")
    for hit in results:
        meta = hit.get("metadata", {})
        name = str(meta.get("productDisplayName", ""))[:42]
        category = meta.get("articleType") or meta.get("subCategory") or ""
        print(f"{hit['product_id']:<14}{hit['score']:>8.4f}  {name:<44}{category}")


def cmd_similar(args: argparse.Namespace) -> int:
    filters = {f"filter.{key}": value for key, value in (i.split("=", 1) for i in args.filter)}
    body = api_client(args).get(f"/api/v1/products/{args.product_id}/similar", k=args.k, **filters)
    print_results(body["results"])
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    if not args.image.is_file():
        print(f"error: no such file: {args.image}", file=sys.stderr)
        return 2
    print_results(api_client(args).search(args.image, args.k)["results"])
    return 0


def cmd_demo_catalog(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cli.demo_catalog import write_demo_catalog

    with tqdm(total=args.n, unit="img", disable=args.quiet) as bar:
        written = write_demo_catalog(args.directory, args.n, args.seed, progress=bar.update)
    print(f"wrote {written} items to {args.directory} (styles.csv, images/)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cli.evaluate import evaluate

    if args.sample < 0 or args.sheet < 0:
        print("error: --sample and --sheet take 0 or more", file=sys.stderr)
        return 2
    if args.hygiene:
        return evaluate_hygiene(args)
    if args.compare:
        return evaluate_compare(args)
    client = api_client(args)
    progress = not args.quiet
    report = evaluate(client, args.k, args.by, args.concurrency, progress, args.sample, args.seed)
    print(report.table())
    if args.html:
        from cli.report import write_html

        write_html(report, client, args.html, args.sheet, args.seed)
        print(f"wrote {args.html}")
    return 0


def evaluate_compare(args: argparse.Namespace) -> int:
    """`evaluate --compare A B`: two generations' precision over the same queries."""
    from cli.compare import compare
    from cli.generations import redis_of
    from shared.keys import Generation

    settings = get_settings()
    gens = (Generation.named(args.compare[0]), Generation.named(args.compare[1]))
    result = compare(settings, redis_of(settings), gens, args.k, args.by, args.sample, args.seed)
    print(result.table())
    return 0


def evaluate_hygiene(args: argparse.Namespace) -> int:
    """`evaluate --hygiene`: near duplicates, likely mis-categorised items, shared images."""
    from cli.hygiene import DEFAULT_K, check_hygiene, write_hygiene_html

    threshold = args.threshold
    if threshold is None:
        threshold = get_settings().near_duplicate_threshold
    if not 0 < threshold <= 1:
        print("error: --threshold takes a cosine above 0 and at most 1", file=sys.stderr)
        return 2
    if args.placeholder_min < 2:
        print("error: --placeholder-min takes 2 or more", file=sys.stderr)
        return 2
    k = args.k if "k" in args.given else DEFAULT_K
    sample = args.sample if "sample" in args.given else 0  # every item unless limited
    client = api_client(args)
    report = check_hygiene(
        client, k, threshold, args.placeholder_min, args.concurrency, not args.quiet, sample,
        args.seed,
    )  # fmt: skip
    print(report.table())
    if args.html:
        write_hygiene_html(report, client, args.html, args.sheet)
        print(f"wrote {args.html}")
    return 0


class Given(argparse.Action):
    """Store the value and note that the option was given (`args.given`): some defaults of
    `evaluate` depend on --hygiene."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def key_value(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed image files into a .npy array")
    embed.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    embed.add_argument("--out", required=True, type=Path, metavar="FILE.npy")
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(handler=cmd_embed)

    listen = argparse.ArgumentParser(add_help=False)
    listen.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    listen.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    listen.add_argument(
        "--insecure", action="store_true",
        help="allow a --host beyond loopback without LOOKALIKE_API_KEY (writes open to all)",
    )  # fmt: skip

    up = commands.add_parser(
        "up", parents=[listen], help="run Redis, an embed worker, the writer and the API"
    )
    up.add_argument(
        "--demo", type=int, default=0, metavar="N",
        help="once ready, write and import a demo catalog of N items (done once per data dir)",
    )  # fmt: skip
    up.add_argument(
        "--flower", type=int, nargs="?", const=5555, default=None, metavar="PORT",
        help="also run Celery's Flower monitoring UI (default port 5555)",
    )  # fmt: skip
    up.set_defaults(handler=cmd_up)

    api = commands.add_parser(
        "api", parents=[listen], help="run one API process against LOOKALIKE_REDIS_URL"
    )
    api.set_defaults(handler=cmd_api)

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--api-url", help="the API (default LOOKALIKE_API_URL)")
    client.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    imp = commands.add_parser("import", parents=[client], help="import a catalog directory")
    imp.add_argument("dataset", type=Path, metavar="DATASET_DIR")
    imp.add_argument("--concurrency", type=int, default=8, help="uploads in flight (default 8)")
    imp.add_argument("--force", action="store_true", help="re-import items already indexed")
    imp.set_defaults(handler=cmd_import)

    sim = commands.add_parser("similar", parents=[client], help="similar items of a product")
    sim.add_argument("product_id")
    sim.add_argument("-k", type=int, default=5)
    sim.add_argument(
        "--filter", action="append", default=[], type=key_value, metavar="KEY=VALUE",
        help="exact-match metadata filter (repeatable)",
    )  # fmt: skip
    sim.set_defaults(handler=cmd_similar)

    search = commands.add_parser("search", parents=[client], help="items similar to an image")
    search.add_argument("image", type=Path, metavar="IMAGE")
    search.add_argument("-k", type=int, default=5)
    search.set_defaults(handler=cmd_search)

    demo = commands.add_parser("demo-catalog", help="write a synthetic catalog")
    demo.add_argument("directory", type=Path, metavar="DIR")
    demo.add_argument("--n", type=int, default=300, help="items (default 300)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(handler=cmd_demo_catalog)

    ev = commands.add_parser(
        "evaluate", parents=[client], help="precision@k by label, or --hygiene of the catalog"
    )
    ev.add_argument("--by", default="articleType", help="label to break down by")
    ev.add_argument(
        "-k", type=int, default=5, action=Given,
        help="neighbours per query (default 5; with --hygiene 10)",
    )  # fmt: skip
    ev.add_argument("--concurrency", type=int, default=8)
    ev.add_argument(
        "--sample", type=int, default=1000, metavar="N", action=Given,
        help="queries drawn at random (default 1000, with --hygiene 0; 0: every indexed item)",
    )  # fmt: skip
    ev.add_argument("--seed", type=int, default=0, help="of the samples (default 0)")
    ev.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report")
    ev.add_argument(
        "--sheet", type=int, default=8, metavar="N",
        help="queries per sheet of the HTML report (worst, random; with --hygiene, "
        "mis-categorised items per label; default 8)",
    )  # fmt: skip
    ev.add_argument(
        "--hygiene", action="store_true",
        help="report near-duplicate listings, likely mis-categorised items and shared or "
        "placeholder images instead of precision",
    )  # fmt: skip
    ev.add_argument(
        "--threshold", type=float, default=None, metavar="COSINE",
        help="with --hygiene: the cosine from which two products are near duplicates "
        "(default LOOKALIKE_NEAR_DUPLICATE_THRESHOLD)",
    )  # fmt: skip
    ev.add_argument(
        "--placeholder-min", type=int, default=5, metavar="N",
        help="with --hygiene: products sharing one image, or near-identical vectors, from "
        "which it is likely a placeholder (default 5)",
    )  # fmt: skip
    ev.add_argument(
        "--compare", nargs=2, metavar=("GEN", "GEN"),
        help="precision of two index generations over the same queries, and how many top-k "
        "lists change (reads Redis and the snapshots: LOOKALIKE_REDIS_URL; main: the first)",
    )  # fmt: skip
    ev.set_defaults(handler=cmd_evaluate, given=frozenset())
    generations.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except LookalikeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
