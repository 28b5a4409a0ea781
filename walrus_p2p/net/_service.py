"""Run a py-libp2p ``Service`` so that one bad remote input cannot stop it.

``TrioManager`` (libp2p/tools/anyio_service/trio_manager.py) treats an exception in *any* task
of a service as fatal: it logs it, records it and cancels the whole service, and
``background_trio_service`` then re-raises it into the caller's nursery. Pubsub spawns a task
per received message (``Pubsub.continuously_read_stream`` -> ``manager.run_task(push_msg)``),
and ``push_msg`` parses attacker-controlled fields (``signature_validator`` decodes
``msg.key`` with protobuf and does not catch ``DecodeError``), so one crafted message from
any peer stopped gossip on the receiving peer and crashed its host (measured in
tests/node/test_gossip.py before this guard).

:func:`run_guarded_service` is ``background_trio_service`` with one change: the manager's
``run_task`` wraps every non-daemon task so an ``Exception`` is logged and dropped. Daemon tasks
(the service's own loops) are left alone: if one of those fails, the service really is broken.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.tools.anyio_service import TrioManager

logger = logging.getLogger(__name__)


def _guard_tasks(manager: Any, service_name: str) -> None:
    original = manager.run_task

    def run_task(
        async_fn: Any, *args: Any, daemon: bool = False, name: str | None = None, **extra: Any
    ) -> Any:
        if daemon:
            return original(async_fn, *args, daemon=daemon, name=name, **extra)
        task_name = name or getattr(async_fn, "__name__", "task")

        async def guarded(*task_args: Any) -> None:
            try:
                await async_fn(*task_args)
            except Exception as error:
                logger.warning(
                    "libp2p task failed and was dropped service=%s task=%s error=%r",
                    service_name,
                    task_name,
                    error,
                )

        return original(guarded, *args, daemon=daemon, name=task_name, **extra)

    manager.run_task = run_task


@asynccontextmanager
async def run_guarded_service(service: Any, service_name: str) -> AsyncIterator[Any]:
    """Run ``service`` in the background for the duration of the context."""
    async with trio.open_nursery() as nursery:
        manager = TrioManager(service)
        service._manager = manager
        _guard_tasks(manager, service_name)
        nursery.start_soon(manager.run)
        await manager.wait_started()
        try:
            yield manager
        finally:
            await manager.stop()
