"""Small self-contained HTML pages for people who open a feedback link in a browser.

Every page is one response: inline style, inline SVG, no script and nothing fetched from
elsewhere, so it renders in any mail client's browser and under the strict CSP that
``middleware`` sets. Strings come in each of ``LANGUAGES``, chosen by a ``lang`` parameter or the
browser's ``Accept-Language``.

Pages with a form (the confirmation page and the picker) post back to the token URL as
``application/x-www-form-urlencoded``; only that POST records anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app.domain.feedback import FeedbackConfig, Number, Submission
from app.domain.tokens import TokenClaims

LANGUAGES = ("en", "fr")
ANSWER_FIELDS = ("score", "value", "comment", "correction")

STRINGS: dict[str, dict[str, Any]] = {
    "en": {
        "thanks": ("Thank you!", "Your feedback has been recorded."),
        "updated": ("Thank you!", "Your answer has been updated."),
        "duplicate": ("Thank you!", "Your feedback had already been recorded."),
        "token_expired": ("Link expired", "This feedback link has expired."),
        "token_used": ("Already answered", "Feedback has already been given with this link."),
        "token_revoked": ("Link withdrawn", "This feedback link is no longer valid."),
        "token_invalid": ("Invalid link", "This feedback link is not valid. Check that it was copied whole."),
        "token_not_found": ("Invalid link", "This feedback link is not valid or has expired."),
        "store_unavailable": (
            "Try again shortly",
            "We could not record your feedback just now. Please try again in a moment.",
        ),
        "default": ("Feedback not recorded", "Something about this feedback link or its answer was not right."),
        "confirm": ("Send this feedback?", "Nothing is recorded until you press the button."),
        "choose": ("Your feedback", "Choose an answer; a comment is welcome too."),
        "answer": "Your answer",
        "comment": "Comment (optional)",
        "text": "Your feedback",
        "send": "Send feedback",
        "up": "Helpful",
        "down": "Not helpful",
        "stars": "{n} of {m} stars",
        "score": "Score: {n}",
    },
    "fr": {
        "thanks": ("Merci !", "Votre avis a bien été enregistré."),
        "updated": ("Merci !", "Votre réponse a été mise à jour."),
        "duplicate": ("Merci !", "Votre avis avait déjà été enregistré."),
        "token_expired": ("Lien expiré", "Ce lien pour donner votre avis a expiré."),
        "token_used": ("Déjà répondu", "Un avis a déjà été donné avec ce lien."),
        "token_revoked": ("Lien retiré", "Ce lien pour donner votre avis n’est plus valable."),
        "token_invalid": ("Lien invalide", "Ce lien n’est pas valable. Vérifiez qu’il a été copié en entier."),
        "token_not_found": ("Lien invalide", "Ce lien n’est pas valable ou a expiré."),
        "store_unavailable": (
            "Réessayez dans un instant",
            "Nous n’avons pas pu enregistrer votre avis pour le moment. Réessayez dans un instant.",
        ),
        "default": ("Avis non enregistré", "Quelque chose n’allait pas dans ce lien ou dans la réponse."),
        "confirm": ("Envoyer cet avis ?", "Rien n’est enregistré avant que vous appuyiez sur le bouton."),
        "choose": ("Votre avis", "Choisissez une réponse ; un commentaire est bienvenu aussi."),
        "answer": "Votre réponse",
        "comment": "Commentaire (facultatif)",
        "text": "Votre avis",
        "send": "Envoyer mon avis",
        "up": "Utile",
        "down": "Pas utile",
        "stars": "{n} étoile(s) sur {m}",
        "score": "Note : {n}",
    },
}

_STYLE = (
    "*{box-sizing:border-box}"
    "body{font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;display:flex;"
    "min-height:100vh;align-items:center;justify-content:center;background:#f4f5f7;color:#1d2330;padding:1rem}"
    "main{background:#fff;padding:2rem 2.25rem;border-radius:14px;width:100%;max-width:28rem;"
    "box-shadow:0 1px 3px rgba(0,0,0,.06),0 8px 24px rgba(0,0,0,.06);text-align:center}"
    "h1{font-size:1.35rem;margin:0 0 .4rem}p{margin:.25rem 0;color:#4a5163}"
    ".mark{width:3rem;height:3rem;margin:0 auto .75rem;border-radius:50%;display:flex;align-items:center;"
    "justify-content:center;font-weight:700;font-size:1.5rem;color:#fff;background:#2f855a}"
    ".mark.bad{background:#b7791f}"
    ".detail{font-size:.85rem;color:#6b7280;margin-top:.75rem}"
    "form{margin-top:1.25rem;text-align:left}"
    ".answer{display:flex;align-items:center;gap:.5rem;justify-content:center;font-weight:600;"
    "color:#1d2330;padding:.75rem;border-radius:10px;background:#f4f5f7;margin-bottom:1rem}"
    ".choices{display:flex;flex-wrap:wrap;gap:.5rem;justify-content:center;margin-bottom:1rem}"
    "label{display:block;font-size:.9rem;color:#4a5163;margin:.5rem 0 .25rem}"
    "textarea{width:100%;min-height:4.5rem;font:inherit;padding:.5rem .6rem;border:1px solid #c9ced8;"
    "border-radius:8px;resize:vertical}"
    "button{font:inherit;cursor:pointer;border-radius:10px;border:1px solid #c9ced8;background:#fff;"
    "color:#1d2330;padding:.55rem .9rem;display:inline-flex;align-items:center;gap:.4rem}"
    "button:hover{border-color:#2b6cb0}"
    "button:focus-visible,textarea:focus-visible{outline:3px solid #90cdf4;outline-offset:2px}"
    "button.primary{width:100%;justify-content:center;margin-top:1rem;background:#2b6cb0;border-color:#2b6cb0;"
    "color:#fff;font-weight:600}"
    "svg{width:1.25em;height:1.25em;fill:currentColor;flex:none}"
    ".star{color:#d69e2e}"
)
# Icon paths: Material Icons' thumb_up and star (Apache License 2.0).
_THUMB = (
    "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06L14.17 1 "
    "7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05c.09-.23"
    ".14-.47.14-.73v-2z"
)
_STAR = "M12 17.27 18.18 21l-1.64-7.03L22 9.24l-7.19-.61L12 2 9.19 8.63 2 9.24l5.46 5.73L5.82 21z"
_ICONS = {
    "up": f'<svg viewBox="0 0 24 24" aria-hidden="true"><path d="{_THUMB}"/></svg>',
    "down": f'<svg viewBox="0 0 24 24" aria-hidden="true" transform="rotate(180)"><path d="{_THUMB}"/></svg>',
    "star": f'<svg class="star" viewBox="0 0 24 24" aria-hidden="true"><path d="{_STAR}"/></svg>',
}
_SUCCESS = frozenset({"thanks", "updated", "duplicate"})


# -- negotiation -----------------------------------------------------------------------------------


def wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and (
        "application/json" not in accept or accept.find("text/html") < accept.find("application/json")
    )


def language(request: Request, chosen: str | None = None) -> str:
    """``chosen`` (a ``lang`` form field), the ``lang`` query parameter, then Accept-Language."""
    for explicit in (chosen, request.query_params.get("lang")):
        if explicit and explicit.split("-", 1)[0].lower() in LANGUAGES:
            return explicit.split("-", 1)[0].lower()
    best, best_q = LANGUAGES[0], 0.0
    for item in request.headers.get("accept-language", "").split(",")[:20]:
        tag, _, params = item.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        primary = tag.split("-", 1)[0].strip().lower()
        if primary in LANGUAGES and q > best_q:
            best, best_q = primary, q
    return best


# -- what a token offers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Choice:
    score: Number
    text: str
    icon: str = ""


def _whole(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()


def choices(config: FeedbackConfig | None, lang: str) -> tuple[str, list[Choice]]:
    """The control a token calls for: ``thumbs``, ``stars``, ``categories`` or ``text``.
    widget.js makes the same choice from the same config."""
    s = STRINGS[lang]
    if config is not None and config.type == "freeform":
        return "text", []
    if config is not None and config.type == "categorical":
        return "categories", [Choice(c.value, c.label or _number(c.value)) for c in config.categories]
    lo = config.min if config is not None else None
    hi = config.max if config is not None else None
    if _whole(lo) and _whole(hi) and lo is not None and hi is not None:
        first = max(int(lo), 1)
        if 3 <= int(hi) - first + 1 <= 10:
            m = int(hi)
            return "stars", [Choice(n, s["stars"].format(n=n, m=m), "star") for n in range(first, m + 1)]
    up: Number = hi if hi is not None else (lo + 1 if lo is not None and lo >= 1 else 1)
    down: Number = lo if lo is not None else min(0, up - 1)
    return "thumbs", [Choice(up, s["up"], "up"), Choice(down, s["down"], "down")]


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def describe(claims: TokenClaims, submission: Submission, lang: str) -> tuple[str, str]:
    """The icon and words for a submission's answer, as the person chose it."""
    kind, offered = choices(claims.config, lang)
    if submission.score is not None:
        for choice in offered:
            if choice.score == submission.score:
                return choice.icon, choice.text
        return "", STRINGS[lang]["score"].format(n=_number(submission.score))
    if isinstance(submission.value, str):
        return "", submission.value
    return "", ""


def has_answer(params: Iterable[tuple[str, str]]) -> bool:
    return any(name in ANSWER_FIELDS and raw != "" for name, raw in params)


# -- pages -----------------------------------------------------------------------------------------


def render(title: str, body: str, lang: str) -> str:
    return (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def _response(html: str, status: int, lang: str, csp: str | None = None) -> HTMLResponse:
    headers = {"Content-Language": lang, "Vary": "Accept, Accept-Language"}
    if csp is not None:
        headers["Content-Security-Policy"] = csp
    return HTMLResponse(html, status_code=status, headers=headers)


def outcome_page(key: str, status: int, detail: str | None = None, lang: str = "en") -> HTMLResponse:
    s = STRINGS[lang]
    title, message = s.get(key, s["default"])
    ok = key in _SUCCESS
    mark = f'<div class="mark{"" if ok else " bad"}" aria-hidden="true">{"✓" if ok else "!"}</div>'
    # The problem's detail is English and technical: shown only where the message is vague.
    extra = f'<p class="detail">{escape(detail)}</p>' if detail and key not in s else ""
    body = f"{mark}<h1>{escape(title)}</h1><p>{escape(message)}</p>{extra}"
    return _response(render(title, body, lang), status, lang)


def _form_csp(redirect_origin: str | None) -> str:
    # form-action also governs where the POST's redirect may lead, so the token's redirect origin
    # (already checked against FEEDBACK_REDIRECT_ORIGINS) is listed beside 'self'.
    action = "'self'" + (f" {redirect_origin}" if redirect_origin else "")
    return (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        f"form-action {action}; frame-ancestors 'none'; base-uri 'none'"
    )


def _comment_box(lang: str, prefill: str | None) -> str:
    return (
        f'<label for="comment">{escape(STRINGS[lang]["comment"])}</label>'
        f'<textarea id="comment" name="comment" maxlength="4096">{escape(prefill or "")}</textarea>'
    )


def confirm_page(
    claims: TokenClaims, submission: Submission, action: str, lang: str, redirect_origin: str | None
) -> HTMLResponse:
    """One click to record what the link says; the GET that showed it recorded nothing."""
    s = STRINGS[lang]
    title, lead = s["confirm"]
    icon, words = describe(claims, submission, lang)
    hidden = [f'<input type="hidden" name="lang" value="{lang}">']
    for name in ("score", "value", "correction"):
        raw = getattr(submission, name)
        if raw is not None:
            text = _number(raw) if name == "score" else raw
            hidden.append(f'<input type="hidden" name="{name}" value="{escape(str(text))}">')
    shown = ""
    if words:
        shown = (
            f'<div class="answer" aria-label="{escape(s["answer"])}">{_ICONS.get(icon, "")}'
            f"<span>{escape(words)}</span></div>"
        )
    body = (
        f"<h1>{escape(title)}</h1><p>{escape(lead)}</p>"
        f'<form method="post" action="{escape(action)}">{shown}{"".join(hidden)}'
        f"{_comment_box(lang, submission.comment)}"
        f'<button class="primary" type="submit">{escape(s["send"])}</button></form>'
    )
    return _response(render(title, body, lang), 200, lang, _form_csp(redirect_origin))


def choose_page(claims: TokenClaims, action: str, lang: str, redirect_origin: str | None) -> HTMLResponse:
    """A link without an answer: the choices as buttons, no script needed."""
    s = STRINGS[lang]
    title, lead = s["choose"]
    kind, offered = choices(claims.config, lang)
    lang_field = f'<input type="hidden" name="lang" value="{lang}">'
    if kind == "text":
        inner = (
            f'<label for="value">{escape(s["text"])}</label>'
            '<textarea id="value" name="value" maxlength="4096" required></textarea>'
            f'<button class="primary" type="submit">{escape(s["send"])}</button>'
        )
    else:
        buttons = "".join(
            f'<button type="submit" name="score" value="{escape(_number(c.score))}" '
            f'aria-label="{escape(c.text)}">{_ICONS.get(c.icon, "")}'
            f"<span>{escape(c.text if kind != 'stars' else _number(c.score))}</span></button>"
            for c in offered
        )
        inner = (
            f'{_comment_box(lang, None)}<div class="choices" role="group" '
            f'aria-label="{escape(s["answer"])}" style="margin-top:1rem">{buttons}</div>'
        )
    body = (
        f"<h1>{escape(title)}</h1><p>{escape(lead)}</p>"
        f'<form method="post" action="{escape(action)}">{lang_field}{inner}</form>'
    )
    return _response(render(title, body, lang), 200, lang, _form_csp(redirect_origin))


def redirect(url: str) -> Response:
    """After success, to the issuer's page (an allowed origin: checked by the caller)."""
    return RedirectResponse(url, status_code=303)
