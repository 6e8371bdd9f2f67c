"""The search page in a real browser: Debian's chromium, headless, driven by Selenium.

The app is served by a real uvicorn on a free 127.0.0.1 port; the page must work with
nothing but what that server sends. A screenshot of a search goes to the test's temporary
folder, or to the path in VSEPP_SCREENSHOT (how docs/screenshot.png is made).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from service.main import create_app
from tests.conftest import require
from tests.service_helpers import ServiceBackend, uvicorn_in_thread

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 30

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _chromium() -> None:
    require(
        CHROMIUM.exists() and CHROMEDRIVER.exists(),
        "Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver: "
        "apt-get install -y chromium chromium-driver)",
    )


@pytest.fixture(scope="module")
def backend(service_backend: ServiceBackend) -> ServiceBackend:
    return service_backend


@pytest.fixture(scope="module")
def base_url(backend: ServiceBackend) -> Iterator[str]:
    app = create_app(Settings(max_query_chars=200), backend.encoders, backend.index)
    with uvicorn_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1360,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(WAIT_S)
    try:
        yield browser
    finally:
        browser.quit()


def _wait(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition)


def _state_is(element_id: str, state: str) -> Any:
    from selenium.webdriver.common.by import By

    def check(driver: Any) -> bool:
        value = driver.find_element(By.ID, element_id).get_attribute("data-state")
        if value == "error" and state != "error":
            error = driver.find_element(By.ID, "error").text
            raise AssertionError(f"#{element_id} failed: {error}")
        return bool(value == state)

    return check


def _search(driver: Any, base_url: str, query: str, k: str) -> list[Any]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(base_url + "/")
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query)
    Select(driver.find_element(By.ID, "k")).select_by_visible_text(k)
    driver.find_element(By.ID, "search-button").click()
    _wait(driver, _state_is("results", "done"))
    return list(driver.find_elements(By.CSS_SELECTOR, "#results figure.result"))


def _images_loaded(driver: Any, selector: str) -> bool:
    return bool(
        driver.execute_script(
            "const imgs = [...document.querySelectorAll(arguments[0])];"
            "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);",
            selector,
        )
    )


def test_a_sentence_shows_image_results(
    driver: Any, base_url: str, backend: ServiceBackend
) -> None:
    from selenium.webdriver.common.by import By

    figures = _search(driver, base_url, backend.known_query, "5")
    assert len(figures) == 5
    assert not driver.find_element(By.ID, "no-captions").is_displayed()  # it has captions
    _wait(driver, lambda d: _images_loaded(d, "#results img"))
    first = figures[0]
    image = first.find_element(By.TAG_NAME, "img")
    assert image.get_attribute("src").startswith(base_url + "/thumbs/")  # a cached thumbnail
    titles = image.get_attribute("title")
    assert titles and titles.split("\n")[0] in backend.index.captions
    scores = [float(f.find_element(By.CSS_SELECTOR, ".score").text) for f in figures]
    assert scores == sorted(scores, reverse=True)
    query = urllib.parse.parse_qs(urllib.parse.urlparse(driver.current_url).query)
    assert query == {"q": [backend.known_query], "k": ["5"]}
    assert "images in" in driver.find_element(By.ID, "status").text


def test_a_shared_link_runs_its_search(driver: Any, base_url: str, backend: ServiceBackend) -> None:
    from selenium.webdriver.common.by import By

    link = base_url + "/?" + urllib.parse.urlencode({"q": backend.known_query, "k": "3"})
    driver.get(link)
    _wait(driver, _state_is("results", "done"))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#results figure.result")) == 3
    assert driver.find_element(By.ID, "query").get_attribute("value") == backend.known_query
    assert driver.find_element(By.ID, "k").get_attribute("value") == "3"


def test_an_upload_shows_captions_beside_the_image(
    driver: Any, base_url: str, backend: ServiceBackend
) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/")
    driver.find_element(By.ID, "upload").send_keys(str(backend.sample_image))
    _wait(driver, _state_is("captions", "done"))
    items = driver.find_elements(By.CSS_SELECTOR, "#captions li")
    assert len(items) == 10
    texts = [item.find_element(By.CSS_SELECTOR, ".caption-text").text for item in items]
    assert all(text in backend.index.captions for text in texts)
    preview = driver.find_element(By.ID, "preview")
    assert preview.is_displayed() and preview.get_attribute("src").startswith("blob:")


def test_a_dropped_image_is_searched(driver: Any, base_url: str, backend: ServiceBackend) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/")
    image_url = "/images/" + urllib.parse.quote(backend.index.image_ids[0])
    driver.execute_script(
        """
        const [url, done] = arguments;
        fetch(url).then(r => r.blob()).then(blob => {
          const data = new DataTransfer();
          data.items.add(new File([blob], "dropped.png", {type: blob.type}));
          const zone = document.getElementById("dropzone");
          zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true,
                                                    cancelable: true}));
        });
        """,
        image_url,
    )
    _wait(driver, _state_is("captions", "done"))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#captions li")) == 10


def test_clicking_a_result_searches_its_captions(
    driver: Any, base_url: str, backend: ServiceBackend
) -> None:
    from selenium.webdriver.common.by import By

    figures = _search(driver, base_url, backend.known_query, "5")
    clicked = figures[0].get_attribute("data-image-id")
    figures[0].find_element(By.TAG_NAME, "img").click()
    _wait(driver, _state_is("captions", "done"))
    items = driver.find_elements(By.CSS_SELECTOR, "#captions li")
    assert len(items) == 5
    query = urllib.parse.parse_qs(urllib.parse.urlparse(driver.current_url).query)
    assert query == {"image": [clicked], "k": ["5"]}
    assert (
        driver.find_element(By.ID, "preview")
        .get_attribute("src")
        .endswith(urllib.parse.quote(clicked))
    )


def test_more_results_and_similar_images(
    driver: Any, base_url: str, backend: ServiceBackend
) -> None:
    from selenium.webdriver.common.by import By

    figures = _search(driver, base_url, backend.known_query, "5")
    first_page = [f.get_attribute("data-image-id") for f in figures]
    driver.find_element(By.ID, "more").click()
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results figure")) == 10)
    shown = [f.get_attribute("data-image-id")
             for f in driver.find_elements(By.CSS_SELECTOR, "#results figure")]  # fmt: skip
    assert shown[:5] == first_page and len(set(shown)) == 10
    ranks = [f.find_element(By.TAG_NAME, "span").text
             for f in driver.find_elements(By.CSS_SELECTOR, "#results figure")]  # fmt: skip
    assert ranks == [f"#{i}" for i in range(1, 11)]
    # "similar" on a result: the images nearest to it, itself first.
    target = shown[3]
    driver.find_elements(By.CSS_SELECTOR, "#results figure .similar")[3].click()
    first_id = "const f = document.querySelector('#results figure'); return f && f.dataset.imageId"
    _wait(driver, lambda d: d.execute_script(first_id) == target)
    query = urllib.parse.parse_qs(urllib.parse.urlparse(driver.current_url).query)
    assert query == {"similar": [target], "k": ["5"]}


def test_api_errors_are_shown_in_the_page(driver: Any, base_url: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    _search_expecting_error = "q" * 201  # over max_query_chars=200
    driver.get(base_url + "/")
    driver.find_element(By.ID, "query").send_keys(_search_expecting_error)
    driver.find_element(By.ID, "search-button").click()
    _wait(driver, _state_is("results", "error"))
    error = driver.find_element(By.ID, "error")
    assert error.is_displayed()
    assert "201 characters" in error.text and "VSEPP_MAX_QUERY_CHARS" in error.text

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not a picture")
    driver.find_element(By.ID, "upload").send_keys(str(not_an_image))
    _wait(driver, _state_is("captions", "error"))
    assert "not an image" in driver.find_element(By.ID, "error").text


def test_unknown_words_say_so(driver: Any, base_url: str) -> None:
    from selenium.webdriver.common.by import By

    _search(driver, base_url, "zzxqj vrrbk", "5")
    message = driver.find_element(By.ID, "message")
    assert message.is_displayed() and "vocabulary" in message.text
    assert driver.find_elements(By.CSS_SELECTOR, "#results figure.result") == []


def test_nothing_is_fetched_from_elsewhere(
    driver: Any, base_url: str, backend: ServiceBackend
) -> None:
    _search(driver, base_url, backend.known_query, "10")
    _wait(driver, lambda d: _images_loaded(d, "#results img"))
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert resources and all(url.startswith(base_url + "/") for url in resources), resources


def test_screenshot_for_the_readme(
    driver: Any, base_url: str, backend: ServiceBackend, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    # The tests never write into the repository unless asked to.
    screenshot = Path(os.environ.get("VSEPP_SCREENSHOT") or tmp_path / "screenshot.png")
    _search(driver, base_url, backend.known_query, "10")
    driver.find_element(By.ID, "upload").send_keys(str(backend.sample_image))
    _wait(driver, _state_is("captions", "done"))
    _wait(driver, lambda d: _images_loaded(d, "#results img, #captions img, #preview"))
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
