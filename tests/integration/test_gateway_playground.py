"""The playground page in a real browser: Debian's chromium driven by Playwright (no browser
download). It lists the models, streams a chat answer into the page (several updates, and the
same text as the API gives), shows the citation of a vector store's file, and generates an
image. The screenshot is kept under tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import shutil
from pathlib import Path

import openai
import pytest
from support.gateway_fixtures import start_gateway

CHROMIUM = "/usr/bin/chromium"
# what chromium needs on these machines (closed network, root, no GPU)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None,
                                reason="Debian's chromium is not installed (bootstrap.sh)")


@pytest.fixture(scope="module")
def gw(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway-playground")
    proc = start_gateway(server, folder, f"sqlite:///{folder / 'gateway.db'}")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def page(gw, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield context.new_page()
        finally:
            context.close()


def test_playground_streams_cites_and_draws(gw, page):
    client = openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0, timeout=120)
    f = client.files.create(file=("otters.txt", b"Sea otters hold hands while they sleep."),
                            purpose="assistants")
    vs = client.vector_stores.create(name="otters", file_ids=[f.id])
    client.vector_stores.files.poll(f.id, vector_store_id=vs.id, poll_interval_ms=200)
    prompt = "Tell me about sea otters"
    want = client.chat.completions.create(
        model="llm_bls", max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": prompt}]).choices[0].message.content

    page.goto(gw.base_url.removesuffix("/v1") + "/playground")
    page.wait_for_selector("#model option[value=llm_bls]", state="attached")
    page.select_option("#model", "llm_bls")
    page.fill("#max-tokens", "24")
    # count the answer's updates as they happen: streamed text arrives in several
    page.evaluate("""() => { window.updates = 0; new MutationObserver(() => window.updates++)
        .observe(document.getElementById('log'),
                 {subtree: true, childList: true, characterData: true}); }""")
    page.fill("#prompt", prompt)
    page.click("#send")
    answer = page.locator(".msg.assistant").last
    page.wait_for_selector(".msg.assistant[data-state=done]", timeout=60_000)
    assert answer.inner_text() == want
    assert page.evaluate("window.updates") >= 3  # user bubble, empty answer, then deltas

    page.wait_for_selector(f"#store option[value={vs.id}]", state="attached")
    page.select_option("#store", vs.id)
    page.fill("#prompt", "Do otters sleep holding hands?")
    page.click("#send")
    page.wait_for_function(
        "document.querySelectorAll('.msg.assistant[data-state=done]').length >= 1 && "
        "document.querySelector('.msg.assistant:last-child .cites') !== null",
        timeout=60_000)
    assert f"otters.txt ({f.id})" in page.locator(".cites").last.inner_text()

    page.fill("#prompt", "a red square")
    page.click("#image")
    page.wait_for_selector("img.generated", timeout=120_000)
    assert page.locator("img.generated").evaluate("img => img.naturalWidth") == 64
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"playground screenshot: {shot}")
    assert shot.stat().st_size > 1000
