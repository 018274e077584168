"""Fixtures that run the real `presenced` binary and point the official msgraph-sdk at it.

One server is started per test session (startup is the slow part); tests stay independent
by using fresh random user ids, never by restarting the server.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import pytest
from kiota_abstractions.authentication import (
    AccessTokenProvider,
    AllowedHostsValidator,
    BaseBearerTokenAuthenticationProvider,
)
from msgraph import GraphRequestAdapter, GraphServiceClient

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 15
TENANT = "00000000-0000-4000-8000-000000000001"


@dataclass(frozen=True)
class Server:
    base_url: str  # e.g. "http://127.0.0.1:40747", no version segment
    data_dir: Path
    binary: Path


def _presenced_bin() -> Path:
    binary = Path(os.environ.get("PRESENCED_BIN", REPO_ROOT / "target" / "debug" / "presenced"))
    if not binary.is_file():
        pytest.fail(
            f"presenced binary not found at {binary}; run `cargo build -p presenced` "
            "(or set PRESENCED_BIN)",
            pytrace=False,
        )
    return binary


def _child_env() -> dict[str, str]:
    # The binary reads PRESENCED_* from the environment as defaults for its flags; a developer's
    # shell settings (config file, JWKS, --disable-hs256, ...) must not change what we test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCED_")}
    env["NO_COLOR"] = "1"  # keep the captured log readable when a failure dumps it
    return env


@pytest.fixture(scope="session", autouse=True)
def _bypass_proxies_for_loopback() -> Iterator[None]:
    # httpx honours HTTP(S)_PROXY; a CI proxy must not intercept requests to our loopback server.
    with pytest.MonkeyPatch.context() as mp:
        no_proxy = os.environ.get("NO_PROXY", "")
        mp.setenv("NO_PROXY", ",".join(filter(None, [no_proxy, "127.0.0.1", "localhost"])))
        yield


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary = _presenced_bin()
    data_dir = tmp_path_factory.mktemp("presenced-data")
    log_path = data_dir.parent / "presenced.log"
    # stderr goes to a file rather than a pipe so a chatty server can never block on a full pipe.
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [
            str(binary), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
            # The rich-notification test runs its webhook receiver on loopback over http.
            "--webhook-allow-http", "--webhook-allow-network", "127.0.0.0/8",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        env=_child_env(),
        text=True,
    )

    # readline() blocks with no timeout, so a reader thread feeds a queue we can wait on with
    # a deadline; it keeps draining stdout afterwards for the same reason as above.
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="presenced-stdout", daemon=True).start()

    def fail_startup(why: str) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        pytest.fail(f"presenced did not start: {why}\n--- server log ---\n{log_path.read_text()}")

    base_url = None
    try:
        while base_url is None:
            line = lines.get(timeout=STARTUP_TIMEOUT_S)
            if line is None:
                fail_startup(f"exited with code {proc.wait()} before listening")
            elif line.startswith("listening on "):
                base_url = line.split("listening on ", 1)[1].strip().rstrip("/")
    except queue.Empty:
        fail_startup(f"no 'listening on' line within {STARTUP_TIMEOUT_S}s")

    yield Server(base_url=base_url, data_dir=data_dir, binary=binary)

    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    log.close()
    assert code == 0, (
        f"presenced did not exit cleanly on SIGTERM (exit code {code})\n"
        f"--- server log ---\n{log_path.read_text()}"
    )


@pytest.fixture(scope="session")
def mint_token(server: Server) -> Callable[..., str]:
    """`mint_token(user=None, scopes=(), roles=())` -> JWT from `presenced token`.

    With `user` it is a delegated token (default scopes Presence.Read.All Presence.ReadWrite);
    without, an application token (default role Presence.ReadWrite.All).
    """

    def mint(
        user: Optional[str] = None,
        scopes: Iterable[str] = (),
        roles: Iterable[str] = (),
        tenant: str = TENANT,
    ) -> str:
        cmd = [str(server.binary), "token", "--data-dir", str(server.data_dir), "--tenant", tenant]
        if user is not None:
            cmd += ["--user", user]
        for scope in scopes:
            cmd += ["--scope", scope]
        for role in roles:
            cmd += ["--role", role]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), timeout=30)
        assert done.returncode == 0, f"`presenced token` failed: {done.stderr}"
        return done.stdout.strip()

    return mint


class StaticTokenProvider(AccessTokenProvider):
    """Hands the SDK a fixed bearer token; the real SDK would get it from azure-identity."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def get_authorization_token(
        self, uri: str, additional_authentication_context: dict[str, Any] = {}
    ) -> str:
        return self._token

    def get_allowed_hosts_validator(self) -> AllowedHostsValidator:
        # An empty list allows every host: the server is on 127.0.0.1, not graph.microsoft.com.
        return AllowedHostsValidator([])


@pytest.fixture
def graph(server: Server) -> Callable[..., GraphServiceClient]:
    """`graph(token, version="v1.0")` -> a stock GraphServiceClient talking to the server.

    Function-scoped on purpose: the adapter's httpx client pools connections per event loop,
    and every test runs its own `asyncio.run`, so clients must not outlive a test.
    """

    def make(token: str, version: str = "v1.0") -> GraphServiceClient:
        adapter = GraphRequestAdapter(BaseBearerTokenAuthenticationProvider(StaticTokenProvider(token)))
        adapter.base_url = f"{server.base_url}/{version}"
        return GraphServiceClient(request_adapter=adapter)

    return make


@pytest.fixture
def new_user() -> Callable[[], str]:
    """Fresh user object ids, so tests sharing one server never see each other's state."""
    return lambda: str(uuid.uuid4())


def pytest_configure(config: pytest.Config) -> None:
    # msgraph-sdk's generated request builders (and kiota) warn about their own deprecated
    # classes when first imported; that is SDK noise, not something presenced can act on.
    for message in ("This class is deprecated", "GetQueryParameters is deprecated"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:DeprecationWarning")
