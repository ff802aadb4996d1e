"""Every Redis key name the project uses, in one place."""

from __future__ import annotations

PREFIX = "lk:"
JOURNAL = PREFIX + "journal"  # stream of index changes: the source of every index
JOURNAL_TRIMMED = PREFIX + "journal:trimmed"  # id of the newest entry trimmed away
JOURNAL_SEQ = PREFIX + "journal:seq"  # the number of the newest journal entry
INDEXED = PREFIX + "indexed"  # set of product ids whose vector is in the journal or a snapshot
LOST = PREFIX + "index:lost"  # set of product ids whose vectors were lost: re-import them
DAMAGE = PREFIX + "index:damage"  # why vectors were lost, when the writer found out
INDEX_MODEL = PREFIX + "index:model"  # the model id every vector in the journal comes from
PRODUCTS = PREFIX + "products"  # set of known product ids
WRITER_LOCK = PREFIX + "writer:lock"  # held by the one index writer
WRITER_POSITION = PREFIX + "writer:position"  # the last journal entry the writer applied
WRITER_SEQ = PREFIX + "writer:seq"  # that entry's number
INFLIGHT = PREFIX + "tasks:inflight"  # sorted set: unfinished task ids, by when last sent
STATS = PREFIX + "stats"  # hash of counters: tasks by state, forward passes, images embedded
BATCH_SIZES = PREFIX + "stats:batch_sizes"  # hash: batch size -> number of forward passes


def product(product_id: str) -> str:
    return f"{PREFIX}product:{product_id}"


def task(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}"


def upload(task_id: str) -> str:
    """Image bytes waiting for their embed task (with a TTL)."""
    return f"{PREFIX}upload:{task_id}"


def query_vector(task_id: str) -> str:
    """The vector of a search image, kept as long as its task record."""
    return f"{PREFIX}qvec:{task_id}"


def query_thumbnail(task_id: str) -> str:
    """The thumbnail of a search image (made by the worker), kept as long as its vector."""
    return f"{PREFIX}qthumb:{task_id}"


def thumbnail(product_id: str) -> str:
    return f"{PREFIX}thumb:{product_id}"
