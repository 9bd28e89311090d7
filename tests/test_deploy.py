"""The deploy kit, read as Docker would read it (no Docker engine runs here): every mounted path
exists, every mounted gateway config passes check-config with the environment compose gives it, the
store is Redis (persisted) or an absolute SQLite path, backends are reached by service name, every
service but Grafana has a healthcheck and all restart; the image is multi-stage without dev extras
or a compiler; the shipped keys are not guessable; LICENSE is there; the README stands alone."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from proxy.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _binds(service: dict) -> list[tuple[str, str]]:
    out = []
    for volume in service.get("volumes", []):
        host, _, rest = volume.partition(":")
        if host.startswith((".", "/")):
            out.append((host, rest.split(":")[0]))
    return out


def _compose_env(service: dict) -> dict[str, str]:
    """The container's environment as compose sets it with nothing exported (``${X:-}`` -> "")."""
    env = {}
    for name, value in (service.get("environment") or {}).items():
        value = str(value)
        env[name] = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)
    return env


def _mounted_configs() -> list[tuple[str, Path, dict]]:
    found = []
    for name, service in SERVICES.items():
        for host, target in _binds(service):
            if target.startswith("/etc/flowgate/") and target.endswith((".yaml", ".yml")):
                found.append((name, ROOT / host, _compose_env(service)))
    return found


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_mounted_path_exists(service):
    for host, _target in _binds(SERVICES[service]):
        assert (ROOT / host).exists(), f"{service} mounts {host}, which is not in the repository"


def test_the_mounted_gateway_config_passes_check_config(monkeypatch):
    configs = _mounted_configs()
    assert configs, "the compose file mounts no gateway config"
    for service, path, env in configs:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        config: Config = load_config(path)  # raises ConfigError with every problem
        assert config.server.host == "0.0.0.0", f"{path}: a container must listen on every interface"
        assert config.store.startswith("redis://redis:") or config.store.startswith("sqlite:////"), config.store
        for backend_name, backend in config.backends.items():
            host = urlparse(backend.url).hostname
            assert host not in ("127.0.0.1", "localhost", "::1"), f"{backend_name} points at the container itself"
            assert host in SERVICES, f"backend {backend_name}: {host} is not a compose service"
        assert SERVICES[service]["environment"]["FLOWGATE_CONFIG"] == "/etc/flowgate/flowgate.yaml"


def test_redis_persists_on_a_volume_with_aof():
    redis = SERVICES["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    volumes = [v for v in redis.get("volumes", []) if v.endswith(":/data")]
    assert volumes and volumes[0].split(":")[0] in COMPOSE.get("volumes", {})


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_healthchecks_and_restart_policies(service):
    spec = SERVICES[service]
    assert spec.get("restart") in ("unless-stopped", "always", "on-failure")
    if service != "grafana":
        assert "healthcheck" in spec and spec["healthcheck"]["test"][0] == "CMD", service
    if spec.get("image") == "flowgate:local" or "build" in spec:
        assert spec["healthcheck"]["test"][1:3] == ["flowgate", "healthcheck"]  # the image has no curl


def test_the_gateway_waits_for_healthy_dependencies():
    deps = SERVICES["flowgate"]["depends_on"]
    assert deps["redis"]["condition"] == deps["demo-backend"]["condition"] == "service_healthy"


def test_prometheus_scrapes_the_gateway_service():
    prom = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "flowgate:8080" in targets


def test_the_image_is_multi_stage_without_dev_extras_or_a_compiler():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) >= 2
    final = stages[-1]
    assert "[dev]" not in text and "gcc" not in final and "make" not in final and "pip install" not in final
    assert "COPY --from=build" in final and "USER flowgate" in final
    assert re.search(r'HEALTHCHECK .*"flowgate", "healthcheck"', final)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignore and "tests" in ignore


COMMON = ["password", "secret", "admin", "test", "changeme", "flowgate", "demo", "123456", "letmein", "key",
          "acme", "example", "fg_test", "qwerty", ""]


@pytest.mark.parametrize("path", ["config/flowgate.example.yaml", "deploy/flowgate.yaml"])
def test_shipped_keys_are_not_guessable(path, monkeypatch):
    for var in ("FLOWGATE_ACME_KEY_SHA256", "FLOWGATE_ADMIN_KEY_SHA256", "FLOWGATE_DEMO_KEY_SHA256"):
        monkeypatch.delenv(var, raising=False)
    config = load_config(ROOT / path)
    weak = {hashlib.sha256(w.encode()).hexdigest() for w in COMMON + [w.upper() for w in COMMON]}
    for key in config.keys:
        assert key.sha256 not in weak, f"{path}: {key.id} has a guessable secret"
    raw = (ROOT / path).read_text()
    assert all("${" in line for line in raw.splitlines() if re.match(r"\s*sha256:", line)), \
        f"{path}: key digests come from the environment"


def test_the_default_store_path_is_absolute():
    assert Config().store.startswith("sqlite:////")


def test_license_and_a_readme_that_stands_alone():
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme and "DESIGN.md" not in readme
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        if not link.startswith(("http://", "https://", "mailto:")):
            assert (ROOT / link).exists(), f"README links to {link}, which is not in the repository"
