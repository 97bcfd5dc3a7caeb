"""report.html in a real browser: Debian's chromium, driven through chromium-driver and Selenium with
the driver's path given (nothing is downloaded). The page opens with the result, and every image
decodes (non-zero natural width). Needs both packages, which `make test` installs: it fails without them."""

from __future__ import annotations

import shutil
from pathlib import Path

from raysys.report import build_report


def test_the_report_opens_with_the_result_and_every_image_renders(tmp_path: Path, make_run) -> None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "chromium and chromium-driver are missing: `make test` installs them (apt)"
    report = build_report(make_run(tmp_path))
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        browser.get(report.as_uri())
        first_heading = browser.find_elements(By.TAG_NAME, "h2")[0].text
        headline = browser.find_element(By.CSS_SELECTOR, "p.headline").text
        widths = browser.execute_script("return Array.from(document.images).map(img => img.naturalWidth)")
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()
    assert first_heading == "Result"
    assert headline.startswith("The student scores test NDCG@10 0.2875: 1.29× item-kNN (0.2222)")
    assert len(widths) == 2 and all(width > 0 for width in widths)
