"""The config's model: every option declared once, typed, defaulted and documented.

Adding an option: add a typed, defaulted field with a ``Field(description=...)`` to the right
model, document it in ``config/flowgate.example.yaml``, and read it from the model (never from the
raw dict). Checks between sections live in :mod:`.validation`, reading the file in :mod:`.loading`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from ..env import ENV_ACCEPTED, Env
from ..protocols import BACKEND_PROTOCOLS
from ..store.urls import check_store_url
from .server import ServerConfig
from .server import Strict as _Model

MAX_DURATION_CAP_S = 300.0


class LimitsConfig(_Model):
    max_duration_s: float = Field(
        MAX_DURATION_CAP_S, gt=0, le=MAX_DURATION_CAP_S, description="Hard cap on every run (seconds, <= 300)."
    )
    token_ttl_s: int = Field(60, ge=1, description="Default lifetime of a stream token.")
    token_ttl_max_s: int = Field(300, ge=1, description="Longest lifetime a client may ask a stream token for.")
    credit_quantum_tokens: int = Field(
        1000, ge=1, description="The largest first hold and growth step of a run's credit hold, in tokens' worth; "
        "under on_credits_exhausted: allow also the most one run may overspend the balance by."
    )
    credit_hold_floor_tokens: int = Field(
        16, ge=1, description="The smallest first hold, in tokens' worth (at most one quantum); a run is refused "
        "402 only when the owner's free balance cannot pay this much."
    )
    credit_hold_percentile: float = Field(
        90.0, gt=0, le=100, description="A run's first hold is this percentile of the output tokens of its flow's "
        "recent completed runs (between the floor and one quantum; one quantum while the flow has no history)."
    )
    credit_hold_window_runs: int = Field(
        50, ge=1, le=100, description="How many of a flow's most recent completed runs the first-hold estimate reads."
    )
    credit_hold_refresh_s: float = Field(
        1.0, gt=0, le=60, description="How long a replica reuses a flow's estimate before reading the store's again "
        "(its own settlements update it at once)."
    )
    hold_grace_s: float = Field(
        30.0, ge=1, le=30, description="A hold expires this long after its run's cap; then any replica settles it."
    )

    @model_validator(mode="after")
    def _ttl_order(self) -> LimitsConfig:
        if self.token_ttl_s > self.token_ttl_max_s:
            raise ValueError("token_ttl_s must not exceed token_ttl_max_s")
        return self


class CorsConfig(_Model):
    allow_origins: list[str] = Field(["*"], description="Origins allowed on the browser-facing stream route.")
    max_age_s: int = Field(600, ge=0, description="How long browsers may cache a preflight answer.")


class DialectMount(_Model):
    prefix: str = Field("/", description="Path prefix the dialect's routes are mounted under.")

    @field_validator("prefix")
    @classmethod
    def _normalize(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("prefix must start with '/'")
        if "{" in v or "}" in v or "?" in v or "#" in v:
            raise ValueError("prefix must be a plain path")
        return v if v.endswith("/") else v + "/"


DialectName = Literal["profitbase", "workflow", "langflow"]

DEFAULT_DIALECTS: dict[str, DialectMount] = {
    "profitbase": DialectMount(prefix="/"),
    "workflow": DialectMount(prefix="/"),
    "langflow": DialectMount(prefix="/langflow/"),
}


class BackendConfig(_Model):
    url: str = Field(description="Base URL of the backend (http or https); target paths are appended.")
    protocol: Literal["text", "langflow", "ndjson", "json-array", "sse", "ai-sdk"] = Field(
        "text", description="How the backend streams: " + ", ".join(BACKEND_PROTOCOLS) + "."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers sent to the backend on every request (e.g. its own API key)."
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Time to open a connection (TCP and TLS) before a 504.")
    head_timeout_s: float = Field(
        60.0, gt=0, description="Time from the request sent to the response's status line and headers before a 504 "
        "(a non-streaming backend sends its head when its run is done: raise it for slow flows)."
    )
    read_timeout_s: float = Field(
        60.0, gt=0, description="Longest silence of the backend while the gateway reads its body; beyond it the "
        "stream breaks off (a client that is not reading pauses this clock)."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("url must be an http:// or https:// URL")
        return v.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"{name!r} is not a valid header name")
            if "\r" in value or "\n" in value:
                raise ValueError(f"the value of {name!r} holds a line break")
        return v


class AccountConfig(_Model):
    initial_credits: int = Field(0, ge=0, description="Balance seeded once in the store; a restart never resets it.")


class TargetConfig(_Model):
    backend: str = Field(description="Name of a backend in `backends`.")
    path: str = Field("/", description="Path (and query) appended to the backend URL.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return v if v.startswith("/") else "/" + v


class FlowConfig(_Model):
    id: str = Field(description="Public id used in every URL.", pattern=r"^[A-Za-z0-9_.\-]{1,128}$")
    name: str | None = Field(None, description="Optional alias; the langflow dialect accepts id or name.")
    owner: str = Field(description="Account that owns the flow and pays for its runs.")
    tenant: str | None = Field(None, description="Profitbase tenant id the flow is addressed under.")
    workspace: str | None = Field(None, description="Profitbase workspace id the flow is addressed under.")
    published: bool = Field(True, description="Unpublished flows answer 404 everywhere.")
    max_duration_s: float | None = Field(
        None, gt=0, description="Per-flow run cap; defaults to limits.max_duration_s, never above it."
    )
    credits_per_1k_tokens: int = Field(1000, ge=0, description="Price in credits per 1,000 generated tokens.")
    on_credits_exhausted: Literal["cut", "allow"] = Field(
        "cut", description="cut: end the stream when credits run out; allow: finish, balance may go negative."
    )
    targets: dict[Env, TargetConfig] = Field(
        description="Backend target per environment; an env without a target answers 404."
    )

    @field_validator("targets", mode="before")
    @classmethod
    def _env_names(cls, v: Any) -> Any:
        if isinstance(v, dict):
            out = {}
            for k, t in v.items():
                env = Env.parse(str(k))
                if env is None or str(k) == "":
                    raise ValueError(f"unknown environment {k!r} (use {ENV_ACCEPTED})")
                out[env] = t
            return out
        return v


class KeyRateLimit(_Model):
    requests_per_minute: int | None = Field(None, ge=1, description="Token mints + runs per minute for this key.")
    concurrent_runs: int | None = Field(None, ge=1, description="Runs of this key open at once.")


class KeyConfig(_Model):
    id: str = Field(description="Shown in logs and metrics; the secret never is.", pattern=r"^[A-Za-z0-9_.\-]{1,128}$")
    sha256: str = Field(description="Hex SHA-256 of the secret (the secret itself is never stored).")
    owner: str = Field(description="Account the key belongs to; it can run only this owner's flows.")
    policies: list[Literal["Execute", "Admin"]] = Field(
        default_factory=lambda: ["Execute"], description="Execute runs flows and mints stream tokens; Admin uses "
        "the admin API (/admin/v1: keys, credits, ledgers of every account)."
    )
    tenant: str | None = Field(None, description="Optional scope: only flows of this tenant.")
    workspace: str | None = Field(None, description="Optional scope: only flows of this workspace.")
    envs: list[Env] | None = Field(None, description="Optional scope: only these environments.")
    rate_limit: KeyRateLimit = Field(default_factory=KeyRateLimit, description="Per-key rate limits.")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("must be 64 hex characters (the SHA-256 of the secret)")
        return v

    @field_validator("envs", mode="before")
    @classmethod
    def _env_list(cls, v: Any) -> Any:
        if isinstance(v, list):
            out = []
            for item in v:
                env = Env.parse(str(item))
                if env is None or str(item) == "":
                    raise ValueError(f"unknown environment {item!r} (use {ENV_ACCEPTED})")
                out.append(env)
            return out
        return v

    def covers(self, flow: FlowConfig, env: Env) -> bool:
        """True when this key may run ``flow`` in ``env`` (owner, tenant, workspace, envs)."""
        return (
            "Execute" in self.policies
            and self.owner == flow.owner
            and (self.tenant is None or self.tenant == flow.tenant)
            and (self.workspace is None or self.workspace == flow.workspace)
            and (self.envs is None or env in self.envs)
        )


class Config(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig)
    store: str = Field(
        "sqlite:////var/lib/flowgate/flowgate.db",
        description="State store URL: sqlite:////absolute/path.db (one machine; sqlite:///relative.db is relative "
        "to the working directory), redis://host:port/db, redis+cluster://host:port[,host:port...] (many "
        "replicas), postgresql://user:password@host:port/db (many replicas, a durable ledger in SQL; ?schema=name, "
        "default flowgate), memory:// (tests)",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    dialects: dict[DialectName, DialectMount] = Field(
        default_factory=lambda: dict(DEFAULT_DIALECTS), description="Mounted dialects and their prefixes."
    )
    backends: dict[str, BackendConfig] = Field(default_factory=dict)
    accounts: dict[str, AccountConfig] = Field(default_factory=dict)
    flows: list[FlowConfig] = Field(default_factory=list)
    keys: list[KeyConfig] = Field(default_factory=list)

    _flows_by_id: dict[str, FlowConfig] = PrivateAttr(default_factory=dict)
    _flows_by_name: dict[str, FlowConfig] = PrivateAttr(default_factory=dict)
    _keys_by_hash: dict[str, KeyConfig] = PrivateAttr(default_factory=dict)
    _keys_by_id: dict[str, KeyConfig] = PrivateAttr(default_factory=dict)

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str) -> str:
        check_store_url(v)  # ValueError: what is wrong with it
        return v

    @model_validator(mode="after")
    def _index(self) -> Config:
        """Build the lookup indexes (references were checked on the raw mapping: see cross_ref_problems)."""
        for flow in self.flows:
            self._flows_by_id.setdefault(flow.id, flow)
            if flow.name is not None:
                self._flows_by_name.setdefault(flow.name, flow)
        for key in self.keys:
            self._keys_by_hash.setdefault(key.sha256, key)
            self._keys_by_id.setdefault(key.id, key)
        return self

    # --- lookups used on the request path -------------------------------------------------------
    # (through ``__pydantic_private__``: a private attribute read by name goes through pydantic's
    # ``__getattr__``, ~1 µs a time on a path that runs per request)

    def flow(self, ref: str, *, by_name: bool = False) -> FlowConfig | None:
        """The flow with id ``ref`` (or name, when ``by_name``), published or not."""
        private = self.__pydantic_private__
        flow = private["_flows_by_id"].get(ref)
        if flow is None and by_name:
            flow = private["_flows_by_name"].get(ref)
        return flow

    def worker_count(self) -> int:
        """The worker processes to start: ``server.worker_count()``, but one for memory:// (its state
        lives in one process; ``auto`` must not split it)."""
        return 1 if self.store.startswith("memory://") else self.server.worker_count()

    def key_for_hash(self, sha256_hex: str) -> KeyConfig | None:
        return self.__pydantic_private__["_keys_by_hash"].get(sha256_hex)

    def key_by_id(self, key_id: str) -> KeyConfig | None:
        return self.__pydantic_private__["_keys_by_id"].get(key_id)

    def run_cap_s(self, flow: FlowConfig) -> float:
        return min(flow.max_duration_s or self.limits.max_duration_s, self.limits.max_duration_s)
