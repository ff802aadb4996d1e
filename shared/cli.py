"""The `lookalike` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.errors import LookalikeError
from shared.settings import get_settings


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed image files into an (n, 2048) float32 .npy array, in input order."""
    import numpy as np
    from tqdm import tqdm

    from shared.embedder import get_embedder

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
    from shared.stack import run_stack

    return run_stack(get_settings(), args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed image files into a .npy array")
    embed.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    embed.add_argument("--out", required=True, type=Path, metavar="FILE.npy")
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(handler=cmd_embed)

    up = commands.add_parser("up", help="run Redis, an embed worker, the writer and the API")
    up.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    up.set_defaults(handler=cmd_up)
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
