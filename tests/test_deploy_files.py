"""The docker/ deployment files, checked without a Docker engine: the compose files parse, declare what the
multi-site demo needs (one SuperLink port, persisted state, per-site data volumes and networks, TLS secrets),
and their commands are exactly the argument lists of docker/flower_commands.py that `make deploy-test` runs.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SITES = (1, 2, 3)
TASKS = {1: "matrixshapes", 2: "qa_wikidata", 3: "word_sorting"}
CERTS = "/app/certificates"


def _load(name: str) -> Any:
    if str(DOCKER) not in sys.path:
        sys.path.insert(0, str(DOCKER))  # deploy_test imports flower_commands as a top-level module
    spec = importlib.util.spec_from_file_location(name, DOCKER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fc = _load("flower_commands")
deploy_test = _load("deploy_test")


def compose(*names: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose files merged the way `docker compose -f a -f b` does for the keys these files use, with
    `${VAR:-default}` interpolated from `env` (the defaults when it is not given)."""
    merged: dict[str, Any] = {}
    for name in names:
        with open(DOCKER / name) as f:
            merged = _merge(merged, _interpolate(yaml.safe_load(f), env or {}))
    return merged


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), value)
    return value


def env_file(name: str) -> dict[str, str]:
    lines = (DOCKER / name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def _merge(base: Any, over: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v, k) if k in base else v
        return out
    if isinstance(base, list) and isinstance(over, list) and key not in ("command", "entrypoint"):
        return base + [v for v in over if v not in base]
    return over


def pyproject() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def pin(package: str) -> str:
    for dep in pyproject()["project"]["dependencies"]:
        name, _, version = dep.partition("==")
        if name.split("[")[0] == package:
            return version
    raise KeyError(package)


# ----------------------------------------------------------------------------------- expected commands

def superlink_args(tls: bool) -> list[str]:
    certs = fc.ServerTls(f"{CERTS}/ca.crt", f"{CERTS}/server.pem", f"{CERTS}/server.key") if tls else None
    return fc.superlink(host="0.0.0.0", port=fc.SUPERLINK_PORT, database="/app/state/state.db",
                        isolation="process", tls=certs)


def supernode_args(site: int, tls: bool) -> list[str]:
    return fc.supernode(superlink=f"superlink:{fc.SUPERLINK_PORT}", host="0.0.0.0", port=fc.SUPERNODE_RUNTIME_PORT,
                        isolation="process", node_config=fc.node_config(site - 1, task=TASKS[site]),
                        root_certificates=f"{CERTS}/ca.crt" if tls else None,
                        auth_private_key=f"{CERTS}/supernode.key" if tls else None)


# ------------------------------------------------------------------------------------------------ tests

def test_services_images_ports_and_volumes() -> None:
    c = compose("compose.yaml")
    services = c["services"]
    expected = {"superlink-state-init", "superlink", "superexec-serverapp"}
    expected |= {f"{kind}-{i}" for i in SITES for kind in ("supernode", "superexec-clientapp")}
    assert set(services) == expected

    flwr_version = pin("flwr")
    link = services["superlink"]
    assert link["image"] == f"flwr/superlink:{flwr_version}"
    assert services["superlink-state-init"]["image"] == link["image"]
    # One port for Fleet, Control and Runtime APIs (Flower >= 1.4x), published to the host's flwr CLI.
    assert link["ports"] == [f"127.0.0.1:{fc.SUPERLINK_PORT}:{fc.SUPERLINK_PORT}"]
    assert "superlink-state:/app/state" in link["volumes"]
    assert link["depends_on"]["superlink-state-init"]["condition"] == "service_completed_successfully"
    assert services["superlink-state-init"]["volumes"] == ["superlink-state:/app/state"]
    assert "server-runs:/app/runs" in services["superexec-serverapp"]["volumes"]

    for i in SITES:
        node, runner = services[f"supernode-{i}"], services[f"superexec-clientapp-{i}"]
        assert node["image"] == f"flwr/supernode:{flwr_version}"
        assert "ports" not in node and "ports" not in runner  # only the SuperLink is reachable from outside
        assert runner["volumes"] == [f"site-{i}-data:/app/data"]  # the site's own data, nobody else's
        assert runner["networks"] == [f"site-{i}"] and set(node["networks"]) == {"federation", f"site-{i}"}
        assert runner["depends_on"] == [f"supernode-{i}"]
        assert node["restart"] == "unless-stopped"  # a crashed SuperNode comes back and rejoins
    for name, service in services.items():
        if "build" in service:
            assert service["image"] == "amole:cpu" and service["build"]["dockerfile"] == "docker/Dockerfile"
            assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name

    # Everything referenced is declared.
    used_volumes = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert used_volumes == set(c["volumes"])
    used_networks = {n for s in services.values() for n in s.get("networks", [])}
    assert used_networks == set(c["networks"])


# Keys of the Compose Specification (compose-spec.json) that these files may use; a typo fails here.
SERVICE_KEYS = {"image", "build", "command", "entrypoint", "user", "volumes", "ports", "networks", "depends_on",
                "restart", "secrets", "deploy", "environment"}
INTERPOLATION = re.compile(r"\$\{(\w+)(:-[^}]*)?\}")
TOP_KEYS = {"name", "services", "volumes", "networks", "secrets"}


@pytest.mark.parametrize("name", ["compose.yaml", "compose.tls.yaml", "compose.cuda.yaml"])
def test_only_compose_spec_keys(name: str) -> None:
    with open(DOCKER / name) as f:
        data = yaml.safe_load(f)
    assert {k for k in data if not k.startswith("x-")} <= TOP_KEYS
    for service, spec in data["services"].items():
        assert set(spec) <= SERVICE_KEYS, service
        for key in ("command", "entrypoint"):
            assert all(isinstance(a, str) for a in spec.get(key, [])), (service, key)  # exec form, all strings
        if "build" in spec:
            assert set(spec["build"]) <= {"context", "dockerfile", "args"}
        if "deploy" in spec:  # every service's, not only the last one's
            for device in spec["deploy"]["resources"]["reservations"]["devices"]:
                assert set(device) <= {"driver", "count", "capabilities", "device_ids", "options"}, service
        for secret in spec.get("secrets", []):
            assert set(secret) == {"source", "target"}, service
    # Every variable has a default (`${VAR:-default}`), so the files work with an empty environment.
    for var in INTERPOLATION.finditer((DOCKER / name).read_text()):
        assert var.group(2), var.group(0)
    for secret in data.get("secrets", {}).values():
        assert set(secret) == {"file"}


def test_base_commands_are_the_shared_argument_lists() -> None:
    services = compose("compose.yaml")["services"]
    assert services["superlink"]["command"] == superlink_args(tls=False)
    assert services["superexec-serverapp"]["command"] == fc.superexec(
        runtime_api_address=f"superlink:{fc.SUPERLINK_PORT}", root_certificates=None)
    for i in SITES:
        assert services[f"supernode-{i}"]["command"] == supernode_args(i, tls=False)
        assert services[f"superexec-clientapp-{i}"]["command"] == fc.superexec(
            runtime_api_address=f"supernode-{i}:{fc.SUPERNODE_RUNTIME_PORT}", root_certificates=None)


def test_tls_overlay_commands_and_secrets() -> None:
    c = compose("compose.yaml", "compose.tls.yaml")
    services = c["services"]
    assert services["superlink"]["command"] == superlink_args(tls=True)
    assert "--enable-supernode-auth" in services["superlink"]["command"]
    assert services["superexec-serverapp"]["command"] == fc.superexec(
        runtime_api_address=f"superlink:{fc.SUPERLINK_PORT}", root_certificates=f"{CERTS}/ca.crt")
    keys = set()
    for i in SITES:
        node = services[f"supernode-{i}"]
        assert node["command"] == supernode_args(i, tls=True)
        sources = {s["source"]: s["target"] for s in node["secrets"]}
        assert sources == {"ca-cert": f"{CERTS}/ca.crt", f"supernode-{i}-key": f"{CERTS}/supernode.key"}
        keys.add(c["secrets"][f"supernode-{i}-key"]["file"])
        # The overlay keeps the base service's image, networks and restart policy.
        assert node["image"].startswith("flwr/supernode:") and node["restart"] == "unless-stopped"
    assert len(keys) == len(SITES)  # one private key per site
    link_secrets = {s["source"]: s["target"] for s in services["superlink"]["secrets"]}
    assert link_secrets == {"ca-cert": f"{CERTS}/ca.crt", "superlink-cert": f"{CERTS}/server.pem",
                            "superlink-key": f"{CERTS}/server.key"}
    used = {s["source"] for svc in services.values() for s in svc.get("secrets", [])}
    assert used == set(c["secrets"])
    # Secret files are what docker/certs.sh writes into docker/certs/.
    names = {Path(s["file"]).name for s in c["secrets"].values()}
    assert names == {"ca.crt", "server.pem", "server.key", *(f"supernode-{i}" for i in SITES)}
    assert all(s["file"].startswith("./certs/") for s in c["secrets"].values())


def test_compose_commands_use_the_flags_the_deploy_test_runs(tmp_path: Path) -> None:
    """Same options, in the same order; only addresses, paths and the isolation mode differ."""
    services = compose("compose.yaml", "compose.tls.yaml")["services"]
    certs = tmp_path / "certs"
    process_link = deploy_test.superlink_command(8123, certs, tmp_path, "subprocess")
    assert fc.flags(services["superlink"]["command"]) == fc.flags(process_link)
    assert process_link[process_link.index("--host") + 1] == "127.0.0.1"  # the local test stays on loopback
    for i in SITES:
        process_node = deploy_test.supernode_command(i, 8123, 9100 + i, certs, "subprocess")
        assert fc.flags(services[f"supernode-{i}"]["command"]) == fc.flags(process_node)
        assert process_node[process_node.index("--host") + 1] == "127.0.0.1"
        assert process_node[process_node.index("--auth-supernode-private-key") + 1] == str(certs / f"supernode-{i}")
        assert process_node[process_node.index("--node-config") + 1] == f"client-id={i - 1}"
    assert fc.flags(services["superexec-serverapp"]["command"]) == fc.flags(
        deploy_test.superexec_command(8123, certs / "ca.crt"))
    assert fc.flags(services["superexec-clientapp-1"]["command"]) == fc.flags(deploy_test.superexec_command(9101, None))


def test_no_runtime_dependency_installation() -> None:
    for files in (("compose.yaml",), ("compose.yaml", "compose.tls.yaml")):
        for name, service in compose(*files)["services"].items():
            assert "--allow-runtime-dependency-installation" not in service.get("command", []), name
    link = compose("compose.yaml")["services"]["superlink"]["command"]
    assert "--disable-runtime-dependency-installation" in link
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        text = (DOCKER / dockerfile).read_text()
        assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in text
        assert f"ARG TORCH_VERSION={pin('torch')}" in text  # the pin of pyproject.toml
        assert "pip install -r /tmp/amole/requirements.txt" in text
        assert text.index('"torch==${TORCH_VERSION}"') < text.index("pip install -r")  # torch first
    cpu = (DOCKER / "Dockerfile").read_text()
    assert [line.split()[1] for line in cpu.splitlines() if line.startswith("FROM")] == ["python:3.11-slim"] * 2
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in cpu


def test_cuda_overlay() -> None:
    services = compose("compose.yaml", "compose.tls.yaml", "compose.cuda.yaml")["services"]
    for i in SITES:
        runner = services[f"superexec-clientapp-{i}"]
        assert runner["build"]["dockerfile"] == "docker/Dockerfile.cuda" and runner["image"] == "amole:cuda"
        assert runner["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
        assert runner["command"] == fc.superexec(runtime_api_address=f"supernode-{i}:{fc.SUPERNODE_RUNTIME_PORT}",
                                                 root_certificates=None)
    assert services["superexec-serverapp"]["image"] == "amole:cpu"


def test_node_config_parses_as_flower_does() -> None:
    from flwr.common.config import parse_config_args

    assert parse_config_args([fc.node_config(2, task="object_counting")]) == {"client-id": 2,
                                                                              "task": "object_counting"}
    assert parse_config_args([fc.node_config(0, data_path="/app/data/t.json")]) == {"client-id": 0,
                                                                                   "data-path": "/app/data/t.json"}
    with pytest.raises(ValueError):
        fc.node_config(0, task="a", data_path="b")
    with pytest.raises(ValueError):
        fc.supernode(superlink="x:1", host="h", port=1, isolation="process", node_config="client-id=0",
                     root_certificates=None, auth_private_key="k")  # node auth needs TLS


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_certs_script_writes_what_flower_loads(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    subprocess.run(["bash", str(DOCKER / "certs.sh"), "-o", str(tmp_path), "-n", "2"], check=True,
                   capture_output=True)
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "superlink"} <= set(sans.get_values_for_type(x509.DNSName))
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for i in (1, 2):
        key = load_ssh_private_key((tmp_path / f"supernode-{i}").read_bytes(), None)
        pub = load_ssh_public_key((tmp_path / f"supernode-{i}.pub").read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert key.public_key().public_numbers() == pub.public_numbers()
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "server.pem")],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr


def test_flower_or_project_images_without_editing_the_files() -> None:
    """Flower's images by default; the project image (it contains flwr) through docker/project-images.env."""
    flower = compose("compose.yaml", "compose.tls.yaml")["services"]
    project = compose("compose.yaml", "compose.tls.yaml", env=env_file("project-images.env"))["services"]
    built = {s["image"] for s in project.values() if "build" in s}
    assert built == {"amole:cpu"}
    for name in ("superlink-state-init", "superlink", *(f"supernode-{i}" for i in SITES)):
        assert flower[name]["image"].startswith("flwr/") and project[name]["image"] == "amole:cpu", name
    # Both images must start the same program: Flower's set it as their entrypoint, amole:cpu's is the SuperExec.
    assert flower["superlink"]["entrypoint"] == ["flower-superlink"]
    for i in SITES:
        assert flower[f"supernode-{i}"]["entrypoint"] == ["flower-supernode"]
    assert project["superlink"]["command"] == flower["superlink"]["command"]


def test_compose_settings_from_the_environment() -> None:
    env = {"AMOLE_SUPERLINK_PORT": "18000", "AMOLE_TORCH_SOURCE": "wheelhouse", "AMOLE_CERTS_DIR": "/tmp/c",
           **{f"AMOLE_SITE_{i}_TASK": f"task{i}" for i in SITES}}
    c = compose("compose.yaml", "compose.tls.yaml", env=env)
    services = c["services"]
    assert services["superlink"]["ports"] == [f"127.0.0.1:18000:{fc.SUPERLINK_PORT}"]
    assert {s["build"]["args"]["TORCH_SOURCE"] for s in services.values() if "build" in s} == {"wheelhouse"}
    for i in SITES:
        command = services[f"supernode-{i}"]["command"]
        assert command[command.index("--node-config") + 1] == fc.node_config(i - 1, task=f"task{i}")
    assert {Path(s["file"]).parent for s in c["secrets"].values()} == {Path("/tmp/c")}


def test_wheelhouse_build_context() -> None:
    """The torch wheel may come from docker/wheels/ in the build context; the PyTorch index stays the default."""
    cpu = (DOCKER / "Dockerfile").read_text()
    assert "ARG TORCH_SOURCE=index" in cpu and "COPY docker/wheels " in cpu
    ignores = [(ROOT / ".dockerignore").read_text(), (DOCKER / "Dockerfile.dockerignore").read_text()]
    assert ignores[0] == ignores[1]  # BuildKit reads the Dockerfile's own, the legacy builder the root one
    assert ignores[0].split() == ["*", "!pyproject.toml", "!docker/wheels/"]
    assert (DOCKER / "wheels" / "README.md").is_file()  # COPY needs the folder even when it holds no wheel
    assert "/docker/wheels/*.whl" in (ROOT / ".gitignore").read_text().split()
