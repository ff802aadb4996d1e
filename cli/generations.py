"""Moving the catalog to another model without downtime: `lookalike reindex`, `promote`,
`rollback`, `generations` (list, remove).

A generation is an index of the whole catalog built with one model, with its own journal, writer
and embed queue (shared.keys.Generation). `reindex` builds one beside the one serving, from the
originals the workers kept, while new posts reach both; `promote` makes every API replica serve it
(each loads it, then swaps, so no request sees a mix); `rollback` goes back while the old one is
kept; `generations remove` deletes one explicitly.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from tqdm import tqdm

from shared import keys
from shared.errors import LookalikeError
from shared.keys import MAIN, Generation
from shared.queue import BULK_PRIORITY, PRIORITY_STEPS, make_celery, queue_name, send_embed
from shared.records import TaskRecord, TaskStore, connect
from shared.settings import Settings

QUEUE_AHEAD = 2000  # messages a reindex keeps waiting in its queue at most
POLL = 1.0


class GenerationError(LookalikeError):
    code = "generation_error"
    http_status = 409


def redis_of(settings: Settings) -> redis.Redis:
    if settings.redis_url is None:
        raise GenerationError(
            "LOOKALIKE_REDIS_URL is not set: generations live in the stack's Redis"
        )
    return connect(settings.redis_url)


def serving(client: redis.Redis) -> Generation:
    raw = client.get(keys.SERVING)
    return Generation(raw.decode()) if isinstance(raw, bytes) else MAIN


def known(client: redis.Redis) -> list[Generation]:
    """Every generation: the serving one first."""
    current = serving(client)
    names = {raw.decode() for raw in client.smembers(keys.GENERATIONS)}  # type: ignore[union-attr]
    return [current, *(Generation(name) for name in sorted(names - {current.name}))]


@dataclass
class Progress:
    total: int
    indexed: int = 0
    failed: dict[str, str] = field(default_factory=dict)


class Reindex:
    """Re-embeds every product from its kept original into generation `gen`; resumable."""

    def __init__(self, settings: Settings, gen: Generation) -> None:
        self.settings = settings
        self.gen = gen
        self.client = redis_of(settings)
        self.tasks = TaskStore(self.client, settings.task_ttl, settings.search_ttl)
        self.celery = make_celery(settings, settings.redis_url or "")
        self.sent: dict[str, str] = {}  # task id -> product id

    def run(self, progress: bool = True) -> Progress:
        if self.gen == serving(self.client):
            raise GenerationError(f"generation {self.gen.label} is the one serving")
        self.client.sadd(keys.GENERATIONS, serving(self.client).name, self.gen.name)
        products = self.client.scard(keys.PRODUCTS)
        state = Progress(total=int(products))
        with tqdm(total=state.total, unit="item", desc=self.gen.label, disable=not progress) as bar:
            # Posts go on meanwhile, each bringing its product to this generation by a task of
            # its own: a second pass follows those posted during the first (they were counted
            # in the total) and sends what still lacks; posts after it are not waited for.
            tried: set[str] = set()
            for _ in range(2):
                for product_id in self._missing():
                    if product_id in tried:
                        continue  # failed once in this run: reported, not sent again
                    tried.add(product_id)
                    self._send(product_id)
                    self._update(state, bar)
                    self._wait_for_room()
                while not self._settled(state):
                    time.sleep(POLL)
                    self._update(state, bar)
        return state

    def _missing(self) -> Any:
        """Products the generation lacks and has no live task for."""
        for raw in self.client.sscan_iter(keys.PRODUCTS, count=500):
            product_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if self.client.sismember(self.gen.indexed, product_id):
                continue
            pending: Any = self.client.hget(keys.product(product_id), self.gen.pending_field)
            record = self.tasks.get(pending.decode()) if pending else None
            if record is not None and not record.finished:
                self.sent[record.task_id] = product_id  # sent by an earlier run: follow it
                continue
            yield product_id

    def _send(self, product_id: str) -> None:
        fields: Any = self.client.hmget(keys.product(product_id), "metadata", "image_sha256")
        metadata, digest = fields
        if digest is None:
            return  # never indexed at all: its own post task brings it to every generation
        record = TaskRecord(
            task_id=uuid.uuid4().hex,
            kind="index",
            product_id=product_id,
            options={
                "metadata": _json(metadata),
                "generation": self.gen.name,
                "original": digest.decode(),
            },
        )
        pipe = self.client.pipeline()
        self.tasks.save(record, pipe)
        pipe.hset(keys.product(product_id), self.gen.pending_field, record.task_id)
        pipe.execute()
        send_embed(self.celery, record.task_id, BULK_PRIORITY, self.gen.queue)
        self.sent[record.task_id] = product_id

    def _wait_for_room(self) -> None:
        while self._queued() > QUEUE_AHEAD:
            time.sleep(POLL)

    def _queued(self) -> int:
        return sum(int(self.client.llen(queue_name(s, self.gen.queue))) for s in PRIORITY_STEPS)

    def _update(self, state: Progress, bar: Any) -> None:
        """Products held now, of the products there are now (posts go on meanwhile)."""
        state.indexed = int(self.client.scard(self.gen.indexed))
        state.total = int(self.client.scard(keys.PRODUCTS))
        bar.total = state.total
        bar.update(max(state.indexed - bar.n, 0))

    def _settled(self, state: Progress) -> bool:
        """Every task this run follows has ended."""
        for task_id, product_id in list(self.sent.items()):
            record = self.tasks.get(task_id)
            if record is None or record.finished:
                del self.sent[task_id]
                if record is not None and record.error is not None:
                    state.failed[product_id] = f"{record.error['code']}: {record.error['message']}"
        return not self.sent


def promote(settings: Settings, name: str, force: bool = False) -> str:
    """Make every API replica serve generation `name`; the one serving now is kept for rollback."""
    client = redis_of(settings)
    gen, current = Generation.named(name), serving(client)
    if gen == current:
        raise GenerationError(f"generation {gen.label} is already the one serving")
    if gen not in known(client):
        raise GenerationError(f"no generation {gen.label}: `lookalike reindex --generation {name}`")
    holds, total = int(client.scard(gen.indexed)), int(client.scard(keys.PRODUCTS))
    if holds < total and not force:
        raise GenerationError(
            f"generation {gen.label} holds {holds} of {total} products: let `lookalike reindex` "
            "finish, or promote it anyway with --force"
        )
    pipe = client.pipeline()
    pipe.set(keys.PREVIOUS, current.name)
    pipe.set(keys.SERVING, gen.name)
    pipe.execute()
    return f"generation {gen.label} now serves ({holds} of {total} products); {current.label} kept"


def rollback(settings: Settings) -> str:
    """Serve the previous generation again (and keep the one serving now as the previous)."""
    client = redis_of(settings)
    raw = client.get(keys.PREVIOUS)
    if raw is None:
        raise GenerationError("no previous generation to roll back to")
    previous, current = Generation(raw.decode()), serving(client)  # type: ignore[union-attr]
    if previous not in known(client):
        raise GenerationError(f"the previous generation {previous.label} was removed")
    pipe = client.pipeline()
    pipe.set(keys.SERVING, previous.name)
    pipe.set(keys.PREVIOUS, current.name)
    pipe.execute()
    return f"generation {previous.label} serves again; {current.label} kept"


def remove(settings: Settings, name: str) -> str:
    """Delete a generation that does not serve: its journal, sets, model and snapshots."""
    from shared.snapshots import open_store

    client = redis_of(settings)
    gen = Generation.named(name)
    if gen == serving(client):
        raise GenerationError(f"generation {gen.label} serves: promote another first")
    if gen not in known(client):
        raise GenerationError(f"no generation {gen.label}")
    doomed = [gen.journal, gen.journal_seq, gen.journal_trimmed, gen.indexed, gen.lost,
              gen.damage, gen.index_model, gen.writer_position, gen.writer_seq]  # fmt: skip
    pipe = client.pipeline()
    pipe.delete(*doomed)
    pipe.srem(keys.GENERATIONS, gen.name)
    if client.get(keys.PREVIOUS) == gen.name.encode():
        pipe.delete(keys.PREVIOUS)
    pipe.execute()
    for raw in client.sscan_iter(keys.PRODUCTS, count=500):
        client.hdel(keys.product(raw.decode()), gen.pending_field)
    store = open_store(settings, gen)
    snapshots = store.snapshots()
    for snapshot in snapshots:
        store.delete(snapshot.name)
    return f"generation {gen.label} removed ({len(snapshots)} snapshots deleted)"


def table(settings: Settings) -> str:
    """One line per generation: model, products held, journal, writer lag, role."""
    client = redis_of(settings)
    previous = client.get(keys.PREVIOUS)
    total = int(client.scard(keys.PRODUCTS))
    lines = [f"{'generation':<12}{'role':<10}{'products':>10}{'journal':>9}  model"]
    for number, gen in enumerate(known(client)):
        role = "serving" if number == 0 else "previous" if previous == gen.name.encode() else ""
        model: Any = client.get(gen.index_model)
        held = f"{client.scard(gen.indexed)}/{total}"
        lines.append(
            f"{gen.label:<12}{role:<10}{held:>10}{client.xlen(gen.journal):>9}  "
            f"{model.decode() if model else '-'}"
        )
    return "\n".join(lines)


def _json(raw: bytes | None) -> Any:
    return json.loads(raw) if raw else {}


def add_commands(commands: Any) -> None:
    """The subcommands of this module, on `lookalike`'s parser."""
    reindex = commands.add_parser(
        "reindex", help="build another index generation from the kept originals"
    )
    reindex.add_argument(
        "--generation", required=True, metavar="NAME",
        help="its name; its workers and writer run with LOOKALIKE_GENERATION=NAME",
    )  # fmt: skip
    reindex.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    reindex.set_defaults(handler=cmd_reindex)
    promote_ = commands.add_parser("promote", help="serve another generation, on every replica")
    promote_.add_argument("generation", metavar="NAME")
    promote_.add_argument("--force", action="store_true", help="even if it lacks products")
    promote_.set_defaults(
        handler=lambda args: _say(promote(_settings(), args.generation, args.force))
    )
    back = commands.add_parser("rollback", help="serve the previous generation again")
    back.set_defaults(handler=lambda args: _say(rollback(_settings())))
    listing = commands.add_parser("generations", help="list generations, or remove one")
    listing.add_argument("remove", nargs="?", choices=["remove"], help="remove NAME")
    listing.add_argument("name", nargs="?", metavar="NAME")
    listing.set_defaults(handler=cmd_generations)


def cmd_reindex(args: Any) -> int:
    state = Reindex(_settings(), Generation.named(args.generation)).run(progress=not args.quiet)
    print(f"generation {Generation.named(args.generation).label}: {state.indexed} of {state.total} "
          f"products indexed, {len(state.failed)} failed")  # fmt: skip
    for product_id, reason in sorted(state.failed.items()):
        print(f"failed {product_id}: {reason}")
    return 1 if state.failed or state.indexed < state.total else 0


def cmd_promote(args: Any) -> int:
    return _say(promote(_settings(), args.generation, args.force))


def cmd_generations(args: Any) -> int:
    if args.remove:
        if args.name is None:
            raise GenerationError("which generation? `lookalike generations remove NAME`")
        return _say(remove(_settings(), args.name))
    return _say(table(_settings()))


def _settings() -> Settings:
    from shared.settings import get_settings

    return get_settings()


def _say(text: str) -> int:
    print(text)
    return 0
