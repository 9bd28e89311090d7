"""The dialects' route table and its collision check (read by the router and by config validation)."""

from __future__ import annotations

from proxy.config import DEFAULT_DIALECTS
from proxy.dialects import ROUTES as REEXPORTED
from proxy.dialects.routes import ROUTES, dialect_routes, mount_collisions


def test_every_default_dialect_has_routes_and_the_package_reexports_the_table():
    assert set(ROUTES) == set(DEFAULT_DIALECTS)
    assert REEXPORTED is ROUTES


def test_routes_are_mounted_under_the_prefix():
    assert ("GET", "/x/api/v1/token") in dialect_routes("workflow", "/x/")


def test_the_default_mounts_do_not_collide():
    assert mount_collisions({n: m.prefix for n, m in DEFAULT_DIALECTS.items()}) == []


def test_a_collision_names_the_key_to_change_and_both_routes():
    assert mount_collisions({"workflow": "/", "langflow": "/"}) == [
        "dialects.workflow.prefix: mounts collide: langflow POST /api/v1/run/{flowIdOrName} and "
        "workflow POST /api/v1/run/{workflowId} (give one of them another prefix)"
    ]
    assert mount_collisions({"langflow": "/", "profitbase": "/"}) == []
