"""The configuration: ``load_config(path)`` reads YAML, substitutes ``${VAR}`` / ``${VAR:-default}``
in string values, validates everything and builds the lookup indexes the request path uses. Nothing
is validated per request: a config that loads is a config the gateway can serve.

- :mod:`.model`: every option, declared once, typed, defaulted and documented;
- :mod:`.validation`: references between sections and ``${ENV}`` interpolation, on the raw mapping;
- :mod:`.loading`: YAML in, every problem out at once as a line naming its key;
- :mod:`.tls`: a listener's ``tls`` option and the checks its files pass.
"""

from __future__ import annotations

from ..env import ENV_ACCEPTED, Env
from .loading import ConfigError, load_config, parse_config
from .model import (
    DEFAULT_DIALECTS,
    MAX_DURATION_CAP_S,
    AccountConfig,
    BackendConfig,
    Config,
    CorsConfig,
    DialectMount,
    DialectName,
    FlowConfig,
    KeyConfig,
    KeyRateLimit,
    LimitsConfig,
    ServerConfig,
    TargetConfig,
)
from .tls import TlsConfig
from .validation import cross_ref_problems

__all__ = [
    "DEFAULT_DIALECTS",
    "ENV_ACCEPTED",
    "MAX_DURATION_CAP_S",
    "AccountConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "CorsConfig",
    "DialectMount",
    "DialectName",
    "Env",
    "FlowConfig",
    "KeyConfig",
    "KeyRateLimit",
    "LimitsConfig",
    "ServerConfig",
    "TargetConfig",
    "TlsConfig",
    "cross_ref_problems",
    "load_config",
    "parse_config",
]
