"""The web frontend in a real browser: Debian's Chromium, headless, driven by Playwright.

The gateway runs in the tests' own event loop (aiohttp test server on a free port), so a
test can hold a classification open and watch the page show the stages that came before.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.config import Settings
from pipeline.classifiers.rules import RulesClassifier
from pipeline.protocols import Classifier
from pipeline.types import ClassifierInput, IntentClassification, IntentSource, WorkflowType
from tests.conftest import GatedClassifier
from tests.pg import SERVER as PG_SERVER
from tests.pg import fresh_database

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--headless",
]
STAGES = ["context", "intent", "model", "prompt"]
TIMEOUT_MS = 10_000

# The browser is shared by the module, so its tests and fixtures share the module's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


class Browser:
    """A page on the gateway, and everything the browser complained about meanwhile."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.console_errors: list[str] = []
        self.failed: list[tuple[int, str]] = []  # (status, path) of every non-2xx response
        self.requests: list[Any] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.console_errors.append(f"uncaught: {exc}"))
        page.on("response", self._response)
        page.on("request", lambda request: self.requests.append(request))

    def _console(self, message: Any) -> None:
        # Chromium logs every non-2xx fetch as a console error; those are checked in `failed`.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.console_errors.append(message.text)

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.failed.append((response.status, response.url.removeprefix(self.base_url)))

    async def goto(self, fragment: str = "") -> None:
        await self.page.goto(f"{self.base_url}/{fragment}")

    async def generate(self, prompt: str) -> None:
        """Type a prompt into the Generate form and send it."""
        await self.page.fill("#g-prompt", prompt)
        await self.page.click("#g-submit")

    def unexpected_failures(self, *allowed: tuple[int, str]) -> list[tuple[int, str]]:
        # /metrics (Prometheus) arrives with the telemetry issue; until then the dashboard gets a 404.
        return [f for f in self.failed if f not in allowed and f != (404, "/metrics")]


OpenBrowser = Callable[..., Awaitable[Browser]]
JWT_SECRET = "browser-test-jwt-secret-0123456789abcdef"
# Opens an EventSource, counts its `done` events until the browser closes it (or 10 s pass),
# and says whose request the first stream was.
EVENT_SOURCE_UNTIL_CLOSED = """(url) => new Promise((resolve) => {
    const source = new EventSource(url);
    let done = 0, user = null;
    source.addEventListener("context", (event) => { user = user || JSON.parse(event.data).user_id; });
    source.addEventListener("done", () => { done += 1; });
    const started = Date.now();
    const check = setInterval(() => {
      if (source.readyState === EventSource.CLOSED || Date.now() - started > 10000) {
        clearInterval(check);
        resolve({done, closed: source.readyState === EventSource.CLOSED, user});
        source.close();
      }
    }, 50);
  })"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Any]:
    """One headless Chromium for the module (a launch costs a second or more); pages are per test."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")
    async with playwright_api.async_playwright() as pw:
        try:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except playwright_api.Error as exc:
            pytest.skip(f"Chromium cannot start here: {exc.message.splitlines()[0]}")
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def open_browser(chromium: Any) -> AsyncIterator[OpenBrowser]:
    """Start the real gateway and a fresh browser context on it; no console errors allowed."""
    servers: list[TestServer] = []
    opened: list[Browser] = []

    async def open_(classifier: Classifier | None = None, *, width: int = 1100, **overrides: Any) -> Browser:
        settings = msgspec.structs.replace(Settings.from_env({}), **overrides)
        server = TestServer(create_app(settings, classifier=classifier))
        servers.append(server)
        await server.start_server()
        context = await chromium.new_context(viewport={"width": width, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        browser = Browser(page, str(server.make_url("")).rstrip("/"))
        opened.append(browser)
        return browser

    yield open_
    for browser in opened:
        await browser.page.context.close()
    for server in servers:
        await server.close()
    for browser in opened:
        assert browser.console_errors == []


def expect(locator: Any) -> Any:
    return playwright_api.expect(locator)


async def test_generate_shows_each_stage_as_it_arrives_then_the_result(open_browser: OpenBrowser) -> None:
    """Context shows while intent is still classifying; then four cards in order and the result."""
    gated = GatedClassifier(RulesClassifier())
    browser = await open_browser(gated)
    page = browser.page
    await browser.goto()
    await page.click(".apikey summary")
    await page.fill("#api-key", "k-123")
    await page.press("#api-key", "Enter")
    await browser.generate("change my hair to blonde with bangs")

    cards = page.locator("#g-stages > li")
    await expect(cards).to_have_count(1)  # the classifier is held: only context has arrived
    await gated.entered.wait()
    await expect(cards.first).to_have_attribute("data-stage", "context")
    await expect(cards.first.locator(".elapsed")).to_have_text(re.compile(r"^at \d+\.\d ms$"))
    assert await page.locator("#g-result").is_hidden()
    gated.gate.set()

    await expect(page.locator("#g-result")).to_be_visible()
    assert [await card.get_attribute("data-stage") for card in await cards.all()] == STAGES
    result = page.locator("#g-result-fields")
    await expect(result).to_contain_text("hair_styling")
    await expect(result).to_contain_text("flux-kontext-apps/change-haircut")
    await expect(result).to_contain_text("missing: this workflow works on an image")  # none attached
    # Said on the intent card already, before the model was picked.
    await expect(cards.nth(1)).to_contain_text("missing: this workflow works on an image")
    trace = result.locator("a[href^='/debug/traces/']")
    href = await trace.get_attribute("href") or ""
    assert re.fullmatch(r"/debug/traces/[0-9a-f]{32}", href)
    assert (await page.request.get(browser.base_url + href)).ok  # the trace of this very request
    await result.get_by_role("button", name="Show trace here").click()
    await expect(page.locator("#g-trace-note")).to_contain_text("spans")
    spans = await bar_values(page, "g-trace")
    assert {f"stage.{stage}" for stage in STAGES} <= set(spans)
    await expect(page.locator("#g-status")).to_contain_text("Done in")
    streams = [r for r in browser.requests if r.url.endswith("/api/v1/enhanced/stream")]
    assert streams[0].headers["authorization"] == "Bearer k-123"
    # The page asks once more if the trace was still open when the button was pressed.
    assert browser.unexpected_failures((404, href)) == []


async def test_a_prompt_that_asks_for_nothing_is_said_to_be_unclear(open_browser: OpenBrowser) -> None:
    """"hi" on the embedded classifier: the result says the request was unclear and a default chosen."""
    browser = await open_browser(intent_classifier="local")
    page = browser.page
    await browser.goto()
    await browser.generate("hi")
    result = page.locator("#g-result-fields")
    await expect(result).to_contain_text("unclear: the default workflow was chosen")
    await browser.generate("a lighthouse in a storm at night")
    await expect(result).to_contain_text("lighthouse")
    await expect(result).not_to_contain_text("unclear")
    assert browser.unexpected_failures() == []


async def test_an_eventsource_stops_after_done_instead_of_running_the_request_again(
        open_browser: OpenBrowser) -> None:
    """A page that leaves its EventSource open after `done` (browsers reconnect when a stream
    ends) gets one answer: the reconnect is a 204, and the browser closes the source."""
    browser = await open_browser(RulesClassifier())
    await browser.goto()
    outcome = await browser.page.evaluate(EVENT_SOURCE_UNTIL_CLOSED,
                                          "/api/v1/enhanced/stream?prompt=animate%20this%20sunset")
    assert outcome == {"done": 1, "closed": True, "user": "anonymous"}
    streams = [r for r in browser.requests if "/api/v1/enhanced/stream" in r.url]
    assert len(streams) == 2 and (await streams[1].all_headers())["last-event-id"] == "done"
    assert browser.unexpected_failures() == []


async def test_an_app_on_another_origin_calls_the_gateway_only_when_allowed(open_browser: OpenBrowser) -> None:
    """A page on one origin fetches /process from a gateway on another (a real preflight, since
    it sends Authorization): allowed by CORS_ALLOWED_ORIGINS, it reads the answer and its
    X-Trace-Id; a gateway that does not list the page's origin is a network error to it."""
    page_host = await open_browser(RulesClassifier())
    keys = "app:k-app-0123456789abcdef"
    allowing = await open_browser(RulesClassifier(), cors_allowed_origins=page_host.base_url, gateway_api_keys=keys,
                                  gateway_jwt_secret=JWT_SECRET)
    other = await open_browser(RulesClassifier(), gateway_api_keys=keys)
    await page_host.goto("health")  # a page of that origin without the web UI's CSP (connect-src 'self')
    call = """async (url) => {
        try {
          const response = await fetch(url + "/api/v1/enhanced/process", {method: "POST",
            headers: {"Authorization": "Bearer k-app-0123456789abcdef", "Content-Type": "application/json"},
            body: JSON.stringify({prompt: "change my hair to blonde with bangs"})});
          const body = await response.json();
          return {status: response.status, workflow: body.workflow_type, trace: response.headers.get("X-Trace-Id")};
        } catch (error) { return {error: error.name}; }
      }"""
    answered = await page_host.page.evaluate(call, allowing.base_url)
    assert answered["status"] == 200 and answered["workflow"] == "hair_styling"
    assert re.fullmatch(r"[0-9a-f]{32}", answered["trace"])
    assert await page_host.page.evaluate(call, other.base_url) == {"error": "TypeError"}
    page_host.console_errors.clear()  # Chromium logs the refused one: that is the point
    # EventSource sends no Authorization header: the app's JWT rides in the query instead, and
    # its reconnect after `done` is a 204.
    jwt_token = jwt.encode({"sub": "erin", "exp": int(time.time()) + 300}, JWT_SECRET, algorithm="HS256")
    streamed = await page_host.page.evaluate(EVENT_SOURCE_UNTIL_CLOSED, f"{allowing.base_url}/api/v1/enhanced/stream"
                                             f"?prompt=animate%20this%20sunset&access_token={jwt_token}")
    assert streamed == {"done": 1, "closed": True, "user": "erin"}


async def test_empty_prompt_shows_the_validation_error_in_words(open_browser: OpenBrowser) -> None:
    """Said next to the prompt field, which is marked invalid, without asking the gateway: its 422
    would count against the user's limits."""
    browser = await open_browser()
    page = browser.page
    await browser.goto()
    await browser.generate("   ")
    error = page.locator("#g-prompt-error")
    await expect(error).to_have_text("Prompt: prompt must not be empty")
    await expect(page.locator("#g-prompt")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#g-error")).to_contain_text("must not be empty")
    await expect(page.locator("#g-stages > li")).to_have_count(0)
    assert browser.unexpected_failures() == []  # no 422 from the stream: it was never asked


async def test_stop_is_a_status_not_an_alert(open_browser: OpenBrowser) -> None:
    """Stopping a stream is the user's own choice: the status says so, the alert stays empty."""
    gated = GatedClassifier(RulesClassifier())
    browser = await open_browser(gated)
    page = browser.page
    await browser.goto()
    await browser.generate("a long wait")
    await gated.entered.wait()
    await page.focus("#g-stop")
    await page.keyboard.press("Enter")
    await expect(page.locator("#g-status")).to_have_text("Stopped.")
    await expect(page.locator("#g-error")).to_be_hidden()
    # Stop is disabled once stopped: keyboard focus moves to Generate, not to the page's start.
    await expect(page.locator("#g-submit")).to_be_focused()
    gated.gate.set()


async def test_overload_and_rate_limit_are_shown_in_words(open_browser: OpenBrowser) -> None:
    """An in-band `overloaded` event and a 429 with Retry-After each become a readable alert."""
    gated = GatedClassifier(RulesClassifier())
    browser = await open_browser(
        gated,
        max_concurrent_classifications=1,
        classification_queue_timeout=0.1,
        rate_limit_requests_per_minute=2,
    )
    holder, page = browser.page, await browser.page.context.new_page()
    await browser.goto()
    await holder.fill("#g-prompt", "a cat playing in the garden")
    await holder.click("#g-submit")
    await gated.entered.wait()  # the only classification slot is taken

    await page.goto(browser.base_url + "/")
    await page.fill("#g-prompt", "a dog on the beach")  # the second page, not browser.page
    await page.click("#g-submit")
    alert = page.locator("#g-error")
    await expect(alert).to_have_text(
        "The request stopped: The gateway is overloaded right now; try again shortly. (overloaded)."
    )
    await expect(page.locator("#g-status")).to_have_text("The stream ended without a result.")
    gated.gate.set()
    await expect(holder.locator("#g-result")).to_be_visible()

    await page.click("#g-submit")  # the third request this minute, over the limit of two
    await expect(alert).to_have_text(re.compile(r"^Rate limit reached \(.+\)\. Try again in \d+ s\.$"))
    assert browser.unexpected_failures() == []
    await page.close()


USER_KEY = "alice-key-0123456789abcdef"
ADMIN_KEY = "root-key-0123456789abcdef0"


async def set_api_key(page: Any, key: str) -> None:
    details = page.locator(".apikey")
    if await details.get_attribute("open") is None:
        await details.locator("summary").click()
    await page.fill("#api-key", key)
    await page.press("#api-key", "Enter")


async def test_with_authentication_on_the_page_sends_the_key_it_is_given(open_browser: OpenBrowser) -> None:
    """The page itself is public; the API answers with the key from the field, per scope."""
    browser = await open_browser(gateway_api_keys=f"alice:{USER_KEY},root:{ADMIN_KEY}:admin")
    page = browser.page
    await browser.goto()
    await browser.generate("a cat playing in the garden")
    await expect(page.locator("#g-error")).to_contain_text("Not allowed")
    await expect(page.locator("#g-error")).to_contain_text("Check the API key")

    await set_api_key(page, USER_KEY)
    await page.click("#g-submit")
    await expect(page.locator("#g-result")).to_be_visible()
    await expect(page.locator("#g-stages > li")).to_have_count(4)
    await expect(page.locator("#g-error")).to_be_hidden()

    await page.click("nav a[data-page=dashboard]")  # metrics need an admin key
    await expect(page.locator("#d-error")).to_contain_text("needs an admin key")
    await set_api_key(page, ADMIN_KEY)
    await page.click("#d-refresh")
    await expect(page.locator("#d-error")).to_be_hidden()
    assert await bar_values(page, "chart-mix") == {"image_generation": 1.0}

    # A plain link to the trace cannot carry the key; the button can.
    await page.click("nav a[data-page=generate]")
    href = await page.locator("#g-result-fields a[href^='/debug/traces/']").get_attribute("href") or ""
    assert (await page.request.get(browser.base_url + href)).status == 401
    await page.get_by_role("button", name="Show trace here").click()
    await expect(page.locator("#g-trace-note")).to_contain_text("spans")
    assert (
        browser.unexpected_failures(
            (401, "/api/v1/enhanced/stream"),
            (403, "/api/v1/enhanced/metrics"),
            (403, "/metrics"),
            (401, href),
            (404, href),
        )
        == []
    )


class ImageEverything:
    """An 'AI' classifier that disagrees with the rules: everything is image generation."""

    name = "stub"
    version = "stub-1"

    async def quick_answer(self, query: Any) -> None:
        return None  # answers only by awaiting

    async def classify(self, query: ClassifierInput) -> IntentClassification:
        return IntentClassification(
            workflow_type=WorkflowType.IMAGE_GENERATION,
            confidence=0.91,
            reasoning="stub says image",
            source=IntentSource.LOCAL,
        )


async def test_compare_puts_ai_and_rules_side_by_side_with_differences_marked(
    open_browser: OpenBrowser,
) -> None:
    """Rows where the AI and the rules disagree are highlighted and labelled 'differs'."""
    browser = await open_browser(ImageEverything())
    page = browser.page
    await browser.goto("#compare")
    await page.fill("#c-prompt", "change my hair to blonde with bangs")
    await page.click("#c-submit")
    await expect(page.locator("#c-result")).to_be_visible()
    workflow = page.locator("#c-table tbody tr", has_text="Workflow").first
    await expect(workflow.locator("td")).to_have_text(["image_generation", "hair_styling"])
    await expect(workflow).to_have_class("differs")
    await expect(workflow.locator(".badge")).to_have_text("differs")
    model = page.locator("#c-table tbody tr", has=page.locator("th", has_text=re.compile("^Model")))
    await expect(model).to_have_class("differs")
    await expect(page.locator("#c-summary")).to_have_text(
        "The AI and the existing rules differ on: workflow, model, prompt. The AI path rewrote the prompt.")
    assert browser.unexpected_failures() == []


async def bar_values(page: Any, chart: str) -> dict[str, float]:
    bars = page.locator(f"#{chart} svg rect.bar")
    return {
        await bar.get_attribute("data-label"): float(await bar.get_attribute("data-value"))
        for bar in await bars.all()
    }


async def test_dashboard_draws_its_charts_and_refreshes_by_itself(open_browser: OpenBrowser) -> None:
    """Every chart is an SVG with bars carrying the gateway's numbers; a timer redraws them."""
    browser = await open_browser()
    page = browser.page
    await page.clock.install()
    await browser.goto()
    for prompt in ("change my hair to blonde", "a cat playing in the garden"):
        await page.fill("#g-prompt", prompt)
        await page.click("#g-submit")
        await expect(page.locator("#g-status")).to_contain_text("Done in")

    await page.click("nav a[data-page=dashboard]")
    await expect(page.locator("#d-source")).to_contain_text("in-memory metrics")
    for chart in ("chart-hourly", "chart-mix", "chart-rates", "chart-cost", "chart-latency"):
        await expect(page.locator(f"#{chart} svg[role=img] rect.bar").first).to_be_attached()
    assert await bar_values(page, "chart-mix") == {"hair_styling": 1.0, "image_generation": 1.0}
    assert sum((await bar_values(page, "chart-hourly")).values()) == 2
    assert sum((await bar_values(page, "chart-cost")).values()) > 0
    assert set(await bar_values(page, "chart-rates")) == {"Fallback rate", "Cache-hit rate"}
    latency = page.locator("#chart-latency svg[role=img]")
    await expect(latency).to_have_attribute("aria-label", re.compile("server mean"))
    assert set(await bar_values(page, "chart-latency")) == set(STAGES)

    answer = await page.request.post(
        f"{browser.base_url}/api/v1/enhanced/process", data={"prompt": "a red fox in the snow"}
    )
    assert answer.ok
    await page.clock.run_for(10_500)  # the dashboard's own refresh interval, no click
    await expect(page.locator("#chart-mix rect.bar[data-label=image_generation]")).to_have_attribute(
        "data-value", "2"
    )

    # A window picked while a refresh is still loading is drawn once that refresh ends.
    async def slow_metrics(route: Any) -> None:
        await asyncio.sleep(0.5)
        await route.continue_()

    await page.route(f"{browser.base_url}/api/v1/enhanced/metrics", slow_metrics)
    await page.click("#d-refresh")
    await page.select_option("#d-hours", "6")
    await expect(page.locator("#chart-hourly rect.bar")).to_have_count(6)
    await page.unroute(f"{browser.base_url}/api/v1/enhanced/metrics")

    # Without the server's stage histogram (/metrics), latency is the median of this tab's streams.
    await page.route(f"{browser.base_url}/metrics", lambda route: route.fulfill(status=404))
    await page.click("#d-refresh")
    latency = page.locator("#chart-latency svg[role=img]")
    await expect(latency).to_have_attribute("aria-label", re.compile("median of streams run in this tab"))
    assert list(await bar_values(page, "chart-latency")) == STAGES
    assert browser.unexpected_failures() == []


@pytest_asyncio.fixture(loop_scope="module")
async def database() -> AsyncIterator[str]:
    """A fresh database on the machine's PostgreSQL; list it before open_browser (drop after stop)."""
    async with fresh_database() as name:
        yield f"{PG_SERVER}/{name}"


async def test_dashboard_reads_the_postgres_analytics_views(
    database: str, open_browser: OpenBrowser, tmp_path: Path
) -> None:
    """With DATABASE_URL set, the charts come from the refreshed analytics views, per user and day."""
    browser = await open_browser(
        database_url=database,
        analytics_spill_path=str(tmp_path / "spill.jsonl"),
        analytics_flush_seconds=0.05,
        analytics_refresh_seconds=0.2,
    )
    page = browser.page
    answers = []
    for user, prompt in [("sarah", "change my hair to blonde with bangs")] * 3 + [("omar", "a red fox")]:
        url = f"{browser.base_url}/api/v1/enhanced/process"
        answer = await page.request.post(url, data={"prompt": prompt}, headers={"X-User-Id": user})
        answers.append(await answer.json())

    for _ in range(100):  # the writer's batch, then the views' periodic refresh
        view = await page.request.get(f"{browser.base_url}/api/v1/enhanced/analytics/intents?hours=1")
        if sum(b["total_requests"] for b in (await view.json())["buckets"]) == 4:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the analytics views never showed the four requests")

    await browser.goto("#dashboard")
    await expect(page.locator("#d-source")).to_contain_text("Source: Postgres analytics, views refreshed")
    assert await bar_values(page, "chart-mix") == {"hair_styling": 3.0, "image_generation": 1.0}
    assert list((await bar_values(page, "chart-hourly")).values())[-1] == 4.0
    hits = sum(a["cache_hit"] for a in answers) / 4
    assert await bar_values(page, "chart-rates") == {"Fallback rate": 0.0, "Cache-hit rate": hits}
    # Cost per day sums the users' rows.
    total = sum(a["estimated_cost"] for a in answers)
    assert list((await bar_values(page, "chart-cost")).values())[-1] == pytest.approx(total)
    assert browser.unexpected_failures() == []


async def test_phone_width_and_keyboard_only(open_browser: OpenBrowser) -> None:
    """At 320 px (the narrowest phones) nothing scrolls sideways; every control is labelled; Tab
    and Enter run a stream; "Skip to content" focuses the page shown instead of leaving it."""
    browser = await open_browser(width=320)
    page = browser.page
    for fragment in ("#generate", "#compare", "#dashboard"):
        await browser.goto(fragment)
        await page.wait_for_load_state("networkidle")
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, fragment
    unlabelled = await page.evaluate(
        """[...document.querySelectorAll('input, textarea, select')]
             .filter(el => !el.labels.length && !el.getAttribute('aria-label')).map(el => el.id)"""
    )
    assert unlabelled == []

    await browser.goto("#generate")
    await page.focus("#g-prompt")
    await page.keyboard.type("animate this sunset")
    for _ in range(4):  # image URL, the quality radio group, the AI toggle, Generate
        await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "g-submit"
    await page.keyboard.press("Enter")
    await expect(page.locator("#g-stages > li")).to_have_count(4)
    await expect(page.locator("#g-stages")).to_have_attribute("aria-live", "polite")

    await browser.goto("#compare")
    await page.reload()  # as a visitor arrives: focus at the page's start
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip"
    await page.keyboard.press("Enter")
    assert await page.evaluate("[location.hash, document.activeElement.id]") == ["#compare", "main"]
    await expect(page.locator("#page-compare")).to_be_visible()
    assert browser.unexpected_failures() == []


async def test_a_new_submit_takes_over_the_page_from_the_stream_it_replaces(open_browser: OpenBrowser) -> None:
    """Submitting while a stream ran left the new one saying "Stopped." with Stop disabled: the
    replaced stream's abort handling ran after the new one had set the page up."""
    gated = GatedClassifier(RulesClassifier())
    browser = await open_browser(gated)
    page = browser.page
    await browser.goto()
    await browser.generate("draw a lion")
    await gated.entered.wait()
    gated.entered.clear()
    await browser.generate("draw a tiger")
    await gated.entered.wait()  # the second stream is waiting on its classification too
    await expect(page.locator("#g-status")).to_have_text("Streaming…")
    await expect(page.locator("#g-stop")).to_be_enabled()
    gated.gate.set()
    await expect(page.locator("#g-status")).to_have_text(re.compile(r"^Done in "))
    await expect(page.locator("#g-stop")).to_be_disabled()
    await expect(page.locator("#g-error")).to_be_hidden()


class SlowWhenAsked:
    """The rules, but a prompt with "slow" in it waits for the gate."""

    name = "slow-when-asked"
    version = "slow-1"

    def __init__(self) -> None:
        self.inner = RulesClassifier()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def quick_answer(self, query: Any) -> None:
        return None

    async def classify(self, query: Any) -> Any:
        if "slow" in query.prompt:
            self.entered.set()
            await self.gate.wait()
        return await self.inner.classify(query)


async def test_compare_shows_the_latest_prompts_answer_not_the_last_to_arrive(open_browser: OpenBrowser) -> None:
    classifier = SlowWhenAsked()
    browser = await open_browser(classifier)
    page = browser.page
    await browser.goto("#compare")
    await page.fill("#c-prompt", "slow make a video of the ocean")
    await page.click("#c-submit")
    await classifier.entered.wait()
    await page.fill("#c-prompt", "change my hair to blonde")
    await page.click("#c-submit")
    final_prompt = page.locator("#c-table tbody tr", has_text="Final prompt").locator("td").first
    await expect(final_prompt).to_contain_text("blonde")
    classifier.gate.set()  # the first answer may come now: it must not replace the table
    await asyncio.sleep(0.5)
    await expect(final_prompt).to_contain_text("blonde")
    await expect(page.locator("#c-error")).to_be_hidden()


async def test_each_kind_of_503_is_said_in_its_own_words(open_browser: OpenBrowser, tmp_path: Any) -> None:
    """Every 503 read "overloaded"; a database that is down is not an overload."""
    browser = await open_browser(database_url="postgresql://postgres@127.0.0.1:1/nowhere",
                                 analytics_spill_path=str(tmp_path / "spill.jsonl"))
    await browser.goto()
    await browser.generate("a cat playing in the garden")
    await expect(browser.page.locator("#g-error")).to_have_text(
        re.compile(r"^The gateway's database is unavailable right now\. Try again in \d+ s\.$"))
    assert browser.unexpected_failures((503, "/api/v1/enhanced/stream")) == []


async def test_heartbeats_keep_a_slow_stream_open_and_silence_ends_it(open_browser: OpenBrowser) -> None:
    """A classification that waits longer than three heartbeats still finishes on the page, since
    heartbeats arrive; a stream where nothing arrives (a stalled proxy) ends in words, not a
    "Streaming…" that never ends."""
    gated = GatedClassifier(RulesClassifier())
    browser = await open_browser(gated, sse_heartbeat_seconds=0.2)
    page = browser.page
    await browser.goto()
    await browser.generate("draw a slow lion")
    await gated.entered.wait()
    await asyncio.sleep(1.5)  # over seven heartbeats; the page gives up after three missed
    await expect(page.locator("#g-status")).to_have_text("Streaming…")
    gated.gate.set()
    await expect(page.locator("#g-status")).to_have_text(re.compile(r"^Done in "))
    await expect(page.locator("#g-error")).to_be_hidden()

    async def stalled(request: web.Request) -> web.StreamResponse:
        # What a proxy that stopped forwarding looks like: the headers, one beat, then nothing.
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Heartbeat-Seconds": "0.2"})
        await response.prepare(request)
        await response.write(b": keep-alive\n\n")
        await asyncio.sleep(30)
        return response

    stub = web.Application()
    stub.router.add_post("/api/v1/enhanced/stream", stalled)
    proxy = TestServer(stub)
    await proxy.start_server()
    try:
        stream_url = str(proxy.make_url("/api/v1/enhanced/stream"))
        await page.route("**/api/v1/enhanced/stream", lambda route: route.continue_(url=stream_url))
        started = time.monotonic()
        await browser.generate("draw a tiger")
        await expect(page.locator("#g-error")).to_have_text(
            "The gateway stopped answering: nothing arrived for 0.6 s. Try again.")
        assert time.monotonic() - started < 5
        await expect(page.locator("#g-stop")).to_be_disabled()
        await expect(page.locator("#g-status")).to_have_text("")
    finally:
        await page.unroute("**/api/v1/enhanced/stream")
        await proxy.close()
