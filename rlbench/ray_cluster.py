"""Connecting the grid to a Ray cluster, failing fast and on one line when the head cannot be used.

``ray.init(address=...)`` on an address where nothing listens retries for many minutes, and a
head that refuses the client's token is reported only after a stream of log lines. Before
connecting for real, ``connect`` therefore checks (1) that the head's port accepts a TCP
connection (a few seconds at most) and (2) that a throw-away Ray client in a subprocess can
join the cluster within ``CONNECT_TIMEOUT_S``; the subprocess's log lines are kept out of
the user's terminal and turned into one ``UsageError`` naming the problem and the fix.

Token authentication (Ray >= 2.52; since 2.59 ``ray start --head`` turns it on by itself
when a token already exists on the head machine): a client that names the head explicitly (``HOST:PORT``)
sends a token only with ``RAY_AUTH_MODE=token``, taking it from ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``. We do not switch token mode on for the user:
sending a secret to an address the user typed is the user's decision (Ray itself only does
it for ``auto``, a cluster found on the same machine).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from rlbench.errors import UsageError

#: Bound on the probing client (its start-up, mostly ``import ray``, and its join).
CONNECT_TIMEOUT_S = 30.0
#: Bound on the TCP probe alone (an address that drops packets would otherwise hang).
TCP_TIMEOUT_S = 5.0
#: Ray's join attempts (about one second each) allowed to the probing client.
PROBE_GCS_ATTEMPTS = 5

_PROBE = r"""
import json, logging, sys
import ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.ERROR)
    res = ray.cluster_resources()
    print("RLBENCH_PROBE " + json.dumps({"cpus": res.get("CPU", 0.0), "nodes": len(ray.nodes())}), flush=True)
    ray.shutdown()
except BaseException as e:
    msg = " ".join(str(e).split())
    print("RLBENCH_PROBE_ERROR " + type(e).__name__ + ": " + msg, flush=True)
    sys.exit(3)
"""

_AUTH_MARKERS = ("InvalidAuthToken", "Unauthenticated", "authentication token")


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray-address needs Ray: pip install -e '.[ray]'") from None
    return ray


def resolve_address(address: str) -> tuple[str, int]:
    """``auto`` or ``HOST:PORT`` -> (host, port), as Ray will resolve it."""
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS", "")
        if not target or target == "auto":
            try:  # the address `ray start --head` recorded on this machine (Ray's own lookup)
                from ray._private.services import canonicalize_bootstrap_address

                target = canonicalize_bootstrap_address("auto") or ""
            except Exception:  # noqa: BLE001 - any failure of the private lookup means "not found"
                target = ""
        if not target:
            raise UsageError("--ray-address auto: no Ray cluster was started on this machine "
                             "(start one with `ray start --head`, or give the head as HOST:PORT)")
    if target.startswith("ray://"):
        raise UsageError(f"--ray-address {address}: Ray Client addresses (ray://) are not supported; give the head as HOST:PORT")
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray-address must be HOST:PORT of the Ray head, 'auto' or 'local', got {address!r}")
    return host, int(port)


def _tcp_probe(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=TCP_TIMEOUT_S):
            pass
    except OSError as e:
        reason = f"no answer within {TCP_TIMEOUT_S:g} s" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise UsageError(f"cannot reach the Ray head at {host}:{port} ({reason}); "
                         f"is `ray start --head --port={port}` running there, and is the port open?") from None


def _auth_hint() -> str:
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return ("the head uses token authentication and this client sent no token: set RAY_AUTH_MODE=token "
                "and give this machine the head's token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)")
    return ("the head refused this client's token: use the head's token "
            "(`ray get-auth-token` on the head) in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")


def _client_probe(address: str, target: str, timeout: float) -> dict:
    env = dict(os.environ)
    env.setdefault("RAY_gcs_server_port_wait_time_s", str(PROBE_GCS_ATTEMPTS))
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, address], check=False, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UsageError(f"the Ray head at {target} did not accept a client within {CONNECT_TIMEOUT_S:g} s "
                         "(is it a Ray head of the same Ray version?)") from None
    for line in proc.stdout.splitlines():
        if line.startswith("RLBENCH_PROBE "):
            return json.loads(line.split(" ", 1)[1])
    text = proc.stdout + proc.stderr
    error = next((ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("RLBENCH_PROBE_ERROR ")),
                 f"the probing client exited with status {proc.returncode}")
    if any(m in text for m in _AUTH_MARKERS):
        raise UsageError(f"cannot join the Ray cluster at {target}: {_auth_hint()}")
    raise UsageError(f"cannot join the Ray cluster at {target}: {error[:300]}")


def connect(address: str) -> bool:
    """Connect this process to Ray (``local`` starts a private instance). Returns True if this
    call initialised Ray (the caller then shuts it down). Raises ``UsageError`` within
    ``TCP_TIMEOUT_S`` + ``CONNECT_TIMEOUT_S`` seconds when the head is unreachable or refuses
    the client."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(address=None, log_to_driver=False)
        return True
    host, port = resolve_address(address)
    target = f"{host}:{port}"
    _tcp_probe(host, port)
    info = _client_probe(target if address != "auto" else address, target, CONNECT_TIMEOUT_S)
    if not info.get("cpus"):
        print(f"rlbench: note: the Ray cluster at {target} has no CPUs yet; runs start when worker nodes join",
              file=sys.stderr)
    try:
        ray.init(address=target if address != "auto" else address, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - the probe passed, so this is a cluster that went away meanwhile
        raise UsageError(f"cannot join the Ray cluster at {target}: {' '.join(str(e).split())[:300]}") from None
    return True


def task_attempt() -> int | None:
    """How many times Ray has retried the task running this code (0 = first attempt), if known."""
    try:
        import ray

        return int(ray._private.worker.global_worker.core_worker.get_current_task_attempt_number())
    except Exception:  # noqa: BLE001 - private Ray API; the count is informative only
        return None
