"""``vggtune.serve.loop``: the batched worker loop's wait for a batch's first request, on a plain in-process queue
(the server's is a ``multiprocessing.Manager`` queue with the same ``get``/``put``/``empty``). The loop inside a
real server is tested by tests/test_serve.py (slow)."""

from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace

import pytest
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError

from vggtune.serve import loop
from vggtune.serve.loop import IdleWaitBatchedLoop


class CountingQueue(queue.Queue):
    """A queue that records every ``get``: (block, timeout)."""

    def __init__(self):
        super().__init__()
        self.gets: list[tuple[bool, float | None]] = []

    def get(self, block=True, timeout=None):
        self.gets.append((block, timeout))
        return super().get(block, timeout)


def _api(max_batch_size=4, batch_timeout=0.02, request_timeout=30.0):
    return SimpleNamespace(
        max_batch_size=max_batch_size, batch_timeout=batch_timeout, request_timeout=request_timeout, stream=False
    )


def _request(uid: str, age_s: float = 0.0):
    return (0, uid, time.monotonic() - age_s, f"payload {uid}")


class Transport:
    def __init__(self):
        self.sent = []

    def send(self, item, consumer_id):
        self.sent.append((consumer_id, item))


def test_an_idle_worker_waits_in_one_blocking_get_instead_of_polling(monkeypatch):
    monkeypatch.setattr(loop, "IDLE_WAIT_S", 0.2)
    q, worker = CountingQueue(), IdleWaitBatchedLoop()
    start = time.monotonic()
    assert worker.get_batch_requests(_api(), q, Transport()) == ([], [])
    assert time.monotonic() - start >= 0.2
    assert q.gets == [(True, 0.2)]  # one wait of IDLE_WAIT_S (LitServe's loop asks every millisecond)


def test_a_request_that_arrives_during_the_wait_is_batched_with_those_after_it_first():
    q, worker = CountingQueue(), IdleWaitBatchedLoop()

    def arrive():
        for uid in ("a", "b", "c"):
            q.put(_request(uid))

    threading.Timer(0.05, arrive).start()
    start = time.monotonic()
    batch, timed_out = worker.get_batch_requests(_api(batch_timeout=0.3), q, Transport())
    assert time.monotonic() - start < loop.IDLE_WAIT_S  # it did not sit out the whole wait
    assert [uid for _, uid, _ in batch] == ["a", "b", "c"] and timed_out == []
    assert batch[0] == (0, "a", "payload a")
    assert q.gets[0] == (True, loop.IDLE_WAIT_S)


class BurstQueue(CountingQueue):
    """A queue in which ``burst`` arrives just as the blocking wait hands over the first request."""

    def __init__(self, burst):
        super().__init__()
        self.burst = burst

    def get(self, block=True, timeout=None):
        item = super().get(block, timeout)
        if timeout == loop.IDLE_WAIT_S:
            for request in self.burst:
                self.put(request)
        return item


def test_the_awaited_request_stays_the_oldest_when_a_burst_arrives_as_it_is_taken():
    q, worker = BurstQueue([_request("b"), _request("c")]), IdleWaitBatchedLoop()
    q.put(_request("a"))
    batch, _ = worker.get_batch_requests(_api(max_batch_size=2), _Empty(q), Transport())
    assert [uid for _, uid, _ in batch] == ["a", "b"]  # not [b, c], leaving the oldest for the next batch
    assert [r[1] for r in list(q.queue)] == ["c"]


def test_an_awaited_request_that_collation_did_not_take_goes_back_into_the_queue():
    q, worker = CountingQueue(), IdleWaitBatchedLoop()
    q.put(_request("a"))
    # batch_timeout below 0: LitServe's collation finds its time up before it looks at the queue.
    assert worker.get_batch_requests(_api(batch_timeout=-1), _Empty(q), Transport()) == ([], [])
    assert [r[1] for r in list(q.queue)] == ["a"]


class _Empty:
    """``q`` as it looks to the loop's first check: empty (the request comes during the wait)."""

    def __init__(self, q):
        self.q = q

    def empty(self):
        return True

    def __getattr__(self, name):
        return getattr(self.q, name)


def test_waiting_requests_are_collated_at_once_oldest_first_up_to_the_batch_size():
    q, worker = CountingQueue(), IdleWaitBatchedLoop()
    for uid in "abcdef":
        q.put(_request(uid))
    batch, _ = worker.get_batch_requests(_api(max_batch_size=4), q, Transport())
    assert [uid for _, uid, _ in batch] == ["a", "b", "c", "d"]
    assert (True, loop.IDLE_WAIT_S) not in q.gets  # no blocking wait when requests are there
    assert [r[1] for r in list(q.queue)] == ["e", "f"]
    batch, _ = worker.get_batch_requests(_api(max_batch_size=4, batch_timeout=0), q, Transport())
    assert [uid for _, uid, _ in batch] == ["e", "f"]


def test_the_awaited_request_goes_through_litserves_timeout_and_the_stop_sentinel_still_stops_the_loop():
    q, worker = CountingQueue(), IdleWaitBatchedLoop()
    worker._restart_workers = True  # LitServe then tells the server each request has started
    transport = Transport()
    threading.Timer(0.02, lambda: q.put(_request("old", age_s=60))).start()
    batch, timed_out = worker.get_batch_requests(_api(batch_timeout=0.05, request_timeout=30), q, transport)
    assert batch == [] and timed_out == [(0, "old")]
    assert [item[0] for _, item in transport.sent] == ["old"]  # marked started, as LitServe marks every request

    threading.Timer(0.02, lambda: q.put(_SENTINEL_VALUE)).start()
    with pytest.raises(_StopLoopError):
        worker.get_batch_requests(_api(), q, Transport())
