"""The playground page (``/``) in a real headless Chromium driven by Selenium, against the real
server on 127.0.0.1: what the page shows is compared with the API's answers (and the scores with
``GPT2.score``) for the same settings.

Needs Debian's ``chromium`` and ``chromium-driver`` packages and ``selenium``; the driver's path
is given, so Selenium Manager never runs and nothing is downloaded. Skipped without them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading

import httpx
import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver", reason="the playground tests drive Chromium with selenium")
pytest.importorskip("fastapi", reason="the playground is served by gpt2gen serve (the serve extra)")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(f"the playground tests need {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium "
                "chromium-driver)", allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.common.selenium_manager import SeleniumManager  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import gpt2gen  # noqa: E402
from gpt2gen.server import ServerConfig, create_app  # noqa: E402
from serving import (  # noqa: E402
    MODEL_NAME,
    SLOW_MAX_TOKENS,
    WAIT_SECONDS,
    make_slow_model_dir,
    metric,
    running,
    sse_events,
    wait_healthy,
    wait_metric,
)

pytestmark = pytest.mark.service  # a real server on 127.0.0.1 and a browser

PROMPT = "Once upon a time"
# Every control of the Complete view set away from its default, as a user would type them.
SETTINGS = {"max_tokens": 24, "temperature": 0.9, "top_p": 0.9, "top_k": 50, "min_p": 0.02,
            "presence_penalty": 0.3, "frequency_penalty": 0.2, "repetition_penalty": 1.1,
            "seed": 1234, "logprobs": 3}
SCORED_TEXT = "The quick brown fox jumps over the lazy dog, then naps."
KEY = "playground-key"


# --- the server, the reference model and the browser ---------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # the slow model: a Stop lands while its long generation still runs
    return make_slow_model_dir(tmp_path_factory.mktemp("playground"))


@pytest.fixture(scope="module")
def url(model_dir):
    model = gpt2gen.GPT2.from_pretrained(model_dir)
    with running(create_app(model, ServerConfig(served_model_name=MODEL_NAME, max_batch=4))) as url:
        wait_healthy(url)
        yield url


@pytest.fixture(scope="module")
def reference(model_dir):
    """The same checkpoint loaded in this process, apart from the server's."""
    return gpt2gen.GPT2.from_pretrained(model_dir)


def _refuse_selenium_manager(*args, **kwargs):
    raise AssertionError("Selenium Manager would download a driver: give the driver's path")


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SeleniumManager, "binary_paths", _refuse_selenium_manager)
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list:
    """The browser console's errors since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def open_page(driver, url):
    driver.get(f"{url}/")
    wait(driver, lambda d: MODEL_NAME in text_of(d, "server-status") or not d.find_element(By.ID, "key-box")
         .get_attribute("hidden"))


@pytest.fixture
def page(browser, url):
    """The page, freshly loaded; the test fails if it logged any console error."""
    console_errors(browser)
    open_page(browser, url)
    yield browser
    assert console_errors(browser) == []


def wait(driver, condition, seconds=WAIT_SECONDS):
    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(condition)


def text_of(driver, element_id) -> str:
    """An element's text exactly (``.text`` would be the rendered, whitespace-folded text)."""
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def set_fields(driver, values: dict) -> None:
    for name, value in values.items():
        field = driver.find_element(By.ID, name)
        field.clear()
        field.send_keys(str(value))


def generate(driver) -> str:
    """Clicks Generate and waits for the end; returns how it ended (done, stopped, failed)."""
    driver.find_element(By.ID, "generate").click()
    return wait(driver, lambda d: d.find_element(By.ID, "complete-stats").get_attribute("data-done"))


def page_tokens(driver, container="completion") -> list:
    return driver.execute_script(
        "return [...document.getElementById(arguments[0]).querySelectorAll('.tok')]"
        ".map(s => [s.dataset.token, s.dataset.logprob ?? null, s.textContent])", container)


def api(url, body: dict) -> dict:
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def seeded_generation(page) -> dict:
    """Generates with SETTINGS on the page; returns the API's answer to the same request."""
    set_fields(page, {"prompt": PROMPT, **SETTINGS})
    assert generate(page) == "done"
    return api(page.current_url.rstrip("/"), {"model": MODEL_NAME, "prompt": PROMPT, **SETTINGS})


# --- the page --------------------------------------------------------------------------------------


def test_the_page_and_its_files_are_served_from_the_package(url):
    page = httpx.get(f"{url}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]  # no CDN, nothing remote
    assert "://" not in page.text
    for name, kind in (("playground.js", "javascript"), ("playground.css", "text/css"), ("favicon.svg", "svg")):
        response = httpx.get(f"{url}/static/{name}", timeout=30)
        assert response.status_code == 200 and kind in response.headers["content-type"], name
        assert "://" not in response.text.replace('xmlns="http://www.w3.org/2000/svg"', ""), name
    missing = httpx.get(f"{url}/static/nothing.js", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"


def test_the_page_loads_without_console_errors_and_every_control_is_labelled(page):
    assert text_of(page, "server-status").startswith(f"Model {MODEL_NAME}")
    unlabelled = page.execute_script("""
        const name = (e) => (e.labels && e.labels.length) || e.getAttribute('aria-label')
                             || e.getAttribute('aria-labelledby') || e.textContent.trim();
        return [...document.querySelectorAll('input, textarea, button, [role=region]')]
               .filter((e) => !name(e)).map((e) => e.outerHTML);""")
    assert unlabelled == []
    assert console_errors(page) == []


def test_a_seeded_generation_shows_exactly_the_api_text(page, url):
    expected = seeded_generation(page)
    choice = expected["choices"][0]
    assert text_of(page, "completion") == choice["text"]
    assert text_of(page, "echo-prompt") == PROMPT
    stats = text_of(page, "complete-stats")
    n = expected["usage"]["completion_tokens"]
    assert "time to first token" in stats and f"{n} tokens" in stats and "tokens/s" in stats, stats
    assert stats.endswith(f"finished: {choice['finish_reason']}")
    # the request shown is the one sent: the user's settings, streamed
    shown = json.loads(text_of(page, "request-code"))
    assert shown == {"model": MODEL_NAME, "prompt": PROMPT, **SETTINGS, "stream": True,
                     "stream_options": {"include_usage": True}}


def test_the_probability_view_has_one_element_per_token_with_the_api_values(page):
    logprobs = seeded_generation(page)["choices"][0]["logprobs"]
    tokens = page_tokens(page)
    assert [t[0] for t in tokens] == logprobs["tokens"]
    assert [float(t[1]) for t in tokens] == logprobs["token_logprobs"]  # exactly, not approximately
    # each element holds its token's slice of the text
    ends = logprobs["text_offset"][1:] + [None]
    text = text_of(page, "completion")
    assert [t[2] for t in tokens] == [text[a:b] for a, b in zip(logprobs["text_offset"], ends)]
    shades = page.execute_script("return [...document.querySelectorAll('#completion .tok')]"
                                 ".map(s => s.style.getPropertyValue('--shade'))")
    assert [float(s) for s in shades] == pytest.approx([1 - math.exp(lp) for lp in logprobs["token_logprobs"]],
                                                       abs=5e-4)

    # focus by keyboard: Tab reaches the first token, the arrow keys move on; the tip shows its
    # alternatives with the API's values
    spans = page.find_elements(By.CSS_SELECTOR, "#completion .tok")
    page.find_element(By.ID, "shade").click()  # unshade and shade again: the checkbox works
    page.find_element(By.ID, "shade").click()
    ActionChains(page).send_keys(Keys.TAB).perform()
    assert page.switch_to.active_element == spans[0]
    ActionChains(page).send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT).perform()
    assert page.switch_to.active_element == spans[2]
    assert tip(page) == logprobs["top_logprobs"][2]
    assert spans[2].get_attribute("aria-describedby") == "tip"
    ActionChains(page).send_keys(Keys.ESCAPE).perform()
    assert page.find_element(By.ID, "tip").get_attribute("hidden")

    # hovering shows the same
    visible = [i for i, t in enumerate(tokens) if t[2].strip()]
    ActionChains(page).move_to_element(spans[visible[-1]]).perform()
    assert tip(page) == logprobs["top_logprobs"][visible[-1]]


def tip(driver) -> dict:
    """The alternatives the visible tooltip lists (token string -> logprob), in its order."""
    wait(driver, lambda d: not d.find_element(By.ID, "tip").get_attribute("hidden"))
    rows = driver.execute_script("return [...document.querySelectorAll('#tip tr')]"
                                 ".map(r => [r.dataset.token, r.dataset.logprob])")
    values = [float(lp) for _, lp in rows]
    assert values == sorted(values, reverse=True)
    return {token: float(lp) for token, lp in rows}


@pytest.mark.parametrize("how", ["button", "keyboard"])
def test_stop_cancels_the_generation_on_the_server(page, url, reference, how):
    cancelled = metric(url, "gpt2gen_requests_finished_total", finish_reason="cancelled")
    # greedy from PROMPT runs the whole SLOW_MAX_TOKENS without an end-of-text on this checkpoint
    set_fields(page, {"prompt": PROMPT, "max_tokens": SLOW_MAX_TOKENS, "temperature": 0})
    if how == "button":
        page.find_element(By.ID, "generate").click()
    else:  # Ctrl+Enter in the prompt generates, Esc stops
        page.find_element(By.ID, "prompt").send_keys(Keys.CONTROL, Keys.ENTER)
    wait(page, lambda d: len(page_tokens(d)) >= 2)
    if how == "button":
        page.find_element(By.ID, "stop").click()
    else:
        ActionChains(page).send_keys(Keys.ESCAPE).perform()
    assert wait(page, lambda d: d.find_element(By.ID, "complete-stats").get_attribute("data-done")) == "stopped"
    assert wait_metric(url, "gpt2gen_requests_finished_total", lambda v: v >= cancelled + 1,
                       finish_reason="cancelled") == cancelled + 1
    assert wait_metric(url, "gpt2gen_requests_running", lambda v: v == 0) == 0
    # what was shown is the start of the offline greedy text, and the keyboard focus came back
    shown = page_tokens(page)
    assert 0 < len(shown) < SLOW_MAX_TOKENS
    offline = reference.generate(PROMPT, len(shown), temperature=0)
    assert text_of(page, "completion") == offline.text[:len(text_of(page, "completion"))]
    if how == "button":  # the focus moved to Stop while it ran, and back to Generate
        assert page.switch_to.active_element == page.find_element(By.ID, "generate")
    assert text_of(page, "complete-stats").endswith("stopped")


def test_the_score_view_equals_gpt2_score(page, reference):
    page.find_element(By.ID, "tab-complete").send_keys(Keys.ARROW_RIGHT)  # the tabs follow the arrows
    assert page.find_element(By.ID, "panel-score").is_displayed()
    assert not page.find_element(By.ID, "panel-complete").is_displayed()
    area = page.find_element(By.ID, "score-text")
    area.clear()
    area.send_keys(SCORED_TEXT)
    area.send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard shortcut scores
    stats = wait(page, lambda d: d.find_element(By.ID, "score-stats").get_attribute("data-perplexity") and
                 d.find_element(By.ID, "score-stats"))
    score = reference.score(SCORED_TEXT)
    tokens = page_tokens(page, "scored")
    assert len(tokens) == len(reference.encode(SCORED_TEXT)) == len(score.token_ids) + 1
    assert tokens[0][1] is None  # the first token has no context
    assert [float(t[1]) for t in tokens[1:]] == [float(lp) for lp in score.logprobs]
    assert "".join(t[2] for t in tokens) == SCORED_TEXT
    total = float(stats.get_attribute("data-total"))
    assert total == sum(float(lp) for lp in score.logprobs)  # the same additions in the same order
    # GPT2.score's perplexity is computed in float32: equal to its precision
    assert float(stats.get_attribute("data-perplexity")) == pytest.approx(score.perplexity, rel=1e-5)
    assert float(stats.get_attribute("data-perplexity")) == pytest.approx(math.exp(-total / len(score.logprobs)),
                                                                          rel=1e-14)
    assert f"{len(tokens)} tokens, {len(tokens) - 1} scored" in stats.text
    shades = page.execute_script("return [...document.querySelectorAll('#scored .tok')].slice(1)"
                                 ".map(s => s.style.getPropertyValue('--shade'))")
    assert [float(s) for s in shades] == pytest.approx(
        [min(-float(lp) / math.log(2) / 12, 1) for lp in score.logprobs], abs=5e-4)


def test_server_errors_are_shown_as_the_server_worded_them(page, url):
    set_fields(page, {"max_tokens": 5000})
    assert generate(page) == "failed"
    body = {"model": MODEL_NAME, "prompt": page.find_element(By.ID, "prompt").get_attribute("value"),
            "max_tokens": 5000}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert text_of(page, "complete-error") == response.json()["error"]["message"]
    assert page.find_element(By.ID, "complete-error").is_displayed()
    console_errors(page)  # the browser logs the 400 it received

    page.find_element(By.ID, "tab-score").click()
    page.find_element(By.ID, "score-text").clear()
    page.find_element(By.ID, "score").click()
    wait(page, lambda d: d.find_element(By.ID, "score-error").is_displayed())
    empty = httpx.post(f"{url}/v1/completions", json={"model": MODEL_NAME, "prompt": "", "max_tokens": 0,
                                                      "echo": True, "logprobs": 5}, timeout=60)
    assert text_of(page, "score-error") == empty.json()["error"]["message"]
    console_errors(page)


def run_snippet(page, button, command, env=None) -> str:
    page.find_element(By.ID, button).click()
    wait(page, lambda d: text_of(d, "copy-status"))
    snippet = text_of(page, "request-code")
    result = subprocess.run([*command, snippet], capture_output=True, timeout=120,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})})
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return snippet, result.stdout.decode("utf-8")  # bytes: a "\r" in the text stays one


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_copy_as_curl_and_as_python_give_the_same_generation(page):
    choice = seeded_generation(page)["choices"][0]
    snippet, out = run_snippet(page, "copy-curl", ["bash", "-c"])
    assert snippet.startswith("curl -N http://127.0.0.1:")
    pieces = [json.loads(e) for e in sse_events(out)]
    assert "".join(c["text"] for p in pieces for c in p["choices"]) == choice["text"]

    snippet, out = run_snippet(page, "copy-python", [sys.executable, "-c"])
    assert "from openai import OpenAI" in snippet and "extra_body=" in snippet
    assert out == choice["text"] + "\n"


def test_a_key_is_asked_for_when_the_server_needs_one(browser, model_dir):
    model = gpt2gen.GPT2.from_pretrained(model_dir)
    with running(create_app(model, ServerConfig(served_model_name=MODEL_NAME, api_keys=(KEY,)))) as url:
        wait_healthy(url)
        console_errors(browser)
        open_page(browser, url)
        key_box = browser.find_element(By.ID, "key-box")
        assert key_box.is_displayed()
        missing = httpx.get(f"{url}/v1/models", timeout=30).json()["error"]["message"]
        assert text_of(browser, "key-message") == missing
        # the browser logs each 401 response, and nothing else
        assert all(" 401 " in e for e in console_errors(browser))

        field = browser.find_element(By.ID, "api-key")
        field.send_keys("wrong", Keys.ENTER)
        wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=30)
        wait(browser, lambda d: text_of(d, "key-message") == wrong.json()["error"]["message"])
        field.clear()
        field.send_keys(KEY, Keys.ENTER)
        wait(browser, lambda d: text_of(d, "server-status").startswith(f"Model {MODEL_NAME}"))
        assert all(" 401 " in e for e in console_errors(browser))

        set_fields(browser, {"max_tokens": 8, "seed": 7})
        assert generate(browser) == "done"
        expected = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                              json={"model": MODEL_NAME, "prompt": "Alan Turing theorized that", "max_tokens": 8,
                                    "seed": 7, "temperature": 0.8, "top_p": 0.95, "logprobs": 5})
        assert text_of(browser, "completion") == expected.json()["choices"][0]["text"]
        # the snippets read the key from the environment rather than showing it
        snippet, out = run_snippet(browser, "copy-python", [sys.executable, "-c"], {"GPT2GEN_API_KEY": KEY})
        assert KEY not in snippet and out == expected.json()["choices"][0]["text"] + "\n"
        assert console_errors(browser) == []


def test_readable_on_a_narrow_window(page, url):
    page.set_window_size(360, 800)
    try:
        open_page(page, url)
        overflow = page.execute_script("return document.documentElement.scrollWidth - "
                                       "document.documentElement.clientWidth")
        assert overflow <= 0
        prompt = page.find_element(By.ID, "prompt").rect
        settings = page.find_element(By.ID, "settings").rect
        assert settings["y"] > prompt["y"] + prompt["height"]  # one column: the settings below
        assert settings["x"] + settings["width"] <= 360
    finally:
        page.set_window_size(1280, 1000)


def test_the_page_waits_for_the_model_to_load(browser, model_dir):
    loaded = threading.Event()

    def load():  # the server's loader, held until the page has shown that it waits
        assert loaded.wait(WAIT_SECONDS)
        return gpt2gen.GPT2.from_pretrained(model_dir)

    with running(create_app(load, ServerConfig(served_model_name=MODEL_NAME))) as url:
        console_errors(browser)
        browser.get(f"{url}/")
        try:
            loading = httpx.get(f"{url}/v1/models", timeout=30).json()["error"]["message"]
            wait(browser, lambda d: text_of(d, "server-status") == loading)
        finally:
            loaded.set()
        wait_healthy(url)
        wait(browser, lambda d: text_of(d, "server-status").startswith(f"Model {MODEL_NAME}"))
        assert all(" 503 " in e for e in console_errors(browser))  # the browser logs each 503
