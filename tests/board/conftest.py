"""Fixtures for the board's browser test: the compiled `presenced` and a headless Chromium.

The server is started as tests/sdk/conftest.py starts it (PRESENCED_BIN, port 0, a temporary data
dir, tokens from `presenced token`), but can also be restarted on the same port and data dir, so
the board's reconnect is tested against a real restart. Chromium and chromedriver are Debian's
(`apt-get install chromium chromium-driver`; scripts/test installs them when run as root).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TENANT = "00000000-0000-4000-8000-000000000001"
STARTUP_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 15
CHROMIUM = Path(os.environ.get("BOARD_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("BOARD_CHROMEDRIVER", "/usr/bin/chromedriver"))

# Requests to the loopback server never go through a proxy from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _child_env() -> dict[str, str]:
    # A developer's PRESENCED_* settings must not change what is tested.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCED_")}
    env["NO_COLOR"] = "1"
    return env


class Presenced:
    """One data dir, served by one process at a time."""

    def __init__(self, binary: Path, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = data_dir.parent / "presenced.log"
        self.proc: Optional[subprocess.Popen[str]] = None
        self.base_url = ""

    def start(self, listen: str = "127.0.0.1:0") -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--listen", listen, "--data-dir", str(self.data_dir)],
            stdout=subprocess.PIPE,
            stderr=log,
            env=_child_env(),
            text=True,
        )
        log.close()
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="presenced-stdout", daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT_S)
            except queue.Empty:
                line = None
            if line is None:
                proc.kill()
                proc.wait()
                pytest.fail(f"presenced did not start\n--- server log ---\n{self.log_path.read_text()}")
            if line.startswith("listening on "):
                self.base_url = line.split("listening on ", 1)[1].strip().rstrip("/")
                return

    def stop(self) -> None:
        """SIGTERM, as an operator restarts it; the server must exit cleanly."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self.proc = None
        assert code == 0, f"presenced exited with {code} on SIGTERM\n{self.log_path.read_text()}"

    def restart(self) -> None:
        port = self.base_url.rsplit(":", 1)[1]
        self.stop()
        self.start(f"127.0.0.1:{port}")

    def token(self, user: Optional[str] = None, scopes: Iterable[str] = (), roles: Iterable[str] = ()) -> str:
        cmd = [str(self.binary), "token", "--data-dir", str(self.data_dir), "--tenant", TENANT]
        if user is not None:
            cmd += ["--user", user]
        cmd += [arg for scope in scopes for arg in ("--scope", scope)]
        cmd += [arg for role in roles for arg in ("--role", role)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), timeout=30)
        assert done.returncode == 0, f"`presenced token` failed: {done.stderr}"
        return done.stdout.strip()

    def call(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        """A REST call; returns (status, parsed JSON body or None)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with _http.open(request, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        return status, (json.loads(raw) if raw else None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Presenced]:
    binary = Path(os.environ.get("PRESENCED_BIN", REPO_ROOT / "target" / "debug" / "presenced"))
    if not binary.is_file():
        pytest.fail(f"presenced binary not found at {binary}; run `cargo build -p presenced`", pytrace=False)
    presenced = Presenced(binary, tmp_path_factory.mktemp("board") / "data")
    presenced.data_dir.mkdir()
    presenced.start()
    yield presenced
    if presenced.proc is not None:
        presenced.stop()


# Put in every page before its own scripts (a DevTools script, which the page's CSP does not
# govern): records each WebSocket's URL and the messages the page sends on it, so the test can
# check what the board sends and where, without a hook in the board itself.
RECORD_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  const sockets = (window.__sockets = []);
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      const record = { url: String(url), sent: [] };
      sockets.push(record);
      const send = this.send.bind(this);
      this.send = (data) => { record.sent.push(String(data)); return send(data); };
    }
  };
})();
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"the board test needs Chromium and chromedriver ({', '.join(missing)} missing): "
            "`apt-get install chromium chromium-driver` (scripts/test does so itself when run as root)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-proxy-server",
        "--window-size=1280,1000",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_SOCKETS})
    try:
        yield driver
    finally:
        driver.quit()
