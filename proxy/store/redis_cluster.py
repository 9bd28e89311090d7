"""Redis Cluster store: :class:`~proxy.store.redis.RedisStore`'s scripts and key layout on redis-py's
cluster client.

Every script's keys already share one hash tag (``{a:<account>}``, ``{t:<hash>}``, ...), so each
runs whole on the one master that owns the slot; the client learns the slot map from any seed node,
follows MOVED/ASK redirections and refreshes the map after a failover. While a slot's master is
unreachable, operations on it raise :class:`~proxy.errors.StoreUnavailable` (503, fail closed)
after one short retry, as the single-node store does.

URL: ``redis+cluster://[user:password@]host:port[,host:port...][?prefix=fg]`` (``rediss+cluster``
for TLS); any seed nodes will do, the rest are discovered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterError, RedisClusterException, RedisError, ResponseError

from ..errors import StoreUnavailable
from .base import Progress
from .redis import POOL_SIZE, POOL_WAIT_S, RedisStore, log
from .urls import parse_seeds


class RedisClusterStore(RedisStore):
    def __init__(self, url: str, prefix: str = "fg") -> None:
        seeds, options = parse_seeds(url)
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in seeds],
            max_connections=POOL_SIZE, socket_timeout=0.5, socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 1), health_check_interval=30, **options,
        )
        super().__init__(url, prefix=prefix, client=client)
        self._in_flight = asyncio.Semaphore(POOL_SIZE)  # never more than a node's pool holds
        self._init_lock = asyncio.Lock()
        self._inits_tried = 0  # callers waiting for one slot-map read share its failure

    async def _do(self, coro):
        # The cluster client's per-node pools refuse (MaxConnectionsError) rather than wait when
        # full; a burst of thousands of runs waits here instead, as RedisStore's blocking pool does.
        try:
            await asyncio.wait_for(self._in_flight.acquire(), POOL_WAIT_S)
        except TimeoutError:
            coro.close()
            raise StoreUnavailable("redis cluster: no free connection") from None
        try:
            if getattr(self._r, "_initialize", True):
                try:
                    await self._initialize()
                except BaseException:
                    coro.close()  # never started
                    raise
            return await coro
        except (ClusterError, RedisClusterException) as exc:  # CLUSTERDOWN, no slot map, no node answered
            raise StoreUnavailable(f"redis cluster: {type(exc).__name__}") from None
        except ResponseError as exc:  # a script or command bug, not an outage: say so loudly
            log.error("redis_response_error", error=str(exc))
            raise StoreUnavailable("redis: ResponseError") from None
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from None
        finally:
            self._in_flight.release()

    async def _initialize(self) -> None:
        """Read the slot map once for everyone waiting. (redis-py's client, asked by many commands at
        once before it has a map, or after a node failed, sends some on connections that are not
        open yet: AttributeError on a None writer. One reader at a time avoids it.) Callers that
        waited for a read that failed fail with it: each trying in turn, with seeds that never
        answer, would make the last wait for all the others' timeouts."""
        tried = self._inits_tried
        async with self._init_lock:
            if getattr(self._r, "_initialize", True):
                if self._inits_tried != tried:  # one failed while this call waited: fail as it did
                    raise StoreUnavailable("redis cluster: no slot map (no seed node answered)")
                self._inits_tried += 1
                await self._r.initialize()

    async def start(self) -> None:
        return None  # connects lazily (the slot map is read on first use); readyz pings

    async def close(self) -> None:
        await self._r.aclose()

    async def ping(self) -> None:
        """Every master answers (an account on a master that does not would get 503s)."""
        await self._do(self._r.ping(target_nodes=RedisCluster.PRIMARIES))

    async def checkpoint(self, progress: Sequence[Progress]) -> None:
        # one script per hold (a batch's holds live under different accounts' hash tags, on
        # different masters), sent at once; every script answered (or failed) before this returns,
        # so the next batch never overtakes one still on its way (a re-sent script, one waiting
        # for a connection)
        done = await asyncio.gather(*(self._do(self._checkpoint(**self._checkpoint_call(p))) for p in progress),
                                    return_exceptions=True)
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
