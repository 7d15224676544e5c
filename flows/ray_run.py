"""Shard tasks on Ray. The driver (`RayTasks`, or a Prefect task run of flows/build.py) hands each
shard to one of the run's shard workers: long-lived Ray actors, one per CPU of the cluster, each running tasks in its
threads as the threads runner does, so a worker's imports and LLM client are paid once, not per
task. What the workers make is embedded in the driver, where the whole-set stages run: one model
per run, and a worker loads one only if its strategy asks for vectors. A worker killed mid-task is
restarted by Ray, which calls the task again (a task can run twice: finished shards have markers,
answered requests are cached). The run acts as one: each server's `concurrency` bounds the
requests in flight of the whole run, not each worker's, and progress reaches the driver's bars and
the Prefect UI while the shards run. Wiring only; imported when `orchestration.task_runner` is ray.

The slots are leased, not lent one request at a time. A Ray actor per run (`RunState`, its name
unique per run and given to the run's shard workers) holds each server's slots; a thread in every
worker process reports, a few times a second, what its requests use and want, with its progress counts, and
is told how many slots of each server it may use until the next report. The actor shares a server's
slots among the workers that want them and grows a worker's lease only from slots nobody holds; a
lease shrinks when its worker reports that its requests let go. A worker that stops reporting (its
process killed, its machine gone) loses its lease after LEASE_S, so a lost worker never costs the
run its capacity; and a worker that cannot report stops sending after half that time, so its
lease has lapsed on both sides before its slots go to others. No request waits on the actor.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

import ray

from germinate import driver, progress
from germinate.config import RunConfig
from germinate.driver import Threads
from germinate.embed import Embedder
from germinate.llm.limit import Limit
from germinate.metrics import wanted_ahead
from germinate.records import Record
from germinate.runs import Run
from germinate.settings import OrchestrationConfig
from germinate.stall import Watch

log = logging.getLogger(__name__)
# Ray starts off the main thread (`RayStart`), where it sets no SIGTERM handler and says so on every
# run. A SIGTERM then ends a run on Ray as it ends one on threads, at once (the run resumes), and
# Ray's processes with it: they die with the thread that started them.
logging.getLogger("ray._private.worker").addFilter(lambda record: "SIGTERM handler" not in record.getMessage())

SYNC_S = 0.25  # how often a worker reports and hears its lease
LEASE_S = 10.0  # a worker not heard from for this long has lost its slots
REPORT_TIMEOUT_S = 5.0
WAIT_S = 2.0  # how often the driver looks up while its workers start
# Ray runs its workers at niceness 15, to yield the CPU to its own services. A shard worker is the
# run itself: at 15, the driver's embedding process or any busy program beside it leaves the worker
# a few percent of a core (a run's first request then came a minute late on a loaded laptop).
LOCAL_RAY = {"worker_niceness": 0}


def fair_shares(capacity: int, wanted: dict[str, int]) -> dict[str, int]:
    """`capacity` split among the askers: each gets what it wants up to an equal share, and what the
    modest leave goes to the rest."""
    shares, left = {}, capacity
    askers = sorted(wanted, key=wanted.__getitem__)
    for i, name in enumerate(askers):
        shares[name] = min(wanted[name], left // (len(askers) - i))
        left -= shares[name]
    for name in reversed(askers):  # the remainder of the division, to those that want more
        extra = min(left, wanted[name] - shares[name])
        shares[name] += extra
        left -= extra
    return shares


@dataclass
class Holder:
    """What the run's state knows of one worker."""

    seen: float  # when it last reported (time.monotonic)
    held: dict[str, int]  # per server: slots it may be using
    use: dict[str, tuple[int, int]]  # per server: (requests in flight, waiting)


# One call at a time (a threaded actor with one thread): its state needs no lock.
@ray.remote(num_cpus=0)
class RunState:
    """Each server's slots, leased to the run's workers, and the progress counts and records made that
    they report."""

    def __init__(self, capacity: dict[str, int]):
        self.capacity = capacity
        self.holders: dict[str, Holder] = {}
        self.lost: list[str] = []  # workers whose lease lapsed, not yet told to the driver
        self.counts: Counter = Counter()
        self.made: list[tuple[float, str]] = []

    def report(
        self, worker: str, use: dict[str, tuple[int, int, int]], counts: dict[str, int], made: list[tuple[float, str]]
    ) -> dict[str, int]:
        """A worker's state (`use`: per server, slots held, in use, waiting), progress and records made
        (their priority and text, to embed); returns how many slots of each server it may use from
        now on."""
        now = time.monotonic()
        self.counts.update(counts)
        self.made.extend(made)
        for other, holder in list(self.holders.items()):
            if now - holder.seen > LEASE_S and other != worker:
                self.lost.append(other)
                del self.holders[other]
        this = self.holders[worker] = Holder(now, {server: held for server, (held, _, _) in use.items()},
                                             {server: (in_use, waiting) for server, (_, in_use, waiting) in use.items()})
        sizes = {}
        for server, capacity in self.capacity.items():
            wanted = {name: sum(holder.use.get(server, (0, 0))) for name, holder in self.holders.items()}
            share = fair_shares(capacity, wanted)[worker]
            held = this.held.get(server, 0)
            free = capacity - sum(holder.held.get(server, 0) for holder in self.holders.values())
            sizes[server] = share if share <= held else held + min(share - held, free)
            this.held[server] = max(held, sizes[server])  # a shrinking lease counts until reported
        return sizes

    def take(self) -> tuple[dict[str, int], list[str], list[tuple[float, str]]]:
        """For the driver: the progress counted since it last asked, the workers lost since, and the
        records made since."""
        counts, self.counts = dict(self.counts), Counter()
        lost, self.lost = self.lost, []
        made, self.made = self.made, []
        return counts, lost, made

    def describe(self) -> str:
        """Who holds what, for a run that waits too long."""
        now = time.monotonic()
        return "; ".join(
            f"Ray worker {worker} (heard {now - holder.seen:.1f}s ago): " + ", ".join(
                f"{server} {in_use} in flight, {waiting} waiting, {holder.held.get(server, 0)} slots"
                for server, (in_use, waiting) in holder.use.items())
            for worker, holder in self.holders.items()
        ) or "no Ray worker has asked for slots"


@ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)
class ShardWorker:
    """Runs the run's tasks in its threads; `state` names the run's state."""

    def __init__(self, state: str):
        self.state = state

    def ready(self) -> None:
        """Answers once the worker has started: a run's stall clock starts after its workers do."""

    def run(self, function: str, parameters: bytes) -> Any:
        return getattr(driver, function)(**pickle.loads(parameters), host=attach(self.state))


def _start_ray(settings: OrchestrationConfig) -> bool:
    """Ray for the run: a local instance unless `orchestration.ray_address`, or the one this process
    has joined already. Whether the run started it (and stops it)."""
    if ray.is_initialized():
        return False
    if settings.ray_address:
        log.info("Ray: joining %s", settings.ray_address)
        ray.init(address=settings.ray_address, log_to_driver=False)
    else:  # no dashboard: its processes take seconds of the two cores a laptop has
        log.info("Ray: a local instance")
        # "local": a new instance even where `ray start` runs a cluster (unnamed, Ray would join it).
        ray.init(address="local", log_to_driver=False, include_dashboard=False, _system_config=LOCAL_RAY)
    return True


class Crew:
    """The run's state and its shard workers, one per CPU of the cluster; asked for at once, each
    answers `ready` once its process has started."""

    def __init__(self, config: RunConfig):
        self.name = f"germinate-{config.run_id}-{os.urandom(4).hex()}"
        self.state = RunState.options(name=self.name).remote(config.llm.server_limits)
        count = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.actors = [ShardWorker.options(max_concurrency=config.orchestration.workers).remote(self.name)
                       for _ in range(count)]
        self.started = [actor.ready.remote() for actor in self.actors]
        self.asked = time.monotonic()

    def stop(self) -> None:
        """The workers and state go: calls still waiting on them raise."""
        for actor in [*self.actors, self.state]:
            ray.kill(actor)


class RayStart:
    """Ray, then the run's crew, started in a thread of its own (3 to 6 s on a laptop's two cores, and
    2 more for the crew's processes) while the run is checked and its servers asked. The thread lives
    until Ray stops: Ray's processes die with the thread that started them (Linux's parent-death
    signal), and so with this process however it ends."""

    def __init__(self, config: RunConfig):
        self.owned = False  # whether the run started Ray (and stops it)
        self.crew: Future = Future()  # the run's Crew, once Ray is up
        self.stopped = threading.Event()
        threading.Thread(target=self._run, args=(config,), name="ray-start", daemon=True).start()

    def _run(self, config: RunConfig) -> None:
        try:
            self.owned = _start_ray(config.orchestration)
            self.crew.set_result(Crew(config))
        except BaseException as exc:
            self.crew.set_exception(exc)
        self.stopped.wait()

    def stop(self) -> None:
        """The crew goes, and Ray if the run started it; so does this thread. Once the start is over."""
        try:
            if self.crew.exception() is None:
                self.crew.result().stop()
        finally:
            try:
                if self.owned:
                    ray.shutdown()
            finally:
                self.stopped.set()


_starting: RayStart | None = None  # begun by `start`, taken by the run's `Workers`
_starting_lock = threading.Lock()


def start(config: RunConfig) -> RayStart:
    """Ray and the crew of the run of `config` start now, in the background, unless they are starting
    already; the run's `Workers` take them."""
    global _starting
    with _starting_lock:
        if _starting is None:
            _starting = RayStart(config)
        return _starting


def stop_untaken() -> None:
    """A start no run took (the run failed its checks first): its crew stops once it has started, and
    Ray if it was started for the run. Nothing waits for that: a command that exits takes Ray with it."""
    global _starting
    with _starting_lock:
        untaken, _starting = _starting, None
    if untaken is not None:
        untaken.crew.add_done_callback(lambda _: untaken.stop())


def _take_start(config: RunConfig) -> RayStart:
    global _starting
    with _starting_lock:
        taken, _starting = _starting or RayStart(config), None
    return taken


class Workers:
    """In the driver: Ray, the run's state and its shard workers, for the length of a run."""

    def __init__(self, config: RunConfig):
        self.ray = _take_start(config)
        try:
            self.crew = self.ray.crew.result()
            self.embedder = Embedder(config.embedding, Run(config.output_dir / config.run_id).embeddings_path)
            self.busy = [0] * len(self.crew.actors)
            self.lock = threading.Lock()
            self._wait_started(config.orchestration)
        except BaseException:
            self.shutdown()
            raise

    def _wait_started(self, settings: OrchestrationConfig) -> None:
        """Until every worker has started (a cluster may have no free CPU for them), saying so if it
        takes long: a run's stall clock starts after its workers do."""
        waiting, count = self.crew.started, len(self.crew.actors)
        watch = Watch(settings, lambda: f"{count - len(waiting)} of {count} Ray shard "
                                        "workers started (does the cluster have a free CPU for each?)")
        while waiting:
            _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=WAIT_S)
            watch.check()
        nodes = len([node for node in ray.nodes() if node["Alive"]])
        log.info("Ray: %d shard workers on %d nodes, started in %.1fs", count, nodes, time.monotonic() - self.crew.asked)

    def call(self, function: Callable[..., Any], parameters: bytes) -> Any:
        """A task on the least busy worker; returns its result."""
        with self.lock:
            chosen = self.busy.index(min(self.busy))
            self.busy[chosen] += 1
        try:
            return ray.get(self.crew.actors[chosen].run.remote(function.__name__, parameters))
        finally:
            with self.lock:
                self.busy[chosen] -= 1

    def collect(self) -> None:
        """What the workers did, into this process's progress; what they made, to this process's
        embedding worker."""
        counts, lost, made = ray.get(self.crew.state.take.remote())
        for stage, amount in counts.items():
            progress.advance(stage, amount)
        for rank, text in made:
            self.embedder.submit([text], rank)
        for worker in lost:
            log.warning("Ray worker %s stopped reporting for %gs: its request slots go back to the run",
                        worker, LEASE_S)

    def describe(self) -> str:
        return ray.get(self.crew.state.describe.remote(), timeout=REPORT_TIMEOUT_S)

    def stop(self) -> None:
        """The run's workers and state go: calls still waiting on them raise."""
        self.crew.stop()

    def shutdown(self) -> None:
        """The crew, if still there, and Ray if the run started it."""
        self.ray.stop()


class RayTasks(Threads):
    """`germinate run` on Ray: each shard thread of the driver hands its shard to one of the run's shard
    workers, and takes their progress and what they made while it waits; the whole-set stages stay in
    the driver."""

    def submit(self, name: str, task: Callable[..., Any], **parameters: Any) -> Future:
        if task is driver.run_shard:
            return self.pool.submit(self.workers.call, task, pickle.dumps(parameters))
        return super().submit(name, task, **parameters)

    def wait(self, future: Future, timeout: float) -> bool:
        finished = super().wait(future, timeout)
        self.workers.collect()
        return finished

    def describe(self) -> str:
        return self.workers.describe()

    def __enter__(self) -> RayTasks:
        self.workers = Workers(self.config)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self.workers.stop()  # the workers go first: a thread still waiting on one (a failed run) ends
        finally:
            try:
                self.pool.shutdown(wait=True, cancel_futures=True)  # then Ray goes, once no thread waits on it
            finally:
                self.workers.shutdown()


class Lease:
    """This worker's share of the run's request slots, and its progress listener: one thread reports
    both to the run's state and applies the lease it hears back."""

    def __init__(self, state, name: str):
        self.state, self.name = state, name
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # a restarted worker is another
        self.limits: dict[str, Limit] = {}
        self.counts: Counter = Counter()
        self.made_since: list[tuple[float, str]] = []
        self.lock = threading.Lock()  # the counts and the records made
        self.reporting = threading.Lock()  # one report at a time: the thread's, or a task's last
        self.asked = threading.Event()
        self.heard = time.monotonic()
        threading.Thread(target=self._run, daemon=True, name="germinate-lease").start()

    def limit(self, server: str) -> Limit:
        """A server's limit in this process: empty until the run's state grants slots."""
        self.limits[server] = Limit(0, on_short=self.asked.set)
        return self.limits[server]

    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, amount: int = 1) -> None:
        with self.lock:
            self.counts[stage] += amount

    def finish(self, stage: str) -> None:
        pass

    def made(self, records: list[Record], size: int, every: bool) -> None:
        """Records a shard made (of a dataset of about `size`), for the driver to embed while the run
        goes on: `every` one, or those the metrics will likely sample."""
        with self.lock:
            self.made_since.extend(wanted_ahead(records, size, every))

    def settle(self) -> None:
        """At the end of a task: its last counts reach the run's state before the driver hears that the
        task is done."""
        self.report()

    def report(self) -> None:
        """Tell the run's state what this worker uses, wants, did and made; use the slots it grants."""
        with self.reporting:
            with self.lock:
                counts, self.counts = dict(self.counts), Counter()
                made, self.made_since = self.made_since, []
            use = {server: (limit.held, limit.in_use, limit.waiting) for server, limit in self.limits.items()}
            # A report that times out still reaches the actor (in order, after the ones before), so its
            # counts and records are not sent again; its grant is unknown, so the lease stays as it was.
            sizes = ray.get(self.state.report.remote(self.worker, use, counts, made), timeout=REPORT_TIMEOUT_S)
            self.heard = time.monotonic()
            for server, limit in self.limits.items():  # a server this worker has not asked yet has none
                limit.resize(sizes[server])

    def _run(self) -> None:
        while True:
            self.asked.wait(SYNC_S)
            self.asked.clear()
            try:
                self.report()
            except ray.exceptions.RayActorError:
                return  # the run is over
            except Exception as exc:  # a report lost on the way: the next one may arrive
                log.warning("Ray worker %s could not report to the run: %s", self.worker, exc)
            if time.monotonic() - self.heard > LEASE_S / 2:  # the actor will soon give these slots away
                for limit in self.limits.values():
                    limit.resize(0)


_attaching = threading.Lock()


def attach(name: str) -> Lease:
    """In a Ray worker: this process's requests take their slots from the run's state, and its
    progress goes to the driver. One lease per process, whichever of its tasks starts first (two
    would each be granted slots, under one worker's name)."""
    with _attaching:
        if getattr(progress.listener, "name", None) != name:
            progress.set_listener(Lease(ray.get_actor(name), name))
        return progress.listener
