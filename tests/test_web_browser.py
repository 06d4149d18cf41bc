"""The dashboard in a real browser: Debian's chromium and chromedriver, driven by selenium,
on a running cluster.  With ZQ_WEB_SCREENSHOTS=1 the pages' screenshots are written to
docs/img/ (README shows them); otherwise to the test's tmp dir."""

from __future__ import annotations

import os
import shutil
import urllib.parse
from typing import Any, Iterator

import pytest

import zq
from tests.lifecycle_tasks import wait_for

from .web_harness import REPO, WebNode, token_file, web_cluster

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; "
           ".ci/run does)")

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

WAIT = 15.0


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    yield from web_cluster(imports=["tests.web_sched_tasks"])


@pytest.fixture(scope="module")
def web(cluster) -> Iterator[WebNode]:
    w = WebNode(cluster, "--sample-interval", "0.25").start()
    yield w
    assert w.stop() == 0, w.node.log()


@pytest.fixture(scope="module")
def client(cluster) -> Iterator[zq.Client]:
    cfg = zq.load_config(None, {"ventilator_clients": cluster.endpoints["clients"],
                                "sink_endpoint": cluster.endpoints["sink"], "heartbeat_interval": 0.2})
    c = zq.Client(cfg)
    yield c
    c.shutdown(wait=False, cancel_futures=True)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> str:
    if os.environ.get("ZQ_WEB_SCREENSHOTS") == "1":
        return os.path.join(REPO, "docs", "img")
    return str(tmp_path_factory.mktemp("screenshots"))


def until(driver: Any, cond: Any, what: str) -> Any:
    """Wait for ``cond``; the page redraws itself as data changes, so a stale element is
    looked up again."""
    return WebDriverWait(driver, WAIT, poll_frequency=0.05,
                         ignored_exceptions=[StaleElementReferenceException]).until(cond, message=what)


def css(driver: Any, selector: str) -> list:
    return driver.find_elements(By.CSS_SELECTOR, selector)


def text_of(driver: Any, selector: str) -> str:
    """The element's text, read in one step in the page (no element handle to go stale)."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                                 selector)


def click(driver: Any, selector: str, what: str) -> None:
    """Click the element ``selector`` names (found again if the page redrew it meanwhile)."""
    def attempt(d: Any) -> bool:
        found = css(d, selector)
        if not found or not found[0].is_enabled():
            return False
        found[0].click()
        return True

    until(driver, attempt, what)


def go(driver: Any, url: str) -> None:
    driver.get(url)
    until(driver, lambda d: d.execute_script("return document.readyState") == "complete", "page load")


def test_overview_shows_the_cluster(web, client, browser, shots):
    go(browser, web.url + "/")
    # a steady load of about 2 s on the 4 slots: the charts have something to draw
    futs = [client.submit_by_name("http.nap", {"seconds": 0.04}, retain_result=True) for i in range(200)]
    [f.result(15) for f in futs]
    until(browser, lambda d: text_of(d, "#card-workers .big") == "1", "one worker on the overview")
    until(browser, lambda d: "UP" in text_of(d, "#sink-link"), "the sink link shown up")
    until(browser, lambda d: len(css(d, "svg.chart polyline")) == 4, "the throughput and latency charts")
    assert "none" in text_of(browser, "#sec-web") and "loopback only" in text_of(browser, "#sec-web")
    assert css(browser, '#queues tr[data-queue="default"]')
    browser.save_screenshot(os.path.join(shots, "dashboard-overview.png"))


def test_a_submitted_task_appears_and_the_list_filters(web, client, browser, shots):
    ok = client.submit_by_name("http.add", {"a": 1, "b": 2}, retain_result=True)
    bad = client.submit_by_name("http.fail", None, retain_result=True)
    go(browser, web.url + "/#/tasks")
    until(browser, lambda d: css(d, f'tr[data-task-id="{ok.task_id}"]'), "the submitted task in the list")
    until(browser, lambda d: css(d, f'tr[data-task-id="{bad.task_id}"][data-state="FAILED"]'), "the failed task")
    assert "of" in text_of(browser, "#page-info")
    browser.save_screenshot(os.path.join(shots, "dashboard-tasks.png"))
    Select(css(browser, "#filter-state")[0]).select_by_value("FAILED")  # the form is drawn once
    click(browser, "#filter-apply", "Filter")
    until(browser, lambda d: "state=FAILED" in d.current_url, "the filter in the URL")

    def states() -> dict:  # task id -> state of the rows shown, read in one step
        return browser.execute_script(
            "const out = {}; for (const r of document.querySelectorAll('#tasks-table tr[data-task-id]'))"
            " out[r.dataset.taskId] = r.dataset.state; return out;")

    shown = until(browser, lambda d: states(), "the filtered list")
    assert bad.task_id in shown and ok.task_id not in shown and set(shown.values()) == {"FAILED"}
    # requeue every failed task the filter shows (after a confirmation)
    click(browser, "#requeue-all", "Requeue the failed tasks")
    until(browser, lambda d: d.switch_to.alert, "the confirmation").accept()
    until(browser, lambda d: "requeued" in text_of(d, "#toast"), "the requeue's answer")
    assert client.show_task(bad.task_id)["forgotten"] is True
    assert client.show_task(bad.task_id + "~1")["parent"] == bad.task_id


def test_a_failed_task_shows_its_traceback_and_requeues(web, client, browser, shots):
    bad = client.submit_by_name("http.fail", {"why": "on purpose"}, retain_result=True)
    with pytest.raises(zq.TaskFailed):
        bad.result(15)
    go(browser, web.url + "/#/tasks?state=FAILED")
    until(browser, lambda d: "why='on purpose'" in text_of(d, f'tr[data-task-id="{bad.task_id}"] td.args'),
          "the arguments in the list")
    click(browser, f'tr[data-task-id="{bad.task_id}"] a', "the failed task's link")
    until(browser, lambda d: "ValueError: on purpose" in text_of(d, "#traceback"), "the remote traceback")
    assert text_of(browser, "#args") == "why='on purpose'"
    assert "ValueError" in text_of(browser, "#error") and "FAILED" in text_of(browser, "#task-state")
    assert text_of(browser, "#timings")
    browser.save_screenshot(os.path.join(shots, "dashboard-task.png"))
    click(browser, "#btn-requeue", "Requeue")
    until(browser, lambda d: d.current_url.split("#/task/")[-1] not in ("", bad.task_id), "the new task's page")
    new_id = urllib.parse.unquote(browser.current_url.split("#/task/")[1])
    assert client.show_task(new_id)["parent"] == bad.task_id


def test_pause_cancel_resume_from_the_browser(web, client, browser):
    go(browser, web.url + "/")
    click(browser, 'button.queue-action[data-queue="default"][data-op="pause"]', "Pause")
    wait_for(lambda: client.stats()["ventilator"]["queues"]["default"]["paused"], what="the queue paused")
    fut = client.submit_by_name("http.add", [5], retain_result=True)
    wait_for(lambda: client.get_status(fut.task_id) == zq.TaskState.PAUSED, what="the task PAUSED")
    go(browser, web.url + f"/#/task/{fut.task_id}")
    until(browser, lambda d: "PAUSED" in text_of(d, "#task-state"), "the task page")
    click(browser, "#btn-cancel", "Cancel")
    wait_for(lambda: client.show_task(fut.task_id)["state"] == "CANCELED", what="the task cancelled")
    until(browser, lambda d: "CANCELED" in text_of(d, "#task-state"), "the page showing CANCELED")
    go(browser, web.url + "/")
    click(browser, 'button.queue-action[data-queue="default"][data-op="resume"]', "Resume")
    wait_for(lambda: not client.stats()["ventilator"]["queues"]["default"]["paused"], what="the queue resumed")


def test_workers_and_schedules_pages(web, browser, shots):
    go(browser, web.url + "/#/workers")
    until(browser, lambda d: css(d, "#workers tr[data-worker]"), "the worker row")
    assert "thread" in text_of(browser, "#workers")
    browser.save_screenshot(os.path.join(shots, "dashboard-workers.png"))
    go(browser, web.url + "/#/schedules")
    until(browser, lambda d: "web.hourly_report" in text_of(d, "#schedules"), "the schedules")
    assert "web.morning" in text_of(browser, "#schedules") and "http.add" in text_of(browser, "#names")
    browser.save_screenshot(os.path.join(shots, "dashboard-schedules.png"))


def test_a_network_bind_refuses_the_browser_without_the_token(cluster, browser, shots, tmp_path):
    path, token = token_file(tmp_path)
    w = WebNode(cluster, "--host", "0.0.0.0", "--token-file", path, name="http-token").start()
    try:
        url = w.url.replace("0.0.0.0", "127.0.0.1")
        go(browser, url + "/")
        until(browser, lambda d: css(d, "#login-form"), "the login form")
        status = browser.execute_async_script(
            "const cb = arguments[arguments.length - 1]; fetch('/status').then(r => cb(r.status));")
        assert status == 401
        browser.save_screenshot(os.path.join(shots, "dashboard-login.png"))
        css(browser, "#token")[0].send_keys("wrong-token-wrong-token")
        click(browser, "#login-submit", "Log in")
        until(browser, lambda d: "Wrong token" in text_of(d, "#login-message"), "the refusal")
        css(browser, "#token")[0].send_keys(token)
        click(browser, "#login-submit", "Log in")
        until(browser, lambda d: text_of(d, "#card-workers .big") == "1", "the overview after logging in")
        assert "token" in text_of(browser, "#sec-web")
    finally:
        assert w.stop() == 0
