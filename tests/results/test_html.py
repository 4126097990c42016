"""The static leaderboard page: self-contained, escaped, with provenance; and in headless Chromium.

Browser test policy: it drives Debian's /usr/bin/chromium (packages `chromium`, `chromium-driver`) through
the `playwright` package from the test extra. When the browser (or playwright) is missing the test FAILS
under CI (environment CI=true, which .ci/run sets) and is SKIPPED elsewhere, with the install command.
Its screenshot is written to the test's temporary folder (pytest's basetemp, printed with `-s`), never into the
source tree.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

from gfss_bench.results.board import Leaderboard
from gfss_bench.results.html import html_page
from gfss_bench.results.published import published_rows

from .helpers import PROVENANCE, make_result, two_methods

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
EVIL = "<script>alert(1)</script>&\"'"


def page_results():
    """diam: higher HM; greedy: higher base but lower novel (so sorting by novel reorders rows)."""
    results = two_methods()
    other = dict(PROVENANCE, git_commit="fedcba9876543210", created="2025-02-03T00:00:00+00:00",
                 device_name="NVIDIA H100")
    results += [make_result("base", f, 90, 5, provenance=other) for f in range(4)]
    results += [make_result("diam", f, 10, 10, options={"pi_strategy": EVIL}) for f in range(2)]
    return results


def test_page_is_self_contained_escaped_and_has_provenance():
    page = html_page(Leaderboard.build(page_results(), published=published_rows()))
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)     # no network fetches
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert page.count("<script>") == 1 and "alert(1)</script>" not in page      # the evil label is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#x27;" in page
    assert page.count('src="data:image/png;base64,') == 2                      # bars + tradeoff, one group
    assert "0123456789" in page and "fedcba9876" in page and "NVIDIA H100" in page
    assert "2025-02-03T00:00:00+00:00" in page
    assert page.count('class="incomplete"') == 1


def _browser_or_skip():
    in_ci = os.environ.get("CI", "").lower() == "true"
    how = ("install it with `sudo apt-get install -y chromium chromium-driver` and the test extra "
           "(`pip install -e '.[test]'`, which brings playwright)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        (pytest.fail if in_ci else pytest.skip)(f"playwright is not installed: {how}")
    if not (Path(CHROMIUM).is_file() and shutil.which(CHROMIUM)):
        (pytest.fail if in_ci else pytest.skip)(f"{CHROMIUM} not found: {how}")
    return sync_playwright


def test_page_in_headless_chromium(tmp_path):
    sync_playwright = _browser_or_skip()
    path, screenshot = tmp_path / "leaderboard.html", tmp_path / "leaderboard.png"
    path.write_text(html_page(Leaderboard.build(page_results())), encoding="utf-8")
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            table = page.locator("table.sortable").first
            name = lambda text: "evil" if "alert(1)" in text else text.split(" (")[0]
            methods = lambda: [name(t.strip()) for t in table.locator("tbody tr td:first-child").all_inner_texts()]
            assert methods() == ["diam", "imprint", "evil", "base"]                    # as generated: by HM
            base_header = table.locator("thead th", has_text="base")
            base_header.click()
            assert methods() == ["base", "diam", "imprint", "evil"]                    # base, descending
            assert base_header.get_attribute("aria-sort") == "descending"
            base_header.click()
            assert methods() == ["evil", "imprint", "diam", "base"]                    # base, ascending
            table.locator("thead th", has_text="method").click()
            assert methods() == ["base", "diam", "evil", "imprint"]                    # text, ascending
            assert page.locator("img").count() == 2
            row = page.locator("div.figures").first.bounding_box()["width"]
            widths = [page.locator("img").nth(i).bounding_box()["width"] for i in range(2)]
            assert sum(widths) > 0.9 * row > 0.8 * 1400  # the figures fill the page's width, side by side
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
        finally:
            browser.close()
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert screenshot.stat().st_size > 10_000
