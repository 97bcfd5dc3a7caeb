"""report.html in a real browser: Debian's chromium, driven through chromium-driver and Selenium with
the driver's path given (nothing is downloaded). The page opens with the result, every image decodes
(non-zero natural width), and a run with an A/B test shows its table. Needs both packages, which
`make test` installs: it fails without them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from raysys.eval.ab_simulation import simulate_log
from raysys.eval.abtest import analyze, user_units
from raysys.report import build_report


def test_the_report_opens_with_the_result_and_every_image_renders(tmp_path: Path, make_run) -> None:
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_path, "chromium and chromium-driver are missing: `make test` installs them (apt)"
    run = make_run(tmp_path)
    ab = analyze(user_units(simulate_log(500, {"a": 0.1, "b": 0.2}))[0], order=["a", "b"])
    (run / "abtest.json").write_text(json.dumps({**ab, "significant": True, "alpha": 0.05}))
    report = build_report(run)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        browser.get(report.as_uri())
        headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
        ab_table = "//h2[text()='A/B test']/following-sibling::table[1]//tr"
        ab_rows = [row.text for row in browser.find_elements(By.XPATH, ab_table)]
        headline = browser.find_element(By.CSS_SELECTOR, "p.headline").text
        widths = browser.execute_script("return Array.from(document.images).map(img => img.naturalWidth)")
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()
    assert headings[0] == "Result" and "A/B test" in headings
    assert [row.split()[0] for row in ab_rows[1:]] == ["a", "b"]  # the header, then a (control) and b
    assert headline.startswith("The student scores test NDCG@10 0.2875: 1.29× item-kNN (0.2222)")
    assert len(widths) == 2 and all(width > 0 for width in widths)
