"""The Gradio demo in a real browser: headless Debian Chromium driven by Playwright opens the
page, searches the corpus served by Ray Serve (MiniLM) and finds the expected document; the
comparison tab shows the base model (tiny-bert) beside the student. Screenshots are saved under
``$EMBEDRAY_ARTIFACTS`` (default: the system temp dir's ``embedray-artifacts``)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def artifacts_dir() -> Path:
    root = Path(os.environ.get("EMBEDRAY_ARTIFACTS", Path(tempfile.gettempdir()) / "embedray-artifacts"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def ui_url(serve_ray, serve_assets):
    from embedray.serve.config import ServeConfig
    from tests.ui_app import load_ui_module

    student = ServeConfig(str(serve_assets.minilm), corpus=str(serve_assets.corpus), model_name="student-minilm",
                          cpus_per_replica=0.5, ingress_cpus=0.1)
    base = ServeConfig(str(serve_assets.tiny), corpus=str(serve_assets.corpus), model_name="base-tiny",
                       cpus_per_replica=0.25, ingress_cpus=0.1)
    urls = serve_ray.deploy({"student": (student, "/"), "base": (base, "/base")})
    ui = load_ui_module()
    demo = ui.build_ui(urls["student"], base_api=urls["base"])
    port = serve_ray.free_port()
    demo.launch(prevent_thread_lock=True, **ui.launch_kwargs("127.0.0.1", port))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page():
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium package (scripts/ensure-chromium.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def test_search_shows_the_expected_document(ui_url, page):
    page.goto(ui_url)
    page.locator("#model-info").get_by_text("student-minilm").first.wait_for()
    box = page.locator("#query textarea, #query input").first
    box.fill("compress files quickly")
    page.locator("#search-btn").click()
    first = page.locator("#results .er-hit").first
    first.wait_for()
    assert first.get_attribute("data-doc-id") == "zstd"
    assert "Zstandard" in first.inner_text()
    marks = [m.lower() for m in page.locator("#results .er-hit").first.locator("mark").all_inner_texts()]
    assert any(m.startswith("compress") for m in marks), marks
    assert page.locator("#results .er-hit").count() == 10
    page.screenshot(path=str(artifacts_dir() / "ui_search.png"), full_page=True)


def test_compare_tab_shows_base_and_student(ui_url, page):
    page.goto(ui_url)
    page.get_by_role("tab", name="Compare base vs student").click()
    box = page.locator("#compare-query textarea, #compare-query input").first
    box.fill("secure remote login")
    page.locator("#compare-btn").click()
    page.locator("#compare-student .er-hit").first.wait_for()
    page.locator("#compare-base .er-hit").first.wait_for()
    assert page.locator("#compare-student .er-hit").first.get_attribute("data-doc-id") == "openssh-server"
    assert "base-tiny" in page.locator("#compare-base").inner_text()
    assert "student-minilm" in page.locator("#compare-student").inner_text()
    page.screenshot(path=str(artifacts_dir() / "ui_compare.png"), full_page=True)


def test_uploads_are_capped(ui_url):
    import httpx

    small = httpx.post(f"{ui_url}/gradio_api/upload", files={"files": ("a.txt", b"x" * 1000)}, timeout=30)
    big = httpx.post(f"{ui_url}/gradio_api/upload", files={"files": ("b.txt", b"x" * 2_000_000)}, timeout=30)
    assert small.status_code == 200, small.text
    assert big.status_code == 413, (big.status_code, big.text[:300])
