"""The UI: `dagster dev` on a free localhost port, the lineage and automation pages in headless Chromium."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import free_port

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
STAGES = ["class_catalog", "dataset_splits", "augmented_datasets", "classifier_scores", "results_table"]
AUTOMATION = ["scheduled_backfill", "new_classes"]

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs them where apt works)",
)


@pytest.fixture
def dagster_ui(tmp_path):
    port = free_port()
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "AUGASSETS_HOME": str(tmp_path / "home")}
    dagster = Path(sys.executable).with_name("dagster")
    process = subprocess.Popen(
        [str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    pytest.fail(f"dagster dev did not come up on {url} (exit code {process.poll()})")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1600,1000", f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_lineage_and_automation_pages(dagster_ui, browser, tmp_path):
    """The lineage of the results table back to the catalog, and the daemon's two sensors on the
    Automation page (one UI start for both: it takes most of the test's time)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)

    def shown(name: str, page: str):
        node = wait.until(ec.presence_of_element_located((By.XPATH, f"//*[normalize-space(text())='{name}']")))
        assert node.is_displayed(), f"{name} is in the {page} page but not shown"

    browser.get(f"{dagster_ui}/assets/results_table?view=lineage&lineageScope=upstream&lineageDepth=10")
    for name in STAGES:
        shown(name, "lineage")
    browser.save_screenshot(str(tmp_path / "lineage.png"))
    browser.get(f"{dagster_ui}/automation")
    for name in AUTOMATION:
        shown(name, "automation")
    browser.save_screenshot(str(tmp_path / "automation.png"))

