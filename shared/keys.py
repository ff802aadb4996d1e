"""Every Redis key name the project uses, in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "lk:"
EMBED_QUEUE = "embed"
GENERATION_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,15}")


@dataclass(frozen=True)
class Generation:
    """The keys of one index generation: its journal, its model, its writer, its embed queue.

    Each generation is an index of the whole catalog built with one model; the first one, named
    "", has the keys of an index that never had another. `lookalike reindex` builds a new one
    beside the one serving, `lookalike promote` switches to it.
    """

    name: str = ""

    def __post_init__(self) -> None:
        if self.name == "main":
            raise ValueError("'main' names the first generation: use Generation.named('main')")
        if self.name and not GENERATION_NAME.fullmatch(self.name):
            raise ValueError(
                f"invalid generation name {self.name!r}: 1-16 of a-z 0-9 -, starting with a "
                "letter or digit"
            )

    @classmethod
    def named(cls, label: str | None) -> Generation:
        """The generation people call `label` ("main", "" or None: the first)."""
        return cls("" if label in (None, "", "main") else str(label))

    def _key(self, rest: str) -> str:
        return f"{PREFIX}{rest}" if not self.name else f"{PREFIX}gen:{self.name}:{rest}"

    @property
    def label(self) -> str:
        """How people read the name ("main" for the first generation)."""
        return self.name or "main"

    @property
    def journal(self) -> str:
        """Stream of index changes: the source of this generation's index."""
        return self._key("journal")

    @property
    def journal_trimmed(self) -> str:
        """The id of the newest entry trimmed away."""
        return self._key("journal:trimmed")

    @property
    def journal_seq(self) -> str:
        """The number of the newest journal entry."""
        return self._key("journal:seq")

    @property
    def indexed(self) -> str:
        """Set of product ids whose vector is in the journal or a snapshot."""
        return self._key("indexed")

    @property
    def lost(self) -> str:
        """Set of product ids whose vectors were lost: re-import them."""
        return self._key("index:lost")

    @property
    def damage(self) -> str:
        """Why vectors were lost, and when the writer found out."""
        return self._key("index:damage")

    @property
    def index_model(self) -> str:
        """The model id every vector of this generation comes from."""
        return self._key("index:model")

    @property
    def replicas_waiting(self) -> str:
        """Set (briefly) while an API replica waits for the writer's next snapshot."""
        return self._key("replicas:waiting")

    @property
    def writer_lock(self) -> str:
        return self._key("writer:lock")

    @property
    def writer_position(self) -> str:
        """The last journal entry the writer applied."""
        return self._key("writer:position")

    @property
    def writer_seq(self) -> str:
        """That entry's number."""
        return self._key("writer:seq")

    @property
    def queue(self) -> str:
        """The Celery queue of this generation's embed workers."""
        return EMBED_QUEUE if not self.name else f"{EMBED_QUEUE}.{self.name}"

    @property
    def pending_field(self) -> str:
        """The product hash field naming the task that changes the product next, here."""
        return "pending_task" if not self.name else f"pending_task:{self.name}"


MAIN = Generation()
JOURNAL = MAIN.journal
JOURNAL_TRIMMED = MAIN.journal_trimmed
JOURNAL_SEQ = MAIN.journal_seq
INDEXED = MAIN.indexed
LOST = MAIN.lost
DAMAGE = MAIN.damage
INDEX_MODEL = MAIN.index_model
WRITER_LOCK = MAIN.writer_lock
WRITER_POSITION = MAIN.writer_position
WRITER_SEQ = MAIN.writer_seq

GENERATIONS = PREFIX + "generations"  # set of the names of generations besides the first
SERVING = PREFIX + "generations:serving"  # the generation API replicas serve (unset: the first)
PREVIOUS = PREFIX + "generations:previous"  # the one served before, for `lookalike rollback`
PRODUCTS = PREFIX + "products"  # set of known product ids
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
