"""The search page in a real browser: Debian's chromium, headless, driven by Selenium.

The app is served by a real uvicorn on a free 127.0.0.1 port; the page must work with
nothing but what that server sends. A screenshot of a search goes to the test's temporary
folder, or to the path in VSEPP_SCREENSHOT (how docs/screenshot.png is made).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
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
    # A result standing for near-duplicates shows their count too: read the rank itself.
    ranks = [f.find_element(By.CSS_SELECTOR, ".rank").text
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


# --------------------------------------------------------------------------- filters

# Photos in folders, with EXIF dates (no offset: UTC), indexed from a list with its own columns.
# Around June 2021: the range's first and last days are in it, the day after is not; "holidays"
# shares a prefix with "holiday" but is not under it; the burst is one scene saved twice.
PHOTOS = {
    "top.jpg": "2020:12:31 23:00:00",
    "holiday/h1.jpg": "2021:06:01 00:00:00",
    "holiday/h2.jpg": "2021:06:15 18:00:00",
    "holiday/beach/b1.jpg": "2021:06:30 23:30:00",
    "holiday/beach/b2.jpg": "2022:01:10 12:00:00",
    "holidays/x1.jpg": "2021:06:05 09:00:00",
    "work/w1.jpg": "2021:06:20 08:00:00",
    "work/w2.jpg": "2021:07:01 00:00:00",
    "work/w3.jpg": "2022:03:03 15:00:00",
    "work/burst-a.jpg": "2021:06:10 10:00:00",
    "work/burst-b.jpg": "2021:06:10 10:00:01",
}
BURST = {"work/burst-a.jpg", "work/burst-b.jpg"}
JUNE = {i for i, when in PHOTOS.items() if when.startswith("2021:06")}
HOLIDAY = {i for i in PHOTOS if i.startswith("holiday/")}
HOLIDAY_FILTER = {"or": [{"field": "folder", "eq": "holiday"},
                         {"field": "folder", "prefix": "holiday/"}]}  # fmt: skip


@pytest.fixture(scope="module")
def photos_url(
    backend: ServiceBackend, demo_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The photos indexed by `index.build` with the demo model, served."""
    from PIL import Image

    from index import build
    from index.store import load_index

    root = tmp_path_factory.mktemp("photos")
    scenes = sorted((demo_data_dir / "Flicker8k_Dataset").glob("demo_test_*.jpg"))
    rows = []
    for i, (image_id, when) in enumerate(PHOTOS.items()):
        image = Image.open(scenes[min(i, len(PHOTOS) - 2)]).convert("RGB")  # the burst: one scene
        if image_id == "work/burst-b.jpg":
            image.putpixel((0, 0), (255, 255, 255))
        exif = Image.Exif()
        exif.get_ifd(0x8769)[36867] = when
        exif[271] = "Canon"
        (root / image_id).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / image_id, "JPEG", exif=exif, quality=95)
        rows.append({"path": image_id, "rating": i, "album": f"a{i % 3}", "favourite": i % 2 == 0})
    (root / "photos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "index"
    argv = ["--model_dir", str(backend.model_dir), "--list", str(root / "photos.jsonl"),
            "--index_dir", str(out)]  # fmt: skip
    assert build.main(argv) == 0
    app = create_app(Settings(), backend.encoders, load_index(out))
    with uvicorn_in_thread(app) as url:
        yield url


# Unmarked, so "done" can only be the next search's (about:blank has no #results).
UNMARK = "const r = document.getElementById('results'); if (r) r.dataset.state = '';"


def _then_results(driver: Any, action: Any) -> list[dict[str, Any]]:
    """Do `action`, wait for the search it starts, and read the results shown."""
    driver.execute_script(UNMARK)
    action()
    _wait(driver, _state_is("results", "done"))
    return list(
        driver.execute_script(
            """return [...document.querySelectorAll('#results figure.result')].map(f => ({
                 id: f.dataset.imageId,
                 taken: (f.querySelector('.taken') || {}).textContent,
                 dups: (f.querySelector('.dups') || {}).textContent}));"""
        )
    )


def _set(driver: Any, selector: str, value: str) -> None:
    """Set a box as a person would (a date box's typing depends on the locale)."""
    driver.execute_script(
        "const box = document.querySelector(arguments[0]); box.value = arguments[1];"
        "box.dispatchEvent(new Event('change', {bubbles: true}));",
        selector,
        value,
    )


def _value(driver: Any, selector: str) -> str:
    return str(driver.execute_script("return document.querySelector(arguments[0]).value", selector))


def _url_query(driver: Any) -> dict[str, Any]:
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(driver.current_url).query))
    if "filter" in query:
        query["filter"] = json.loads(query["filter"])
    return query


def _link(base: str, **params: str) -> str:
    return base + "/?" + urllib.parse.urlencode(params)


def _day(image_id: str) -> str:
    return PHOTOS[image_id][:10].replace(":", "-")


def _shown_ids(shown: list[dict[str, Any]], base: str) -> set[str]:
    """The ids shown, and those a collapsed result stands for (from the index's groups)."""
    ids = set()
    for r in shown:
        group = httpx.get(base + "/images/" + r["id"] + "/duplicates").json()["group"]
        assert r["dups"] == (f"+{len(group) - 1} similar" if len(group) > 1 else None), r
        ids.update(group)
    return ids


FROM = "input[data-field=taken_at][data-op=from]"
TO = "input[data-field=taken_at][data-op=to]"


def test_the_page_filters_by_date_and_folder(
    driver: Any, photos_url: str, backend: ServiceBackend
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    shown = _then_results(driver, lambda: _search(driver, photos_url, backend.known_query, "20"))
    assert _shown_ids(shown, photos_url) == set(PHOTOS)
    assert len(shown) == len(PHOTOS) - 1  # the burst once, by default
    assert all(r["taken"] == _day(r["id"]) for r in shown)
    # A date range: the whole of its last day, not the day after.
    _set(driver, FROM, "2021-06-01")
    shown = _then_results(driver, lambda: _set(driver, TO, "2021-06-30"))
    assert _shown_ids(shown, photos_url) == JUNE
    assert all("2021-06-01" <= r["taken"] <= "2021-06-30" for r in shown)
    # A folder with its subfolders, and the dates still set.
    folder = Select(driver.find_element(By.ID, "folder"))
    assert "holidays" in [o.get_attribute("value") for o in folder.options]
    shown = _then_results(driver, lambda: folder.select_by_value("holiday"))
    assert _shown_ids(shown, photos_url) == JUNE & HOLIDAY
    june = [{"field": "taken_at", "gte": "2021-06-01"}, {"field": "taken_at", "lt": "2021-07-01"}]
    assert _url_query(driver) == {
        "q": backend.known_query, "k": "20", "filter": {"and": [*june, HOLIDAY_FILTER]}
    }  # fmt: skip
    # The folder alone.
    _set(driver, FROM, "")
    shown = _then_results(driver, lambda: _set(driver, TO, ""))
    assert _shown_ids(shown, photos_url) == HOLIDAY
    assert _url_query(driver)["filter"] == HOLIDAY_FILTER


def test_a_bookmarked_search_comes_back_sorted_by_date(
    driver: Any, photos_url: str, backend: ServiceBackend
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _then_results(driver, lambda: _search(driver, photos_url, backend.known_query, "20"))
    _set(driver, FROM, "2021-06-01")
    folder = Select(driver.find_element(By.ID, "folder"))
    _then_results(driver, lambda: folder.select_by_value("work"))
    sort = Select(driver.find_element(By.ID, "sort"))
    shown = _then_results(driver, lambda: sort.select_by_visible_text("newest first"))
    expected = {i for i in PHOTOS if i.startswith("work/") and _day(i) >= "2021-06-01"}
    assert _shown_ids(shown, photos_url) == expected
    days = [r["taken"] for r in shown]
    assert days == sorted(days, reverse=True) and len(set(days)) == len(days)
    bookmark = driver.current_url
    assert _url_query(driver)["sort"] == "-taken_at"

    again = _then_results(driver, lambda: driver.get(bookmark))
    assert again == shown
    assert _value(driver, FROM) == "2021-06-01" and _value(driver, TO) == ""
    assert _value(driver, "#folder") == "work" and _value(driver, "#sort") == "-taken_at"
    assert driver.find_element(By.ID, "collapse").is_selected()
    assert driver.find_element(By.ID, "query").get_attribute("value") == backend.known_query

    sort = Select(driver.find_element(By.ID, "sort"))
    shown = _then_results(driver, lambda: sort.select_by_visible_text("oldest first"))
    assert [r["taken"] for r in shown] == days[::-1]


def test_a_collapsed_result_shows_its_duplicates(
    driver: Any, photos_url: str, backend: ServiceBackend
) -> None:
    from selenium.webdriver.common.by import By

    group = httpx.get(photos_url + "/images/work/burst-b.jpg/duplicates").json()["group"]
    assert set(group) == BURST  # one scene saved twice: a near-duplicate for the demo model
    work = {"field": "folder", "eq": "work"}  # the folder alone, not under it: a link's own
    link = _link(photos_url, q=backend.known_query, k="20", filter=json.dumps(work))
    shown = _then_results(driver, lambda: driver.get(link))
    bursts = [r for r in shown if r["id"] in BURST]
    assert len(bursts) == 1 and bursts[0]["dups"] == "+1 similar"
    # Not grouped: both shots, and the choice in the URL.
    collapse = driver.find_element(By.ID, "collapse")
    shown = _then_results(driver, collapse.click)
    assert {r["id"] for r in shown} >= BURST and all(r["dups"] is None for r in shown)
    assert _url_query(driver)["collapse"] == "false"
    # "similar" keeps the filter.
    first = shown[0]["id"]
    button = driver.find_element(By.CSS_SELECTOR, "#results figure .similar")
    similar = _then_results(driver, button.click)
    assert similar[0]["id"] == first and all(r["id"].startswith("work/") for r in similar)
    assert _url_query(driver) == {
        "similar": first, "k": "20", "filter": work, "collapse": "false"
    }  # fmt: skip


def test_list_columns_filter_and_problems_are_shown(
    driver: Any, photos_url: str, backend: ServiceBackend
) -> None:
    from selenium.webdriver.common.by import By

    _then_results(driver, lambda: _search(driver, photos_url, backend.known_query, "20"))
    _set(driver, "input[data-field=rating][data-op=from]", "2")
    shown = _then_results(driver, lambda: _set(driver, "input[data-field=rating][data-op=to]", "4"))
    rating = {image_id: i for i, image_id in enumerate(PHOTOS)}  # as the list says
    assert {r["id"] for r in shown} == {i for i, n in rating.items() if 2 <= n <= 4}
    shown = _then_results(driver, lambda: _set(driver, "select[data-field=favourite]", "true"))
    assert {r["id"] for r in shown} == {i for i, n in rating.items() if n in (2, 4)}
    assert _url_query(driver)["filter"] == {"and": [  # the columns in /fields' order: by name
        {"field": "favourite", "eq": True},
        {"field": "rating", "gte": 2}, {"field": "rating", "lte": 4}]}  # fmt: skip
    # Labels on every control.
    for box in driver.find_elements(By.CSS_SELECTOR, "#filters input, #filters select"):
        label = driver.find_elements(By.CSS_SELECTOR, f"label[for='{box.get_attribute('id')}']")
        assert label, box.get_attribute("outerHTML")
    # A filter that selects nothing says so; one the server refuses shows its reason.
    _set(driver, FROM, "1999-01-01")
    assert _then_results(driver, lambda: _set(driver, TO, "1999-12-31")) == []
    assert "selects no image" in driver.find_element(By.ID, "message").text
    bad = _link(photos_url, q=backend.known_query, filter='{"field": "colour", "eq": "red"}')
    driver.get(bad)
    _wait(driver, _state_is("results", "error"))
    assert "colour" in driver.find_element(By.ID, "error").text
    assert "colour" in driver.find_element(By.ID, "link-filter").text  # kept, shown
