"""LitServe's batched loop, except that an idle model worker waits for the next request instead of polling.

LitServe 0.2.19's ``collate_requests`` asks the request queue (a ``multiprocessing.Manager`` queue:
each ask is a round trip to the manager process) for a request every millisecond, idle or not, and
the batched loop calls it again as soon as it returns empty. On a 2-core machine the idle polling of
the worker and the manager takes CPU that the model then lacks (bench/serve_load.py measures it).
Here, when the queue is empty, the first request of a batch is awaited with one blocking ``get`` (a
second at a time, so that the stop sentinel is still seen); LitServe's own collation then gathers
the rest of the batch. When requests are waiting, collation starts at once: the request put back
would go behind them, and under load the oldest request would keep moving to the end of the queue.
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
        # Back into the queue (the only request there, or nearly: the queue was empty a moment ago), so that
        # LitServe's collation marks it started, checks its timeout and batches it as it does every request.
        request_queue.put(first)
        return super().get_batch_requests(lit_api, request_queue, transport)
