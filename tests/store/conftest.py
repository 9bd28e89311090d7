"""Store fixtures: the same contract suite runs over every store, each on a real server."""

from __future__ import annotations

import pytest

from proxy.store import open_store
from tests.backends import ALL
from tests.backends import store_url as backend_url


@pytest.fixture(params=ALL)
async def store(request, tmp_path):
    with backend_url(request.param, tmp_path) as url:
        s = open_store(url)
        await s.start()
        try:
            yield s
        finally:
            await s.close()
