"""The presence board (/board) in a real headless Chromium against the compiled server.

A person's path through it: paste a token, enter ids, Watch; the cards show each user's presence
and follow changes made through the REST API without a reload; a click explains a user; a server
restart is ridden out with the resume token; a bad token or a missing permission is shown as an
error, not retried. After each, the browser's console must hold no Content-Security-Policy
violation and no script error.
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

APP_ROLES = ["Presence.ReadWrite.All", "Presence.Read.All"]
WAIT_S = 20


def set_presence(server, token, user, availability, activity, session=None):
    session = session or str(uuid.uuid4())
    status, body = server.call(
        "POST",
        f"/v1.0/users/{user}/presence/setPresence",
        token,
        {"sessionId": session, "availability": availability, "activity": activity, "expirationDuration": "PT1H"},
    )
    assert status == 200, body
    return session


def card(driver, user):
    return driver.find_element(By.CSS_SELECTOR, f'li.card[data-id="{user}"]')


def wait_for(driver, what, condition, timeout=WAIT_S):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=what)


def shows(driver, user, availability):
    """Wait until the card of `user` shows `availability`; return the card."""

    def check(d):
        found = d.find_elements(By.CSS_SELECTOR, f'li.card[data-id="{user}"][data-availability="{availability}"]')
        return found[0] if found else False

    return wait_for(driver, f"{user} shown as {availability}", check)


def watch(driver, server, token, ids):
    driver.get(f"{server.base_url}/board")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "ids").send_keys(", ".join(ids))
    driver.find_element(By.ID, "watch").click()


def sockets(driver):
    return driver.execute_script("return window.__sockets")


def console_problems(driver, strict):
    """Console entries that mean the page broke: CSP refusals and script errors (with `strict`,
    every error-level entry, network failures included)."""
    problems = []
    for entry in driver.get_log("browser"):
        message = entry.get("message", "")
        refused = entry.get("source") == "security" or "Content Security Policy" in message
        script_error = entry.get("source") == "javascript" or "Uncaught" in message
        if refused or script_error or (strict and entry.get("level") == "SEVERE"):
            problems.append(entry)
    return problems


def test_the_board_is_a_strict_static_page(server):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for path, kind in [("/board", "text/html"), ("/board/board.js", "text/javascript"), ("/board/board.css", "text/css")]:
        with opener.open(f"{server.base_url}{path}", timeout=10) as response:
            headers = response.headers
            assert response.status == 200
            assert headers["Content-Type"].startswith(kind), path
            csp = headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Referrer-Policy"] == "no-referrer"
            assert headers["Cache-Control"] == "no-cache" and headers["ETag"]


def test_watch_live_updates_and_explain(server, browser, tmp_path):
    app = server.token(roles=APP_ROLES)
    alice, bob, carol, dave, erin = (str(uuid.uuid4()) for _ in range(5))
    set_presence(server, app, alice, "Available", "Available")
    status, body = server.call(
        "POST",
        f"/v1.0/users/{alice}/presence/setStatusMessage",
        app,
        {"statusMessage": {"message": {"content": "In a workshop until 3", "contentType": "text"}}},
    )
    assert status == 200, body
    bob_session = set_presence(server, app, bob, "Busy", "InACall")
    # Carol has two sessions: the Busy one decides (rule highestSession).
    set_presence(server, app, carol, "Available", "Available")
    carol_busy = set_presence(server, app, carol, "Busy", "InAConferenceCall")
    set_presence(server, app, dave, "Away", "Away")
    # Erin has no session: Offline.
    users = [alice, bob, carol, dave, erin]

    watch(browser, server, app, users)
    for user, availability, tone in [
        (alice, "Available", "available"),
        (bob, "Busy", "busy"),
        (carol, "Busy", "busy"),
        (dave, "Away", "away"),
        (erin, "Offline", "offline"),
    ]:
        assert shows(browser, user, availability).get_attribute("data-tone") == tone
    assert "In a workshop until 3" in card(browser, alice).text
    wait_for(browser, "status live", lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "live")

    # The token went in the first message of a same-origin socket, never in a URL.
    [socket] = sockets(browser)
    assert socket["url"] == server.base_url.replace("http://", "ws://") + "/v1.0/communications/presences/$stream"
    first = json.loads(socket["sent"][0])
    assert first == {"type": "watch", "token": app, "ids": users}
    assert app not in browser.current_url

    # A change through the REST API reaches the page without a reload.
    browser.execute_script("window.__sameDocument = true")
    set_presence(server, app, bob, "DoNotDisturb", "Presenting", session=bob_session)
    assert shows(browser, bob, "DoNotDisturb").get_attribute("data-tone") == "dnd"
    assert "Presenting" in card(browser, bob).text
    assert browser.execute_script("return window.__sameDocument") is True

    # A click explains: the rule, the deciding session, each session's kind and application.
    card(browser, carol).click()
    panel = browser.find_element(By.ID, "explain")
    wait_for(browser, "explanation shown", lambda d: "highestSession" in panel.text)
    assert panel.is_displayed()
    assert carol_busy in panel.text and "InAConferenceCall" in panel.text
    assert panel.text.count("application") >= 2
    deciding = panel.find_element(By.CSS_SELECTOR, ".session.deciding h3")
    assert deciding.text == carol_busy

    shot = Path(os.environ.get("BOARD_SCREENSHOT", tmp_path / "board.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)), "screenshot not written"

    assert console_problems(browser, strict=True) == []


def test_reconnects_with_the_resume_token_after_a_restart(server, browser):
    app = server.token(roles=APP_ROLES)
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    session = set_presence(server, app, alice, "Available", "Available")
    set_presence(server, app, bob, "Busy", "InACall")
    watch(browser, server, app, [alice, bob])
    shows(browser, alice, "Available")
    shows(browser, bob, "Busy")
    [first] = sockets(browser)

    # SIGTERM ends the stream with "shutdown"; the board retries with backoff until the server
    # is back, then resumes from the last resume token it had.
    server.restart()
    set_presence(server, app, alice, "Busy", "InACall", session=session)
    shows(browser, alice, "Busy")
    assert card(browser, bob).get_attribute("data-availability") == "Busy"
    resumed = [s for s in sockets(browser)[1:] if s["sent"]]
    assert resumed, "the board did not reconnect"
    message = json.loads(resumed[-1]["sent"][0])
    assert message["ids"] == [alice, bob] and message["token"] == app
    assert "~" in message.get("resume", ""), f"reconnected without a resume token: {message}"
    assert json.loads(first["sent"][0]).get("resume") is None

    # Connection failures while the server was down are logged by the browser; nothing else may be.
    assert console_problems(browser, strict=False) == []


@pytest.mark.parametrize("case", ["bad token", "missing permission"])
def test_refusals_are_shown_and_not_retried(server, browser, case):
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    if case == "bad token":
        token, expected = "not-a-token", "InvalidAuthenticationToken"
    else:
        # A delegated Presence.Read token may watch its own user only.
        token, expected = server.token(user=str(uuid.uuid4()), scopes=["Presence.Read"]), "Forbidden"
    watch(browser, server, token, [alice, bob])
    error = browser.find_element(By.ID, "error")
    wait_for(browser, f"{expected} shown", lambda d: error.is_displayed() and expected in error.text)
    assert browser.find_element(By.ID, "status").get_attribute("data-state") == "failed"
    assert len(sockets(browser)) == 1, "a refused watch was retried"
    assert console_problems(browser, strict=True) == []

