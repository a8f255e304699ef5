"""Links in emails and chat: prefetch and HEAD never consume, confirmation pages, the no-script
picker, form posts, redirects to allowed origins only, localised pages; the widget and demo files."""

from __future__ import annotations

import re

import pytest
from conftest import API_KEY, TOKENS, issue_token, path_of, stream_entries, token_of

from app.config import ConfigError, Settings

AUTH = {"X-API-Key": API_KEY}
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
FORM = {**HTML, "Content-Type": "application/x-www-form-urlencoded"}
THUMBS = {"type": "continuous", "min": 0, "max": 1}
APP = "https://app.example.com"

PREFETCHES = [
    {"Sec-Purpose": "prefetch"},
    {"Sec-Purpose": "prefetch;prerender"},
    {"Purpose": "prefetch"},
    {"X-Moz": "prefetch"},
    {"X-Purpose": "preview"},
]
POLICIES = [{}, {"use": "update"}, {"use": "many"}, {"confirm": True}, {"use": "many", "confirm": True}]


def _problem(response, status, code):
    assert response.status_code == status, response.text
    assert response.json()["code"] == code


def _uses(client, answer):
    return client.get(f"{TOKENS}/{token_of(answer)}/info").json()["uses"]


def _form_of(page: str) -> tuple[str, dict[str, str]]:
    action = re.search(r'<form method="post" action="([^"]+)"', page)
    assert action, page
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page))
    return action.group(1), fields


# -- requests that never consume ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "once")
@pytest.mark.parametrize("headers", PREFETCHES, ids=lambda h: next(iter(h.values())))
def test_prefetch_never_consumes(client, issue, redis_server, policy, headers):
    answer = issue(**policy)
    for url in (path_of(answer), f"{TOKENS}/{token_of(answer)}", f"{TOKENS}/{answer['id']}"):
        for accept in (HTML, {"Accept": "application/json"}):
            r = client.get(url, params={"score": "1"}, headers={**accept, **headers})
            assert r.status_code == 425 and r.content == b""
            assert r.headers["cache-control"] == "no-store"
    assert stream_entries(redis_server) == [] and _uses(client, answer) == 0
    # The person's own click afterwards is the first use.
    assert client.post(path_of(answer), json={"score": 1}).status_code == 200


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "once")
def test_head_never_consumes_whatever_the_token(client, issue, redis_server, policy):
    answer = issue(**policy)
    for spelling in (f"{token_of(answer)}/{answer['id']}", token_of(answer), answer["id"]):
        for headers in (HTML, {}):
            r = client.head(f"{TOKENS}/{spelling}", params={"score": "1"}, headers=headers)
            assert r.status_code == 200
    assert stream_entries(redis_server) == [] and _uses(client, answer) == 0


def test_a_plain_get_without_prefetch_headers_still_records(client, issue, redis_server):
    """The prefetch check looks at header values, not merely at their presence."""
    answer = issue()
    r = client.get(f"{TOKENS}/{token_of(answer)}", params={"score": "1"},
                   headers={"Sec-Purpose": "", "Purpose": "navigate", "X-Purpose": "visit"})
    assert r.status_code == 200 and len(stream_entries(redis_server)) == 1


# -- confirmation links ------------------------------------------------------------------------------


def test_confirm_link_shows_a_page_and_only_its_post_records(client, issue, redis_server):
    answer = issue(confirm=True, feedback_config=THUMBS)
    url = path_of(answer)
    for _ in range(2):  # a mail scanner, then the person: neither GET records
        page = client.get(url, params={"score": "1", "utm_source": "mail"}, headers=HTML)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "Send this feedback?" in page.text and "Helpful" in page.text
    assert stream_entries(redis_server) == []
    assert "form-action 'self';" in page.headers["content-security-policy"]
    action, fields = _form_of(page.text)
    assert action == url and fields == {"lang": "en", "score": "1"}
    r = client.post(action, data={**fields, "comment": "clear answer"}, headers=FORM)
    assert r.status_code == 200 and "Thank you" in r.text
    [entry] = stream_entries(redis_server)
    assert (entry["score"], entry["comment"], entry["token_id"]) == ("1", "clear answer", answer["id"])
    # Opening the link again: it was used, by a different submission than the link's own.
    again = client.get(url, params={"score": "1"}, headers=HTML)
    assert again.status_code == 409 and "Already answered" in again.text


def test_confirm_link_reopened_after_the_same_answer_says_already_recorded(client, issue, redis_server):
    url = f"{TOKENS}/{token_of(issue(confirm=True))}"
    _, fields = _form_of(client.get(url, params={"score": "1"}, headers=HTML).text)
    assert client.post(url, data=fields, headers=FORM).status_code == 200
    again = client.get(url, params={"score": "1"}, headers=HTML)
    assert again.status_code == 200 and "already been recorded" in again.text
    assert len(stream_entries(redis_server)) == 1


def test_confirm_link_for_json_clients_records_nothing_and_says_how(client, issue, redis_server):
    answer = issue(confirm=True)
    url = path_of(answer)
    r = client.get(url, params={"score": "1", "comment": "ok"})
    assert r.status_code == 200
    assert r.json()["confirm"] is True and r.json()["url"] == f"http://testserver{url}"
    assert r.json()["submission"] == {"score": 1, "value": None, "comment": "ok", "correction": None}
    assert stream_entries(redis_server) == []
    # A POST (the widget's, an SDK's) records directly: confirmation is about GET links.
    assert client.post(url, json={"score": 1}).status_code == 200
    assert len(stream_entries(redis_server)) == 1


def test_confirm_link_checks_the_answer_and_the_token_before_asking(client, issue, clock):
    answer = issue(confirm=True, feedback_config=THUMBS, expires_in={"minutes": 1})
    url = f"{TOKENS}/{token_of(answer)}"
    r = client.get(url, params={"score": "5"}, headers=HTML)
    assert r.status_code == 422 and "Send this feedback?" not in r.text
    client.delete(f"{TOKENS}/{answer['id']}", headers=AUTH)
    r = client.get(url, params={"score": "1"}, headers=HTML)
    assert r.status_code == 410 and "Link withdrawn" in r.text
    clock.advance(3600)
    r = client.get(url, params={"score": "1"}, headers=HTML)
    assert r.status_code == 410 and "Link expired" in r.text


def test_confirm_page_escapes_what_the_link_carries(client, issue):
    url = f"{TOKENS}/{token_of(issue(confirm=True, feedback_config={'type': 'freeform'}))}"
    evil = '"><script>alert(1)</script>'
    page = client.get(url, params={"value": evil, "comment": evil}, headers=HTML).text
    assert "<script>" not in page and "&lt;script&gt;" in page
    _, fields = _form_of(page)
    assert fields["value"] == "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"


# -- the picker: a link without an answer ------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "scores"),
    [
        (None, ["1", "0"]),
        (THUMBS, ["1", "0"]),
        ({"type": "continuous", "min": 1, "max": 5}, ["1", "2", "3", "4", "5"]),
        ({"type": "categorical", "categories": [{"value": 2, "label": "good"}, {"value": 0.5}]}, ["2", "0.5"]),
    ],
)
def test_a_browser_link_without_an_answer_offers_the_choices(client, issue, redis_server, config, scores):
    url = f"{TOKENS}/{token_of(issue(feedback_config=config))}"
    page = client.get(url, headers=HTML)
    assert page.status_code == 200 and "Your feedback" in page.text
    assert re.findall(r'<button type="submit" name="score" value="([^"]+)"', page.text) == scores
    assert stream_entries(redis_server) == []
    r = client.post(url, data={"score": scores[-1], "lang": "en"}, headers=FORM)
    assert r.status_code == 200
    [entry] = stream_entries(redis_server)
    assert float(entry["score"]) == float(scores[-1])


def test_the_picker_for_freeform_is_a_text_box(client, issue, redis_server):
    url = f"{TOKENS}/{token_of(issue(feedback_config={'type': 'freeform'}))}"
    page = client.get(url, headers=HTML).text
    assert '<textarea id="value" name="value"' in page
    assert client.post(url, data={"value": "more examples please"}, headers=FORM).status_code == 200
    assert stream_entries(redis_server)[0]["value"] == "more examples please"


def test_without_an_answer_json_clients_still_get_422(client, issue):
    _problem(client.get(f"{TOKENS}/{token_of(issue())}"), 422, "invalid_feedback")


def test_the_picker_of_a_used_token_says_so(client, issue):
    answer = issue()
    client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 1})
    r = client.get(f"{TOKENS}/{token_of(answer)}", headers=HTML)
    assert r.status_code == 409 and "Already answered" in r.text


# -- form posts --------------------------------------------------------------------------------------


def test_form_post_answers_json_to_json_clients(client, issue, redis_server):
    url = f"{TOKENS}/{token_of(issue())}"
    r = client.post(url, data={"score": "true", "comment": "via form", "lang": "fr"},
                    headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.json()["score"] == 1 and r.json()["comment"] == "via form"
    r = client.post(url, data={"score": "0"}, headers={"Accept": "application/json"})
    _problem(r, 409, "token_used")


def test_form_post_is_checked_like_a_link(client, issue, redis_server):
    url = f"{TOKENS}/{token_of(issue(feedback_config=THUMBS))}"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    _problem(client.post(url, content=b"score=1&metadata=x", headers=form), 422, "invalid_feedback")
    _problem(client.post(url, content=b"score=9", headers=form), 422, "invalid_feedback")
    _problem(client.post(url, content=b"score=%ff", headers=form), 400, "invalid_body")
    _problem(client.post(url, content=b"comment=" + b"x" * 70_000, headers=form), 413, "body_too_large")
    r = client.post(url, content=b"score=9", headers=FORM)
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
    assert stream_entries(redis_server) == []


def test_multipart_is_still_refused(client, issue):
    r = client.post(f"{TOKENS}/{token_of(issue())}", files={"score": (None, "1")})
    _problem(r, 415, "unsupported_media_type")


# -- redirects ---------------------------------------------------------------------------------------


@pytest.fixture
def redirecting(make_app):
    return make_app(redirect_origins=(APP, "http://localhost:8080"))


def test_success_redirects_to_an_allowed_origin(redirecting, redis_server):
    target = f"{APP}/thanks?from=feedback"
    answer = issue_token(redirecting, redirect_url=target)
    assert answer["redirect_url"] == target
    url = f"{TOKENS}/{token_of(answer)}"
    r = redirecting.get(url, params={"score": "1"}, headers=HTML, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == target
    # A retry of the same answer is a success too; a different one is not, and stays on our page.
    r = redirecting.get(url, params={"score": "1"}, headers=HTML, follow_redirects=False)
    assert r.status_code == 303
    r = redirecting.get(url, params={"score": "0"}, headers=HTML, follow_redirects=False)
    assert r.status_code == 409 and "location" not in r.headers
    # JSON clients get JSON, never a redirect.
    other = issue_token(redirecting, redirect_url=target)
    r = redirecting.get(f"{TOKENS}/{token_of(other)}", params={"score": "1"}, follow_redirects=False)
    assert r.status_code == 200 and r.json()["score"] == 1
    assert len(stream_entries(redis_server)) == 2


def test_confirm_page_allows_its_form_to_lead_to_the_redirect(redirecting, redis_server):
    answer = issue_token(redirecting, redirect_url="http://localhost:8080/done", confirm=True)
    url = f"{TOKENS}/{token_of(answer)}"
    page = redirecting.get(url, params={"score": "1"}, headers=HTML)
    assert "form-action 'self' http://localhost:8080;" in page.headers["content-security-policy"]
    action, fields = _form_of(page.text)
    r = redirecting.post(action, data=fields, headers=FORM, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "http://localhost:8080/done"
    assert len(stream_entries(redis_server)) == 1


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example.com/",
        "https://app.example.com.evil.example/",
        "https://app.example.com:8443/",
        "http://app.example.com/",  # another scheme is another origin
        "https://app.example.com@evil.example/",
        "https://user:pw@app.example.com/",
        "https://evil.example\\@app.example.com/",
        "https://app.example.com /x",
        "javascript:alert(1)//https://app.example.com",
        "//app.example.com/x",
        "/relative",
        "https://app.exämple.com/",
        "https://app.example.com/" + "x" * 600,
        "",
        42,
    ],
)
def test_redirect_to_an_unlisted_origin_is_refused_at_issuance(redirecting, target):
    problem = issue_token(redirecting, redirect_url=target, expect=422)
    assert problem["code"] == "invalid_request"
    assert "redirect_url" in problem["detail"]


def test_without_configured_origins_no_redirect_is_allowed(client):
    assert issue_token(client, redirect_url=f"{APP}/x", expect=422)["code"] == "invalid_request"


def test_an_origin_removed_from_the_settings_no_longer_redirects(redirecting, make_app, redis_server):
    answer = issue_token(redirecting, redirect_url=f"{APP}/thanks")
    stricter = make_app(redirect_origins=())  # same keys, same Redis, the operator changed their mind
    r = stricter.get(f"{TOKENS}/{token_of(answer)}", params={"score": "1"}, headers=HTML,
                     follow_redirects=False)
    assert r.status_code == 200 and "location" not in r.headers and "Thank you" in r.text


def test_redirect_origins_setting_is_checked_and_normalised():
    env = {"FEEDBACK_REDIRECT_ORIGINS": "https://App.Example.com:443/, http://localhost:8080"}
    assert Settings.from_env(env).redirect_origins == (APP, "http://localhost:8080")
    for bad in ("app.example.com", "ftp://app.example.com", "https://user@app.example.com"):
        with pytest.raises(ConfigError, match="FEEDBACK_REDIRECT_ORIGINS"):
            Settings.from_env({"FEEDBACK_REDIRECT_ORIGINS": bad})


# -- pages: languages, self-containment --------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "params", "lang"),
    [
        ({"Accept-Language": "fr-CH, fr;q=0.9, en;q=0.8"}, {}, "fr"),
        ({"Accept-Language": "de, en;q=0.5, fr;q=0.7"}, {}, "fr"),
        ({"Accept-Language": "de"}, {}, "en"),
        ({}, {}, "en"),
        ({"Accept-Language": "fr"}, {"lang": "en"}, "en"),
        ({"Accept-Language": "en"}, {"lang": "fr"}, "fr"),
    ],
)
def test_pages_speak_the_browsers_language(client, issue, headers, params, lang):
    r = client.get(f"{TOKENS}/{token_of(issue())}", params={"score": "1", **params}, headers={**HTML, **headers})
    assert r.status_code == 200
    assert f'<html lang="{lang}">' in r.text and r.headers["content-language"] == lang
    assert ("Merci" in r.text) == (lang == "fr") and ("Thank you" in r.text) == (lang == "en")


def test_french_confirmation_round_trip(client, issue, redis_server):
    url = f"{TOKENS}/{token_of(issue(confirm=True))}"
    page = client.get(url, params={"score": "0"}, headers={**HTML, "Accept-Language": "fr"})
    assert "Envoyer cet avis ?" in page.text and "Pas utile" in page.text
    _, fields = _form_of(page.text)
    r = client.post(url, data=fields, headers=FORM)  # no Accept-Language: the form's lang decides
    assert "Votre avis a bien été enregistré." in r.text


def test_every_page_is_self_contained(client, issue, clock):
    used, confirm = issue(), issue(confirm=True)
    client.post(f"{TOKENS}/{token_of(used)}", json={"score": 1})
    pages = [
        client.get(f"{TOKENS}/{token_of(issue())}", params={"score": "1"}, headers=HTML),
        client.get(f"{TOKENS}/{token_of(used)}", params={"score": "0"}, headers=HTML),
        client.get(f"{TOKENS}/{token_of(confirm)}", params={"score": "1"}, headers=HTML),
        client.get(f"{TOKENS}/{token_of(issue())}", headers=HTML),
        client.get(f"{TOKENS}/garbage", params={"score": "1"}, headers=HTML),
    ]
    for page in pages:
        text = page.text
        assert text.startswith("<!doctype html>") and len(text) < 12_000
        assert "<script" not in text and "<link" not in text and "src=" not in text
        assert not re.search(r"(href|action)=\"(https?:)?//", text)
        assert "default-src 'none'" in page.headers["content-security-policy"]


# -- the widget and the demo -------------------------------------------------------------------------


def test_widget_is_served_as_cacheable_javascript(client):
    r = client.get("/widget.js", headers={"Origin": "https://shop.example"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["cache-control"] == "public, max-age=3600"
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["cross-origin-resource-policy"] == "cross-origin"
    assert "content-security-policy" not in r.headers
    assert "FeedbackWidget" in r.text and len(r.content) < 20_000
    again = client.get("/widget.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == r.headers["etag"]


def test_demo_is_off_unless_asked_for(client):
    assert client.get("/demo").status_code == 404
    assert client.post("/demo/token", json={}).status_code == 404


def test_demo_issues_a_live_token_without_an_api_key(make_app, redis_server):
    demo = make_app(demo=True)
    page = demo.get("/demo")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/widget.js">' in page.text and demo.get("/demo/demo.js").status_code == 200
    token = demo.post("/demo/token", json={"control": "stars", "use": "update"}).json()
    assert token["feedback_config"] == {"type": "continuous", "min": 1, "max": 5} and token["use"] == "update"
    assert demo.post(token["url"], json={"score": 4}).status_code == 200
    [entry] = demo.get("/demo/entries", params={"run_id": token["run_id"]}).json()
    assert entry["score"] == "4" and entry["revision"] == "1"
    _problem(demo.post("/demo/token", json={"control": "dice"}), 422, "invalid_request")


def test_openapi_documents_the_new_fields_and_endpoints(client):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert {"use", "max_uses", "confirm", "redirect_url"} <= set(schemas["TokenRequest"]["properties"])
    assert "uses" in schemas["ListedToken"]["allOf"][1]["required"]
    assert "/api/v1/feedback/tokens/{token}/info" in doc["paths"] and "/widget.js" in doc["paths"]
    post = doc["paths"]["/api/v1/feedback/tokens/{token}"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in post
