"""The group commit: the writes of the core staged together and committed in one transaction.

:class:`GroupCommit` supervises the commits of the store. The first write
staged opens a group and wakes :meth:`GroupCommit.run`, which waits one
more event-loop pass and then commits every write staged by then in one
SQLite transaction. Every request served while a group is open, reads
included, is answered only after that commit, since it may have seen its
writes; if the commit fails, all of them get a 500 and the documents the
group touched are reloaded from disk when next used. A write that fails
before it is staged drops the open group with it (its cached changes may be
among those it touched). It also checkpoints the WAL in a worker thread
while writes come in.

Owns when and how staged writes are committed, answered or dropped; must
not decide what a write changes (that is :mod:`oada_jobs.server.graph`),
nor import the framework, the client or a transport.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import anyio.to_thread

from oada_jobs.server.graph import ResourceGraph
from oada_jobs.server.store import Batch, ChangeRecord, Store

__all__ = ["CHECKPOINT_INTERVAL", "Group", "GroupCommit"]

logger = logging.getLogger(__name__)

#: Seconds between background WAL checkpoints (when anything was written).
CHECKPOINT_INTERVAL = 0.25


@dataclass(eq=False, slots=True)
class Group:
    """Writes staged together, committed in one transaction."""

    #: Batches to commit (and then notify) and answers to give, in the order
    #: they were made; an answer is called with whether the commit succeeded.
    steps: list[Batch | Callable[[bool], None]] = field(default_factory=list)
    #: Changes whose rev-graph bumps follow the commit (quirks="reference").
    unpropagated: list[list[ChangeRecord]] = field(default_factory=list)
    #: Set once the group is committed or has failed.
    done: anyio.Event = field(default_factory=anyio.Event)
    ok: bool = False
    #: Set once its transaction is committed (its answers then say so).
    committed: bool = False
    #: How many of ``steps`` were handled; each is handled once.
    settled: int = 0


class GroupCommit:
    """Stages the core's writes and commits them in groups.

    :param store: The store the groups are committed to (and reloaded from
        after a failure).
    :param graph: Propagates, saves and notifies the changes of a group.
    :param deferred: Propagate a group's rev-graph bumps in the group after
        it, as the reference server does (``quirks="reference"``).
    """

    def __init__(self, store: Store, graph: ResourceGraph, *, deferred: bool) -> None:
        self._store = store
        self._graph = graph
        self._deferred = deferred
        #: The writes staged for the next commit (``None``: nothing staged).
        self.group: Group | None = None
        # Set when a group opens: wakes run().
        self._group_started = anyio.Event()
        # Committed changes whose rev-graph bumps follow in the next group
        # (quirks="reference").
        self._unpropagated: list[list[ChangeRecord]] = []
        #: Set (and replaced) after each background checkpoint; tests wait on it.
        self.checkpointed = anyio.Event()

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """A batch whose cached changes are dropped if it fails before it is staged.

        The staged writes of the open group may be among the cached changes it
        drops, so they are dropped too, and their requests fail.
        """
        batch = Batch()
        try:
            yield batch
        except BaseException:
            touched = batch.touched()
            group = self.group
            if touched and group is not None:
                self.group = None
                for step in group.steps:
                    if isinstance(step, Batch):
                        touched |= step.touched()
                self._store.discard(touched)
                self._settle(group, ok=False)
            elif touched:
                self._store.discard(touched)
            raise

    def commit(self, batch: Batch) -> None:
        """Propagate (or, deferred, note what to propagate) and stage *batch*."""
        roots = list(batch.changes)
        if not self._deferred:
            self._graph.propagate(batch, roots)
        group = self._stage(batch)
        if self._deferred:
            group.unpropagated.append(roots)

    def flush(self) -> None:
        """Commit what is staged, and the rev propagation each commit stages after it."""
        while self.group is not None or self._unpropagated:
            self._commit_group()

    def _stage(self, batch: Batch) -> Group:
        """Add *batch* to the open group (started, and its commit scheduled, if new)."""
        group = self.group
        if group is None:
            group = self.group = Group()
            self._group_started.set()
        group.steps.append(batch)
        return group

    async def run(self) -> None:
        """Commit each group two event-loop passes after its first write.

        This task must outlive any failure: :meth:`_commit_group` never
        raises, so a failed commit fails only the requests it held.
        """
        while True:
            await self._group_started.wait()
            # Requests read from a socket in one pass are served in the next,
            # by the connections' reader tasks; committing a pass later lets
            # those requests' writes join this transaction rather than start
            # the next. Under load that about halves the transactions
            # (docs/server.md).
            await anyio.lowlevel.checkpoint()
            self._group_started = anyio.Event()
            self._commit_group()

    def _commit_group(self) -> None:
        """Commit the open group; on any failure, :meth:`_recover` instead of raising."""
        group: Group | None = None
        try:
            unpropagated, self._unpropagated = self._unpropagated, []
            for roots in unpropagated:
                self._propagate_later(roots)
            group, self.group = self.group, None
            if group is None:
                return
            batches = [step for step in group.steps if isinstance(step, Batch)]
            self._graph.save(batches)
            group.committed = True
            self._settle(group, ok=True)
            if self.group is None:
                self._store.trim()
        except Exception:
            logger.exception("the group commit failed; its requests are answered with 500")
            self._recover(group)

    def _recover(self, group: Group | None) -> None:
        """Leave the store and caches as on disk after a failed commit, and answer *group*.

        Whatever failed (SQLite, an encoder, a bug), the transaction is rolled
        back and the documents the group touched are reloaded from disk when
        next used; its requests that were not answered yet get a 500, unless
        the transaction was already committed. Later groups commit as usual.
        """
        try:
            self._store.rollback()
            if group is not None and not group.committed:
                touched: set[str] = set()
                for step in group.steps:
                    if isinstance(step, Batch):
                        touched |= step.touched()
                self._store.discard(touched)
        except Exception:
            logger.exception("reloading the cached state after a failed commit failed")
        if group is not None:
            self._settle(group, ok=group.committed)
        if self.group is not None or self._unpropagated:
            # Writes staged meanwhile still get their commit.
            self._group_started.set()

    def _settle(self, group: Group, *, ok: bool) -> None:
        """Notify watchers of a committed group and give its answers, in order.

        Never raises: a failing notification or answer is logged, and the
        steps after it are still handled (each exactly once, even when this
        is called again for the same group after a failure).
        """
        group.ok = ok
        steps = group.steps
        while group.settled < len(steps):
            step = steps[group.settled]
            group.settled += 1
            try:
                if not isinstance(step, Batch):
                    step(ok)
                elif ok:
                    self._graph.notify(step.changes)
            except Exception:
                logger.exception("answering a request or notifying its watchers failed")
        group.done.set()
        if ok and group.unpropagated:
            self._unpropagated.extend(group.unpropagated)
            group.unpropagated = []
            self._group_started.set()

    def _propagate_later(self, roots: list[ChangeRecord]) -> None:
        """Stage the rev-graph bumps caused by *roots*, committed in the previous group."""
        store = self._store
        if not any(store.edges.parents_of(rec.resource_id) for rec in roots):
            return
        try:
            with self.batch() as batch:
                self._graph.propagate(batch, roots)
                if batch.changes:
                    self._stage(batch)
        except Exception:
            logger.exception("rev propagation failed")

    async def checkpoint_regularly(self) -> None:
        """Checkpoint the store's WAL in a worker thread while writes come in."""
        store = self._store
        while True:
            await anyio.sleep(CHECKPOINT_INTERVAL)
            if not store.commits_since_checkpoint:
                continue
            store.commits_since_checkpoint = 0
            try:
                await anyio.to_thread.run_sync(store.checkpoint)
            except Exception:
                # Commits still checkpoint by themselves past the backstop.
                logger.exception("background WAL checkpoint failed")
            done, self.checkpointed = self.checkpointed, anyio.Event()
            done.set()
