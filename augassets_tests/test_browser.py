"""The UI: `dagster dev` on a free localhost port over the smoke benchmark's instance; the lineage and automation pages
and the path from a result to its images, clicked in headless Chromium."""

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
def dagster_ui(benchmark_run):
    """``dagster dev`` on the smoke benchmark's instance and home, so the pages show real materializations."""
    port = free_port()
    env = dict(os.environ)  # conftest's DAGSTER_HOME and AUGASSETS_HOME: the benchmark's
    dagster = Path(sys.executable).with_name("dagster")
    process = subprocess.Popen(
        [str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
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
        # SIGTERM to `dagster dev` itself, which stops its webserver and code server; sent to the whole
        # group, it left `dagster dev` waiting on children that were already gone until the timeout.
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, 9)  # whatever of the group is still there
        except ProcessLookupError:
            pass


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1600,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_lineage_and_automation_pages_and_the_path_from_a_result_to_its_images(dagster_ui, browser, tmp_path):
    """The lineage of the results table back to the catalog; the daemon's two sensors on the
    Automation page; and the path a reader follows from a result to the images behind it: the results
    table's ``derived_from`` links a method to its classifier runs, a run's ``training_sets`` to the
    augmented set it trained on, the set's ``drawn_from`` to the class × method image partitions, whose
    page shows the sample grid. One UI start for all: it takes most of the test's time."""
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        ElementNotInteractableException,
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)

    def shown(name: str, page: str):
        # Visible, waited for as a whole: the single-page app re-renders while it loads, so an element
        # found a moment ago may be replaced (stale) by the time it is checked.
        try:
            wait.until(ec.visibility_of_element_located((By.XPATH, f"//*[normalize-space(text())='{name}']")))
        except TimeoutException:
            pytest.fail(f"{name} is not shown on the {page} page")

    def dismiss_prompts():
        for button in browser.find_elements(
            By.XPATH, "//button[normalize-space(.)='Skip']"
        ):  # the UI's newsletter prompt
            button.click()

    # A click can land while the page re-renders (the element goes stale) or under the newsletter prompt
    # (intercepted): such a click did nothing, so it is tried again.
    retry = WebDriverWait(
        browser,
        60,
        ignored_exceptions=(
            NoSuchElementException,
            StaleElementReferenceException,
            ElementClickInterceptedException,
            ElementNotInteractableException,
        ),
    )

    def click(xpath: str, within: str | None = None) -> None:
        def attempt(driver) -> bool:
            dismiss_prompts()
            scope = driver.find_element(By.XPATH, within) if within else driver
            scope.find_element(By.XPATH, xpath).click()
            return True

        retry.until(attempt)

    def follow(entry: str, link: str, page: str) -> None:
        """Open the markdown of metadata entry ``entry`` and click its link ``link``."""
        click(
            ".//*[normalize-space(text())='[Show Markdown]']", within=f"//tr[.//*[normalize-space(text())='{entry}']]"
        )
        click(f"//a[normalize-space(text())='{link}']")
        wait.until(ec.url_contains(page))

    try:
        browser.get(f"{dagster_ui}/assets/results_table?view=lineage&lineageScope=upstream&lineageDepth=10")
        for name in STAGES:
            shown(name, "lineage")
        browser.save_screenshot(str(tmp_path / "lineage.png"))
        browser.get(f"{dagster_ui}/automation")
        for name in AUTOMATION:
            shown(name, "automation")
        browser.save_screenshot(str(tmp_path / "automation.png"))

        browser.get(f"{dagster_ui}/assets/results_table")
        follow("derived_from", "retrieval|0", "/assets/classifier_scores")
        shown("retrieval|0", "classifier_scores partition")
        shown("mean_test_top1", "classifier_scores partition")  # the run's figures
        follow("training_sets", "retrieval|0", "/assets/augmented_datasets")
        shown("retrieval_extra_images_per_set", "augmented_datasets partition")
        wnid = "n03595614"  # smoke's first class (T-shirt)
        follow("drawn_from", f"retrieval|{wnid}", "/assets/augmentation_images")
        shown(f"retrieval|{wnid}", "augmentation_images partition")
        click(
            ".//*[normalize-space(text())='[Show Markdown]']",
            within="//tr[.//*[normalize-space(text())='sample_grid']]",
        )
        grid = wait.until(
            ec.visibility_of_element_located((By.XPATH, "//img[starts-with(@src, 'data:image/png;base64,')]"))
        )
        assert grid.size["width"] > 50 and grid.size["height"] > 20, grid.size
        browser.save_screenshot(str(tmp_path / "sample_grid.png"))
    except BaseException:  # (pytest.fail too) what the browser showed when it failed, for the report
        browser.save_screenshot(str(tmp_path / "failure.png"))
        (tmp_path / "failure.html").write_text(browser.page_source)
        raise
