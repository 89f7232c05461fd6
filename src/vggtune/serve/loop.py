"""LitServe's batched loop, except that an idle model worker waits for the next request instead of polling.

LitServe 0.2.19's ``collate_requests`` asks the request queue (a ``multiprocessing.Manager`` queue:
each ask is a round trip to the manager process) for a request every millisecond, idle or not, and
the batched loop calls it again as soon as it returns empty. On a 2-core machine the idle polling of
the worker and the manager takes CPU that the model then lacks (bench/serve_load.py measures it).
Here, when the queue is empty, the first request of a batch is awaited with one blocking ``get`` (a
second at a time, so that the stop sentinel is still seen); LitServe's own collation then gathers
the rest of the batch, given that request first and the queue after it (:class:`_FirstThen`). When
requests are waiting, collation starts at once.
"""

from __future__ import annotations

from litserve.loops.simple_loops import BatchedLoop

IDLE_WAIT_S = 1.0


class IdleWaitBatchedLoop(BatchedLoop):
    """:class:`litserve.loops.simple_loops.BatchedLoop` with a blocking wait for a batch's first request."""

    def get_batch_requests(self, lit_api, request_queue, transport):
        if not request_queue.empty():
            return super().get_batch_requests(lit_api, request_queue, transport)
        first = self.get_request(request_queue, timeout=IDLE_WAIT_S)
        if first is None:
            return [], []
        # LitServe's collation marks it started, checks its timeout and batches it as it does every request. It
        # is not put back into the queue: requests that arrived while it was being taken would then go before it
        # (a burst after an idle spell), and with a full batch the oldest request would wait for the next one.
        pending = _FirstThen(first, request_queue)
        batch = super().get_batch_requests(lit_api, pending, transport)
        pending.put_back_unread()  # a collation that took nothing (its time was up before it looked)
        return batch


class _FirstThen:
    """A request queue's ``get`` and ``get_nowait`` that give ``first``, then what the queue holds."""

    def __init__(self, first, request_queue):
        self._first, self._queue = first, request_queue

    def get(self, block: bool = True, timeout: float | None = None):
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return self._queue.get(block, timeout)

    def get_nowait(self):
        return self.get(block=False)

    def put_back_unread(self) -> None:
        """``first`` into the queue if no ``get`` has taken it."""
        if self._first is not None:
            self._queue.put(self._first)
            self._first = None
