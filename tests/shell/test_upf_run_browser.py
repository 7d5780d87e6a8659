"""The README's "Try it", as a person does it: `upf run` (what `make run` starts), Chromium at the
gateway's address, sign in as the demo user, open Orders from the navigation, create an order and see
it listed. The other browser tests run the shell against a harness of separate processes; this one is
the platform exactly as a new user gets it. Screenshots go to tests/shell/artifacts/upf-run/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.shell.test_orders_browser import ORDERS, ORDERS_DIST
from tests.shell.test_shell_browser import ARTIFACTS, CHROMIUM, SHELL_WEB, Browser, open_browser
from tests.support.processes import Gateway, free_port, run_gateway

SHOTS = ARTIFACTS / "upf-run"
NAV = f'a.nav-link[data-plugin="{ORDERS}"]'


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Gateway]:
    for needed in (ORDERS_DIST / "remoteEntry.js", SHELL_WEB / "dist" / "index.html"):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: run `make test` (it builds shell-web and plugins/orders/ui)")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    # The embedded registry on a free port: a developer's own registry may hold 50052.
    with run_gateway({"registryUrl": f"127.0.0.1:{free_port()}"}, tmp_path, command="run") as gateway:
        yield gateway


@pytest.fixture
def browser(platform: Gateway, tmp_path: Path) -> Iterator[Browser]:
    with open_browser(platform.url, SHOTS, tmp_path / "browser.log") as opened:
        yield opened


def test_a_new_user_signs_in_to_upf_run_and_creates_an_order(browser: Browser) -> None:
    browser("goto", path="/")
    browser("wait", selector="#username")
    browser.shot("sign-in")
    browser("loginTimed", username="demo", password="demo-password")
    # Orders appears once `upf run`'s orders plugin passes its first health check and reaches storage.
    browser("wait", selector=f'{NAV}[data-status="ok"]', ms=45_000)
    browser.shot("dashboard")
    browser.accessible("upf run's dashboard")

    browser("click", selector=NAV)
    browser("wait", selector="#orders-title")
    browser("fill", selector='input[name="customer"]', value="lin")
    browser("fill", selector='input[name="product-0"]', value="sku-lamp")
    browser("fill", selector='input[name="quantity-0"]', value="1")
    browser("fill", selector='input[name="price-0"]', value="39.00")
    browser("click", selector='[data-testid="create-order"] button[type=submit]')
    row = 'tr[data-customer="lin"]'
    browser("wait", selector=row)
    assert browser("text", selector=f"{row} .orders-status") == "Pending"
    assert "39.00" in browser("text", selector=f"{row} td.num")
    browser.shot("order-created")
    browser.accessible("upf run's orders page")
