"""Index speed and quality: VectorIndex (HNSW) vs numpy brute force vs the seed's full matrix.

Per size: build items/s, snapshot save/load time, bytes per item (file and RSS). Per ef:
single-query p50/p99 latency (k=10, the query item itself excluded, as the service does) and
recall@10 against exact cosine search. Vectors are synthetic, clustered and non-negative
(like ReLU CNN features), in two kinds: "iso", |gaussian centre + isotropic noise|, whose
neighbourhoods are full-dimensional (a worst case for a graph index), and "lowrank", where most
within-cluster variation lies in a 32-d subspace, as CNN features' low intrinsic dimension does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from shared.index import VectorIndex

BUILD_CHUNK = 5000
TARGET_RECALL = 0.99
TARGET_P50_MS = 1.0
# name: (clusters, rank of within-cluster variation, isotropic noise std)
DATASETS = {"iso": (20, 0, 0.6), "lowrank": (100, 32, 1.0)}


@dataclass
class QueryRow:
    """One line of the query table."""

    data: str
    n: int
    method: str
    ef: str
    p50: float
    p99: float
    recall: float


@dataclass
class BuildRow:
    """One line of the build table."""

    data: str
    n: int
    config: str
    items_per_s: float
    build_s: float
    save_s: float
    load_s: float
    file_bytes: float
    rss_bytes: float


@dataclass
class Results:
    queries: list[QueryRow] = field(default_factory=list)
    builds: list[BuildRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hnsw",
        nargs="+",
        default=["16:200", "32:200"],
        metavar="M:EF_CONSTRUCTION",
        help="HNSW builds to compare; the first is the settings' default",
    )
    parser.add_argument("--data", nargs="+", choices=sorted(DATASETS), default=["iso", "lowrank"])
    return parser.parse_args()


def generate(rng: np.random.Generator, n: int, dim: int, data: str) -> np.ndarray:
    """Clustered non-negative float32 vectors, made in chunks to keep the peak memory low."""
    clusters, latent, noise = DATASETS[data]
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    basis = rng.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(max(1, latent))
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 10_000):
        rows = min(10_000, n - start)
        block = centres[rng.integers(0, clusters, rows)]
        if latent:
            block += rng.standard_normal((rows, latent), dtype=np.float32) @ basis
        block += np.float32(noise) * rng.standard_normal((rows, dim), dtype=np.float32)
        np.abs(block, out=out[start : start + rows])
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return float(p50), float(p99)


def exact_truth(unit: np.ndarray, rows: np.ndarray, k: int) -> list[set[int]]:
    """The exact top-k rows by cosine for each query row, itself excluded."""
    scores = unit[rows] @ unit.T
    scores[np.arange(len(rows)), rows] = -np.inf
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return [set(row.tolist()) for row in top]


def recall(found: list[set[int]], truth: list[set[int]]) -> float:
    hits = sum(len(f & t) for f, t in zip(found, truth, strict=True))
    return hits / sum(len(t) for t in truth)


def build(data: np.ndarray, m: int, ef_construction: int) -> tuple[VectorIndex, float, int]:
    """A VectorIndex over data in batches; returns it, its build seconds and its RSS growth."""
    n = len(data)
    before = rss_bytes()
    index = VectorIndex(data.shape[1], "bench", m=m, ef_construction=ef_construction)
    started = time.perf_counter()
    for start in range(0, n, BUILD_CHUNK):
        index.upsert(
            [str(i) for i in range(start, min(n, start + BUILD_CHUNK))],
            data[start : start + BUILD_CHUNK],
        )
        if start == 0 and n > BUILD_CHUNK:
            rate = BUILD_CHUNK / (time.perf_counter() - started)
            # The first batch is the fastest (small graph): a lower bound on the total.
            print(
                f"  n={n} M={m}: first {BUILD_CHUNK} at {rate:.0f}/s, >= {n / rate:.0f} s",
                file=sys.stderr,
            )
    return index, time.perf_counter() - started, rss_bytes() - before


def time_index(
    index: VectorIndex, data: np.ndarray, rows: np.ndarray, k: int
) -> tuple[list[float], list[set[int]]]:
    """Latency of single queries through VectorIndex.query, the item itself excluded."""
    for row in rows[:10]:
        index.query(data[row], k, exclude={str(row)})
    seconds, found = [], []
    for row in rows:
        started = time.perf_counter()
        hits = index.query(data[row], k, exclude={str(row)})
        seconds.append(time.perf_counter() - started)
        found.append({int(id_) for id_, _ in hits})
    return seconds, found


def time_numpy(
    unit: np.ndarray, data: np.ndarray, rows: np.ndarray, k: int
) -> tuple[list[float], list[set[int]]]:
    """Latency of exact search by one matrix-vector product and argpartition per query."""
    seconds, found = [], []
    for row in rows:
        started = time.perf_counter()
        query = data[row] / np.linalg.norm(data[row])
        scores = unit @ query
        scores[row] = -np.inf
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        seconds.append(time.perf_counter() - started)
        found.append(set(top.tolist()))
    return seconds, found


def seed_matrix(data: np.ndarray) -> np.ndarray:
    """`1 - pairwise_distances(X, metric="cosine")` as scikit-learn computes it, in float64."""
    x = data.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    distances = x @ x.T
    np.subtract(1.0, distances, out=distances)
    np.clip(distances, 0.0, 2.0, out=distances)
    np.fill_diagonal(distances, 0.0)
    np.subtract(1.0, distances, out=distances)
    return distances


def time_seed(
    data: np.ndarray, rows: np.ndarray, k: int
) -> tuple[float, list[float], list[set[int]]]:
    """The notebook's way: the full n x n similarity matrix, then one row sorted in Python."""
    started = time.perf_counter()
    similarity = seed_matrix(data)
    build_s = time.perf_counter() - started
    seconds, found = [], []
    for row in rows:
        started = time.perf_counter()
        ranked = sorted(enumerate(similarity[row]), key=lambda x: x[1], reverse=True)
        top = [i for i, _ in ranked if i != row][:k]
        seconds.append(time.perf_counter() - started)
        found.append(set(top))
    return build_s, seconds, found


def available_bytes() -> int:
    with open("/proc/meminfo") as file:
        for line in file:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_hnsw(
    kind: str,
    data: np.ndarray,
    rows: np.ndarray,
    truth: list[set[int]],
    spec: str,
    args: argparse.Namespace,
    out: Results,
) -> None:
    m, ef_construction = (int(part) for part in spec.split(":"))
    n = len(data)
    index, build_s, rss = build(data, m, ef_construction)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        started = time.perf_counter()
        manifest = index.save(Path(tmp))
        save_s = time.perf_counter() - started
        file_bytes = manifest["index_bytes"]
        started = time.perf_counter()
        loaded = VectorIndex.load(Path(tmp), manifest)
        load_s = time.perf_counter() - started
        del loaded
    config = f"M={m} efc={ef_construction}"
    out.builds.append(
        BuildRow(kind, n, config, n / build_s, build_s, save_s, load_s, file_bytes / n, rss / n)
    )
    for ef in args.ef:
        index.ef_search = ef
        seconds, found = time_index(index, data, rows, args.k)
        out.queries.append(
            QueryRow(
                kind, n, f"hnsw {config}", str(ef), *percentiles_ms(seconds), recall(found, truth)
            )
        )


def bench_size(kind: str, n: int, args: argparse.Namespace, out: Results) -> None:
    rng = np.random.default_rng(args.seed)
    data = generate(rng, n, args.dim, kind)
    rows = rng.choice(n, size=min(args.queries, n), replace=False)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    truth = exact_truth(unit, rows, args.k)
    for spec in args.hnsw:
        bench_hnsw(kind, data, rows, truth, spec, args, out)
    seconds, found = time_numpy(unit, data, rows, args.k)
    out.queries.append(
        QueryRow(kind, n, "numpy brute force", "-", *percentiles_ms(seconds), recall(found, truth))
    )
    del unit
    matrix_bytes = 2 * n * n * 8  # the matrix and one temporary of its size
    if matrix_bytes > 0.6 * available_bytes():
        out.notes.append(
            f"{kind} n={n}: seed's full matrix skipped, it needs {matrix_bytes / 2**30:.0f} GiB "
            f"(float64 n x n plus a temporary), {available_bytes() / 2**30:.0f} GiB available"
        )
        return
    build_s, seconds, found = time_seed(data, rows, args.k)
    p50, p99 = percentiles_ms(seconds)
    out.queries.append(
        QueryRow(kind, n, "seed: row sort (Python)", "-", p50, p99, recall(found, truth))
    )
    out.notes.append(
        f"{kind} n={n}: seed's full similarity matrix took {build_s:.1f} s to build "
        f"({n * n * 8 / 2**20:.0f} MiB float64)"
    )


def table(header: list[str], rows: list[list[str]], text_columns: int = 3) -> str:
    """Aligned plain text: the first text_columns left-aligned, the numbers right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.rjust(w) if i >= text_columns else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_table(out: Results) -> str:
    header = ["data", "n", "build", "items/s", "build s", "save s", "load s", "file B/item"]
    rows = []
    for b in out.builds:
        rows.append([b.data, str(b.n), b.config, f"{b.items_per_s:.0f}", f"{b.build_s:.1f}"])
        rows[-1] += [f"{b.save_s:.1f}", f"{b.load_s:.1f}", f"{b.file_bytes:.0f}"]
        rows[-1] += [f"{b.rss_bytes:.0f}"]
    return table([*header, "RSS B/item"], rows)


def query_table(out: Results) -> str:
    header = ["data", "n", "method", "ef", "p50 ms", "p99 ms", "recall@10", "p50 vs numpy"]
    baseline = {(r.data, r.n): r.p50 for r in out.queries if r.method == "numpy brute force"}
    rows = []
    for r in out.queries:
        ratio = baseline[r.data, r.n] / r.p50
        versus = "baseline" if r.method == "numpy brute force" else f"{ratio:.2f}x faster"
        if ratio < 1:
            versus = f"{1 / ratio:.2f}x slower"
        rows.append([r.data, str(r.n), r.method, r.ef, f"{r.p50:.3f}", f"{r.p99:.3f}"])
        rows[-1] += [f"{r.recall:.4f}", versus]
    return table(header, rows, text_columns=4)


def verdicts(out: Results) -> list[str]:
    """Per case and build, the smallest ef reaching the target recall, against the p50 target."""
    lines = []
    hnsw = [r for r in out.queries if r.method.startswith("hnsw")]
    for case in dict.fromkeys((r.data, r.n, r.method) for r in hnsw):
        name = f"{case[0]} n={case[1]} {case[2]}"
        good = [r for r in hnsw if (r.data, r.n, r.method) == case and r.recall >= TARGET_RECALL]
        if not good:
            lines.append(f"{name}: no ef reached recall@10 >= {TARGET_RECALL}: target NOT met")
            continue
        best = min(good, key=lambda r: int(r.ef))
        met = "met" if best.p50 <= TARGET_P50_MS else "NOT met"
        lines.append(
            f"{name}: smallest ef with recall@10 >= {TARGET_RECALL} is {best.ef} "
            f"(recall {best.recall:.4f}, p50 {best.p50:.3f} ms): "
            f"p50 <= {TARGET_P50_MS:g} ms target {met}"
        )
    return lines


def main() -> None:
    args = parse_args()
    print(
        f"dim={args.dim} queries={args.queries} k={args.k} seed={args.seed} "
        f"data={','.join(args.data)} cpus={os.cpu_count()}"
    )
    out = Results()
    for kind in args.data:
        for n in args.sizes:
            started = time.perf_counter()
            bench_size(kind, n, args, out)
            print(f"  {kind} n={n} done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print("\n\n".join([build_table(out), query_table(out), "\n".join(out.notes + verdicts(out))]))


if __name__ == "__main__":
    main()
