"""The Flower process command lines of an amole deployment, written once.

`docker/deploy_test.py` runs these argument lists as local processes, and the `command:` entries of
`docker/compose.yaml` (insecure base) and `docker/compose.tls.yaml` (TLS + SuperNode authentication overlay)
are these same lists with the container's addresses and paths (`tests/test_deploy_files.py` checks that).
Only addresses, ports, paths and the isolation mode differ between the two: locally the SuperLink and each
SuperNode start their own SuperExec (`subprocess`), in compose every SuperExec is its own container
(`process`).

Standard library only: it is imported by the deploy test, the compose test and, for reference, by admins.
"""

from __future__ import annotations

from dataclasses import dataclass

# Flower 1.41 layout: one HTTP(S) port per SuperLink for the Fleet, Control and Runtime (ServerAppIo) APIs,
# and one Runtime API port per SuperNode for its ClientApp SuperExec.
SUPERLINK_PORT = 8000
SUPERNODE_RUNTIME_PORT = 9094
ISOLATIONS = ("subprocess", "process")


@dataclass(frozen=True)
class ServerTls:
    """The SuperLink's TLS files: CA certificate, server certificate (chain) and server key."""

    ca_certfile: str
    certfile: str
    keyfile: str


def superlink(*, host: str, port: int, database: str, isolation: str, tls: ServerTls | None) -> list[str]:
    """`flower-superlink` arguments. With TLS, SuperNode authentication is on (only registered keys join)."""
    _check_isolation(isolation)
    if tls is None:
        security = ["--insecure"]
    else:
        security = ["--ssl-ca-certfile", tls.ca_certfile, "--ssl-certfile", tls.certfile,
                    "--ssl-keyfile", tls.keyfile, "--enable-supernode-auth"]
    return [*security, "--isolation", isolation, "--disable-runtime-dependency-installation",
            "--database", database, "--host", host, "--port", str(port)]


def supernode(*, superlink: str, host: str, port: int, isolation: str, node_config: str,
              root_certificates: str | None, auth_private_key: str | None) -> list[str]:
    """`flower-supernode` arguments: the SuperLink to join, this node's Runtime API and its data (node config).

    Runtime dependency installation is off by default for SuperNodes in 1.41 (there is no flag to disable it).
    """
    _check_isolation(isolation)
    if root_certificates is None:
        if auth_private_key is not None:
            raise ValueError("SuperNode authentication needs TLS (root certificates)")
        security = ["--insecure"]
    else:
        security = ["--root-certificates", root_certificates]
        if auth_private_key is not None:
            security += ["--auth-supernode-private-key", auth_private_key]
    return [*security, "--superlink", superlink, "--host", host, "--port", str(port),
            "--isolation", isolation, "--node-config", node_config]


def superexec(*, runtime_api_address: str, root_certificates: str | None) -> list[str]:
    """`flower-superexec` arguments for `--isolation process` (it picks ServerApp or ClientApp by task type)."""
    security = ["--insecure"] if root_certificates is None else ["--root-certificates", root_certificates]
    return [*security, "--runtime-api-address", runtime_api_address]


def node_config(client_id: int | str, *, task: str | None = None, data_path: str | None = None,
                site_dir: str | None = None) -> str:
    """The `--node-config` of a site: its client id, optionally its BIG-bench task or its own task file, and
    its site folder (adapters it keeps, its resident worker's socket and log; default under $AMOLE_CACHE)."""
    if task is not None and data_path is not None:
        raise ValueError("give a site either a task or a data-path, not both")
    items = [f"client-id={client_id}"]
    if task is not None:
        items.append(f'task="{task}"')
    if data_path is not None:
        items.append(f'data-path="{data_path}"')
    if site_dir is not None:
        items.append(f'site-dir="{site_dir}"')
    return " ".join(items)


def flags(args: list[str]) -> list[str]:
    """The option names of an argument list, in order (to compare commands whose values differ)."""
    return [a for a in args if a.startswith("--")]


def _check_isolation(isolation: str) -> None:
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
