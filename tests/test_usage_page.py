"""The usage page (`GET /usage`) in a real browser: Debian's chromium driven by selenium through
Debian's chromedriver, against a real gateway that received known traffic. The figures on the
page must equal the API's; a screenshot is kept under the test's tmp dir (its path is printed)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gateway_process import GatewayProcess, wait_for
from tests.test_usage import usage_config
from tests.usage_traffic import TRAFFIC, send

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[test]')")
pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason="Debian's chromium and chromium-driver are not installed "
                                       "(apt-get install chromium chromium-driver; tests/servers/install.sh does it)")
TOKEN = "page-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("usage-page")
    config = usage_config(tmp)
    config["admin"]["token"] = TOKEN
    config["budgets"] = [
        {"name": "support-daily", "match": {"app": "support-bot"}, "limit_usd": 0.01},
        {"name": "user-tokens", "per": "user", "limit_tokens": 4000},
    ]
    gw = GatewayProcess(config, tmp).wait_ready()
    try:
        send(gw.http)
        n_calls = sum(t.calls for t in TRAFFIC)
        wait_for(lambda: requests.get(f"{gw.admin}/api/v1/usage", headers=AUTH, timeout=5).json()["totals"]["calls"]
                 == n_calls, timeout=20)
        wait_for(lambda: len(requests.get(f"{gw.admin}/api/v1/budgets", headers=AUTH, timeout=5).json()) >= 3, timeout=20)
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service
    os.environ["SE_OFFLINE"] = "true"  # selenium never fetches a driver or a browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,1900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _int(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def _usd(x: float | None) -> str:
    return "–" if x is None else f"${x:.4f}"


def _api(gw: GatewayProcess, **params: str) -> Any:
    return requests.get(f"{gw.admin}/api/v1/usage", params=params, headers=AUTH, timeout=5).json()


def _figures(driver: Any) -> dict[str, str]:
    from selenium.webdriver.common.by import By
    return {el.get_attribute("data-figure"): el.text for el in driver.find_elements(By.CSS_SELECTOR, "[data-figure]")}


def _rows(driver: Any, table: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table} tr")[1:]
    return [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def _wait_loaded(driver: Any, before: str | None = None) -> str:
    from selenium.webdriver.support.ui import WebDriverWait
    # Read in one script, holding no element: signing in can replace the document between a
    # find_element and its get_attribute (a CI run got StaleElementReferenceException there).
    read = "return document.body ? document.body.getAttribute('data-loaded') : null"
    WebDriverWait(driver, 20).until(lambda d: d.execute_script(read) not in (None, "", before))
    loaded = driver.execute_script(read)
    assert loaded != "error", driver.find_element("id", "error").text
    return loaded


def test_page_needs_the_token(gateway: GatewayProcess) -> None:
    page = requests.get(f"{gateway.admin}/usage", timeout=5)
    assert page.status_code == 401 and 'name="token"' in page.text
    assert requests.get(f"{gateway.admin}/usage/static/usage.js", timeout=5).status_code == 401
    wrong = requests.post(f"{gateway.admin}/usage/login", data={"token": "nope"}, timeout=5, allow_redirects=False)
    assert wrong.status_code == 401 and "Wrong token" in wrong.text
    session = requests.Session()
    right = session.post(f"{gateway.admin}/usage/login", data={"token": TOKEN}, timeout=5, allow_redirects=False)
    assert right.status_code == 303 and right.headers["Location"] == "/usage"
    assert "HttpOnly" in right.headers["Set-Cookie"] and TOKEN not in right.headers["Set-Cookie"]
    assert session.get(f"{gateway.admin}/usage", timeout=5).status_code == 200
    assert session.get(f"{gateway.admin}/api/v1/usage", timeout=5).json()["totals"]["calls"] > 0
    forged = requests.get(f"{gateway.admin}/api/v1/usage", cookies={"otelgate_admin": "0" * 64}, timeout=5)
    assert forged.status_code == 401


def test_page_figures_equal_the_api(gateway: GatewayProcess, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    browser.get(f"{gateway.admin}/usage")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "signin").click()
    loaded = _wait_loaded(browser)

    api = _api(gateway, top="10")
    t = api["totals"]
    expected = {
        "turns": _int(t["turns"]), "active_users": _int(t["active_users"]), "sessions": _int(t["sessions"]),
        "interactions": f"{t['turns'] / t['sessions']:.2f}", "tokens": _int(t["input_tokens"] + t["output_tokens"]),
        "cost_usd": _usd(t["cost_usd"]), "calls": _int(t["calls"]), "errors": _int(t["errors"]),
    }
    assert _figures(browser) == expected
    # The known traffic, independently of the API: 6 traces, 3 named users, 4 sessions, 9 calls, 1 error.
    assert (t["turns"], t["active_users"], t["sessions"], t["calls"], t["errors"]) == (6, 3, 4, 9, 1)
    assert t["input_tokens"] == sum(x.calls * x.input_tokens for x in TRAFFIC)

    for table, dim in (("by-app", "app"), ("by-model", "model"), ("by-provider", "provider")):
        groups = _api(gateway, group_by=dim, top="0")["groups"]
        assert _rows(browser, table) == [[g["key"][dim] or "(none)", _int(g["calls"]), _int(g["errors"]),
                                          _int(g["input_tokens"]), _int(g["output_tokens"]), _usd(g["cost_usd"])]
                                         for g in groups], table
    assert [r[0] for r in _rows(browser, "by-app")] == ["support-bot", "search"]
    assert _rows(browser, "top-users") == [[u["user"], _int(u["turns"]), _int(u["calls"]),
                                            _int(u["input_tokens"] + u["output_tokens"]), _usd(u["cost_usd"])]
                                           for u in api["top_users"]]
    budgets = requests.get(f"{gateway.admin}/api/v1/budgets", headers=AUTH, timeout=5).json()
    rows = _rows(browser, "budgets")
    assert [(r[0], r[1], r[3], r[7], r[8]) for r in rows] == [
        (b["name"], b["key"] or "(all)", _usd(b["spend_usd"]), f"{b['utilization'] * 100:.1f}%", b["state"]) for b in budgets]
    assert {r[0] for r in rows} == {"support-daily", "user-tokens"}
    assert any(r[8] == "exceeded" for r in rows)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".chart canvas")) == 2  # users and sessions are counted per day

    shot = tmp_path / "usage-page.png"
    browser.save_screenshot(str(shot))
    print(f"\nusage page screenshot: {shot}")

    # 7 d: the same traffic, so the same figures; custom, a past hour: nothing.
    browser.find_element(By.CSS_SELECTOR, '[data-range="7d"]').click()
    loaded = _wait_loaded(browser, loaded)
    assert _figures(browser) == expected
    assert len(browser.find_elements(By.CSS_SELECTOR, ".chart canvas")) == 4
    shot7 = tmp_path / "usage-page-7d.png"
    browser.save_screenshot(str(shot7))
    print(f"usage page screenshot (7 d): {shot7}")
    browser.find_element(By.CSS_SELECTOR, '[data-range="custom"]').click()
    browser.execute_script("document.getElementById('custom-from').value = '2020-01-01T00:00';"
                           "document.getElementById('custom-to').value = '2020-01-01T01:00';")
    browser.find_element(By.ID, "custom-apply").click()
    _wait_loaded(browser, loaded)
    past = _figures(browser)
    assert past["turns"] == "0" and past["calls"] == "0" and past["cost_usd"] == "$0.0000"
    assert _rows(browser, "by-app") == [["no data in this range"]]
