"""End users in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright)
against the real service under uvicorn, with the widget embedded in a page of another origin.

Screenshots of the widget and of every HTML page go to ``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import http.server
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import API_KEY, ROOT, TOKENS, LiveServer, RedisServer, free_port, issue_token, stream_entries, token_of

from app.domain import tokens
from app.domain.feedback import FeedbackConfig
from app.keys.keyring import KeyringDir

CHROMIUM = "/usr/bin/chromium"
# As on this machine's docs: without the background-networking flags Chromium keeps trying hosts
# that the closed network refuses. Playwright gives each launch a fresh, empty profile.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
AUTH = {"X-API-Key": API_KEY}
STEP_TIMEOUT_MS = 10_000  # a bound on each wait, never a measured assertion


class HostSite:
    """Another origin (http://localhost:<port>) serving pages that embed the widget."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                body = pages.get(self.path.split("?", 1)[0])
                data = (body or "not found").encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def put(self, path: str, title: str, body: str) -> str:
        self.pages[path] = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            "<style>body{font:16px/1.5 system-ui,sans-serif;margin:2rem;color:#1d2330}"
            ".answer{border:1px solid #e2e5ea;border-radius:12px;padding:1rem 1.25rem;max-width:34rem;"
            "margin-bottom:1rem}</style></head>"
            f"<body>{body}</body></html>"
        )
        return self.origin + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Service:
    """The real service, plus what the tests ask of it over HTTP."""

    def __init__(self, server: LiveServer, redis: RedisServer, keys: Path) -> None:
        self.server = server
        self.url = server.url
        self.redis = redis
        self.keys = keys
        self.http = httpx.Client(base_url=server.url, timeout=10)

    def issue(self, **fields: Any) -> dict[str, Any]:
        """``issue_token`` on this service, with ``feedback_key="helpful"`` unless a test says otherwise."""
        return issue_token(self.http, **{"feedback_key": "helpful", **fields})

    def entries(self, answer: dict[str, Any]) -> list[dict[str, str]]:
        return [e for e in stream_entries(self.redis) if e["token_id"] == answer["id"]]

    def expired_token_url(self, config: dict[str, Any] | None = None) -> str:
        """A token that the keyring really signed, an hour past its expiry."""
        now = int(time.time())
        claims = tokens.TokenClaims(
            token_id=uuid.uuid4(), run_id=uuid.uuid4(), feedback_key="helpful", feedback_id=uuid.uuid4(),
            issued_at=now - 7200, expires_at=now - 3600,
            config=FeedbackConfig.parse(config) if config else None,
        )
        signer = KeyringDir(self.keys).load().signer
        assert signer is not None
        return f"{self.url}{TOKENS}/{tokens.sign(claims, signer, 'fbt')}/{claims.token_id}"


@pytest.fixture(scope="module")
def host() -> Iterator[HostSite]:
    site = HostSite()
    yield site
    site.close()


@pytest.fixture(scope="module")
def service(
    host: HostSite, _session_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    keys = tmp_path_factory.mktemp("browser") / "keys"
    KeyringDir(keys).init()
    env = {
        "REDIS_URL": _session_redis.url,
        "FEEDBACK_KEYS_DIR": str(keys),
        "FEEDBACK_API_KEYS": API_KEY,
        "FEEDBACK_REDIRECT_ORIGINS": host.origin,
        "FEEDBACK_DEMO": "1",
    }
    server = LiveServer(env)
    svc = Service(server, _session_redis, keys)
    yield svc
    svc.http.close()
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 720, "height": 520}, locale="en-US")
    tab = context.new_page()
    tab.set_default_timeout(STEP_TIMEOUT_MS)
    yield tab
    context.close()


@pytest.fixture
def shot() -> Callable[[Any, str], None]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def save(target: Any, name: str) -> None:
        path = ARTIFACTS / f"{name}.png"
        target.screenshot(path=str(path))
        assert path.stat().st_size > 1000, f"{name}: empty screenshot"

    return save


def embed(service: Service, url: str, *, comment: bool = False, attrs: str = "") -> str:
    extra = ' data-comment="true"' if comment else ""
    return (
        f'<div class="answer"><p>Here is the assistant\'s answer to your question.</p>'
        f'<div class="fb" data-feedback-url="{url}"{extra}{attrs}></div></div>'
    )


def widget_script(service: Service) -> str:
    return f'<script src="{service.url}/widget.js" async></script>'


# -- the widget --------------------------------------------------------------------------------------


def test_widget_on_another_origin_records_once_then_says_already_used(page, host, service, shot):
    answer = service.issue(feedback_config={"type": "continuous", "min": 0, "max": 1})
    shop = host.put("/shop.html", "Shop", embed(service, answer["url"]) + widget_script(service))
    page.goto(shop)
    helpful = page.get_by_role("button", name="Helpful", exact=True)
    helpful.wait_for()
    assert page.evaluate("location.origin") != service.url  # the widget runs on someone else's page
    assert helpful.get_attribute("aria-pressed") == "false"
    status = page.get_by_role("status")
    shot(page.locator(".answer"), "widget-thumbs")

    helpful.click()
    page.get_by_text("Your feedback has been recorded.").wait_for()
    assert helpful.get_attribute("aria-pressed") == "true"
    [entry] = service.entries(answer)
    assert entry["score"] == "1" and entry["feedback_key"] == "helpful"
    shot(page.locator(".answer"), "widget-thanks")

    page.get_by_role("button", name="Not helpful").click()
    page.get_by_text("Feedback has already been given with this link.").wait_for()
    assert "already been given" in status.inner_text()
    assert len(service.entries(answer)) == 1
    shot(page.locator(".answer"), "widget-already-used")

    # A fresh page load learns from /info that the token is used, before any click.
    page.reload()
    page.get_by_text("Feedback has already been given with this link.").wait_for()
    assert page.get_by_role("button", name="Helpful", exact=True).is_disabled()
    assert len(service.entries(answer)) == 1


def test_widget_stars_with_a_comment_by_keyboard_and_update(page, host, service, shot):
    answer = service.issue(feedback_config={"type": "continuous", "min": 1, "max": 5}, use="update")
    url = host.put("/stars.html", "Stars", embed(service, answer["url"], comment=True) + widget_script(service))
    page.goto(url)
    four = page.get_by_role("button", name="4 of 5 stars")
    four.wait_for()
    assert page.get_by_role("button", name="of 5 stars").count() == 5
    four.focus()
    page.keyboard.press("Enter")
    assert four.get_attribute("aria-pressed") == "true"
    comment = page.get_by_label("Comment (optional)")
    comment.fill("Clear, but a little long.")
    page.keyboard.press("Tab")  # from the comment box to the Send button
    page.keyboard.press("Enter")
    page.get_by_text("Your feedback has been recorded.").wait_for()
    shot(page.locator(".answer"), "widget-stars")

    page.get_by_role("button", name="2 of 5 stars").click()
    page.get_by_role("button", name="Send").click()
    page.get_by_text("Your answer has been updated.").wait_for()
    entries = service.entries(answer)
    assert [(e["score"], e["comment"], e["revision"]) for e in entries] == [
        ("4", "Clear, but a little long.", "1"), ("2", "Clear, but a little long.", "2"),
    ]
    # Reloaded, the widget shows the answer that stands.
    page.reload()
    two = page.get_by_role("button", name="2 of 5 stars")
    two.wait_for()
    page.wait_for_function(
        "() => document.querySelector('.fb').shadowRoot.querySelector('[aria-pressed=true]') !== null"
    )
    assert two.get_attribute("aria-pressed") == "true"


def test_widget_categories_text_and_expired(page, host, service, shot):
    categories = service.issue(feedback_config={"type": "categorical", "categories": [
        {"value": 1, "label": "Accurate"}, {"value": 2, "label": "Too long"}, {"value": 3, "label": "Off topic"}]})
    text = service.issue(feedback_config={"type": "freeform"})
    expired = service.expired_token_url()
    body = (
        embed(service, categories["url"], attrs=' id="cat" data-question="What best describes it?"')
        + embed(service, text["url"], attrs=' id="txt" data-question="What could be better?"')
        + embed(service, expired, attrs=' id="old"')
        + widget_script(service)
    )
    page.goto(host.put("/many.html", "Several", body))
    page.get_by_role("button", name="Too long").click()
    page.get_by_text("Your feedback has been recorded.").wait_for()
    [entry] = service.entries(categories)
    assert entry["score"] == "2"

    page.get_by_label("Your feedback").fill("More sources, please.")
    page.locator("#txt").get_by_role("button", name="Send").click()
    page.locator("#txt").get_by_text("Your feedback has been recorded.").wait_for()
    assert service.entries(text)[0]["value"] == "More sources, please."

    page.locator("#old").get_by_text("This feedback link has expired.").wait_for()
    page.set_viewport_size({"width": 720, "height": 900})
    shot(page.locator("#cat").locator(".."), "widget-categories")
    shot(page.locator("#txt").locator(".."), "widget-text")
    shot(page.locator("#old").locator(".."), "widget-expired")


def test_widget_takes_the_older_url_form_and_a_pasted_link(page, host, service):
    old, pasted = service.issue(), service.issue()
    old_url = old["url"].rsplit("/", 1)[0]  # .../tokens/<jwt>: a URL issued before ids were appended
    body = (
        embed(service, old_url, attrs=' id="old"')
        + embed(service, f"{pasted['url']}/?score=1&utm_source=mail#answer", attrs=' id="pasted"')
        + widget_script(service)
    )
    page.goto(host.put("/forms.html", "URL forms", body))
    page.locator("#old").get_by_role("button", name="Helpful", exact=True).click()
    page.locator("#old").get_by_text("Your feedback has been recorded.").wait_for()
    page.locator("#pasted").get_by_role("button", name="Not helpful").click()
    page.locator("#pasted").get_by_text("Your feedback has been recorded.").wait_for()
    assert [e["score"] for e in service.entries(old)] == ["1"]
    assert [e["score"] for e in service.entries(pasted)] == ["0"]
    # The first token under its URL as issued is the same token: used, said on load.
    page.goto(host.put("/issued.html", "As issued", embed(service, old["url"], attrs=' id="again"')
                       + widget_script(service)))
    page.locator("#again").get_by_text("Feedback has already been given with this link.").wait_for()
    assert len(service.entries(old)) == 1


def test_widget_speaks_french_when_the_page_does(page, host, service, shot):
    answer = service.issue()
    page.goto(host.put("/fr.html", "Boutique", embed(service, answer["url"], attrs=' data-lang="fr"')
                       + widget_script(service)))
    page.get_by_role("button", name="Utile", exact=True).click()
    page.get_by_text("Merci ! Votre avis a bien été enregistré.").wait_for()
    assert len(service.entries(answer)) == 1
    shot(page.locator(".answer"), "widget-thanks-fr")


def test_demo_page_shows_the_widget_working_in_one_click(page, service, shot):
    page.set_viewport_size({"width": 900, "height": 1000})
    page.goto(f"{service.url}/demo")
    page.get_by_label("Control").select_option("stars")
    page.get_by_role("button", name="Issue a token and show the widget").click()
    page.get_by_role("button", name="3 of 5 stars").click()
    page.get_by_text("Your feedback has been recorded.").wait_for()
    entries = page.locator("#entries")
    entries.get_by_text('"score":"3"').wait_for()
    assert '"feedback_key":"demo_stars"' in entries.inner_text()
    page.mouse.move(0, 0)  # no star hover preview in the picture
    shot(page, "demo")


# -- links and their pages ---------------------------------------------------------------------------


def test_confirmation_link_records_only_on_the_click(page, service, shot):
    answer = service.issue(confirm=True, feedback_config={"type": "continuous", "min": 0, "max": 1})
    link = f"{answer['url']}?score=1&utm_source=newsletter"
    page.goto(link)
    page.get_by_role("heading", name="Send this feedback?").wait_for()
    page.goto(link)  # opened twice (a scanner, then the person): still nothing recorded
    assert service.entries(answer) == []
    page.get_by_label("Comment (optional)").fill("Spot on")
    shot(page, "page-confirm")
    page.get_by_role("button", name="Send feedback").click()
    page.get_by_role("heading", name="Thank you!").wait_for()
    assert "Your feedback has been recorded." in page.content()
    [entry] = service.entries(answer)
    assert (entry["score"], entry["comment"]) == ("1", "Spot on")
    shot(page, "page-thanks")
    # The link's own answer differs from what was sent (the comment): used.
    response = page.goto(link)
    assert response is not None and response.status == 409
    page.get_by_role("heading", name="Already answered").wait_for()
    shot(page, "page-used")


def test_confirmation_then_redirect_to_the_issuers_page(page, host, service):
    thanks = host.put("/thanks.html", "Thanks", "<h1>Thanks from the shop</h1>")
    answer = service.issue(confirm=True, redirect_url=thanks)
    page.goto(f"{answer['url']}?score=0")
    page.get_by_role("button", name="Send feedback").click()
    page.get_by_role("heading", name="Thanks from the shop").wait_for()
    assert page.url == thanks
    assert [e["score"] for e in service.entries(answer)] == ["0"]


def test_a_browser_prefetch_does_not_consume_but_the_click_does(page, host, service):
    answer = service.issue()
    link = f"{answer['url']}?score=1"
    mail = host.put("/mail.html", "Mail", f'<link rel="prefetch" href="{link}"><p>Was this helpful? '
                    f'<a id="yes" href="{link}">Yes</a></p>')
    with page.expect_request(lambda r: r.url == link) as prefetch:
        page.goto(mail)
    response = prefetch.value.response()  # Chromium sent Sec-Purpose: prefetch and got its answer
    assert response is not None and response.status == 425
    assert prefetch.value.headers.get("sec-purpose") == "prefetch"
    assert service.entries(answer) == []
    page.click("#yes")
    page.get_by_role("heading", name="Thank you!").wait_for()
    # Recorded now, by the click, and for the first time (not "had already been recorded").
    assert "Your feedback has been recorded." in page.content()
    assert len(service.entries(answer)) == 1


def test_a_link_without_an_answer_is_a_picker_that_works_without_script(page, service, shot):
    answer = service.issue(feedback_config={"type": "continuous", "min": 1, "max": 5})
    page.goto(answer["url"])
    page.get_by_role("heading", name="Your feedback").wait_for()
    assert service.entries(answer) == []
    shot(page, "page-picker")
    page.get_by_label("Comment (optional)").fill("Good")
    page.get_by_role("button", name="5 of 5 stars").click()
    page.get_by_role("heading", name="Thank you!").wait_for()
    assert [(e["score"], e["comment"]) for e in service.entries(answer)] == [("5", "Good")]


def test_every_outcome_page(browser, service, shot):
    """Each page a link can end on, in English and French, as a person's browser shows it."""
    revoked, used, update = service.issue(), service.issue(), service.issue(use="update")
    service.http.delete(f"{TOKENS}/{revoked['id']}", headers=AUTH)
    service.http.post(f"{TOKENS}/{token_of(used)}", json={"score": 1})
    service.http.post(f"{TOKENS}/{token_of(update)}", json={"score": 1})
    thumbs = service.issue(feedback_config={"type": "continuous", "min": 0, "max": 1})
    dead = LiveServer({  # the same keys, but Redis is gone: 503
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "FEEDBACK_KEYS_DIR": str(service.keys),
        "FEEDBACK_API_KEYS": API_KEY, "FEEDBACK_REDIS_TIMEOUT": "1",
    })
    cases = [
        ("page-duplicate", f"{used['url']}?score=1", 200, "Thank you!", "en"),
        ("page-updated", f"{update['url']}?score=0", 200, "Thank you!", "en"),
        ("page-expired", f"{service.expired_token_url()}?score=1", 410, "Link expired", "en"),
        ("page-revoked", f"{revoked['url']}?score=1", 410, "Link withdrawn", "en"),
        ("page-invalid", f"{service.url}{TOKENS}/not-a-token?score=1", 401, "Invalid link", "en"),
        ("page-not-found", f"{service.url}{TOKENS}/{uuid.uuid4()}?score=1", 404, "Invalid link", "en"),
        ("page-rejected", f"{thumbs['url']}?score=7", 422, "Feedback not recorded", "en"),
        ("page-unavailable", f"{dead.url}{TOKENS}/{token_of(service.issue())}?score=1", 503,
         "Try again shortly", "en"),
        ("page-thanks-fr", f"{service.issue()['url']}?score=1", 200, "Merci !", "fr"),
        ("page-expired-fr", f"{service.expired_token_url()}?score=1", 410, "Lien expiré", "fr"),
        ("page-confirm-fr", f"{service.issue(confirm=True)['url']}?score=0", 200, "Envoyer cet avis ?", "fr"),
    ]
    try:
        for lang in ("en", "fr"):
            context = browser.new_context(viewport={"width": 720, "height": 520}, locale=lang)
            tab = context.new_page()
            tab.set_default_timeout(STEP_TIMEOUT_MS)
            for name, url, status, heading, wanted in cases:
                if wanted != lang:
                    continue
                response = tab.goto(url)
                assert response is not None and response.status == status, name
                tab.get_by_role("heading", name=heading).wait_for()
                assert tab.evaluate("document.documentElement.lang") == lang
                shot(tab, name)
            context.close()
    finally:
        dead.stop()
    assert len(service.entries(update)) == 2 and len(service.entries(used)) == 1
