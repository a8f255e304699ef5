"""Small self-contained HTML pages for people who open a feedback link in a browser."""

from __future__ import annotations

from html import escape

from starlette.requests import Request
from starlette.responses import HTMLResponse

STRINGS = {
    "thanks": ("Thank you!", "Your feedback has been recorded."),
    "duplicate": ("Thank you!", "Your feedback had already been recorded."),
    "token_expired": ("Link expired", "This feedback link has expired."),
    "token_used": ("Already answered", "Feedback has already been given with this link."),
    "token_revoked": ("Link withdrawn", "This feedback link is no longer valid."),
    "token_invalid": ("Invalid link", "This feedback link is not valid. Check that it was copied whole."),
    "token_not_found": ("Invalid link", "This feedback link is not valid or has expired."),
    "store_unavailable": ("Try again shortly", "We could not record your feedback just now. Please try again in a moment."),
}
DEFAULT = ("Feedback not recorded", "Something about this feedback link or its answer was not right.")

_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;display:flex;min-height:100vh;"
    "align-items:center;justify-content:center;background:#f6f7f9;color:#1d2330}"
    "main{background:#fff;padding:2rem 2.5rem;border-radius:12px;max-width:28rem;"
    "box-shadow:0 1px 4px rgba(0,0,0,.08);text-align:center}"
    "h1{font-size:1.4rem;margin:0 0 .5rem}p{margin:.25rem 0;color:#4a5163}"
    ".detail{font-size:.85rem;color:#6b7280}"
)


def wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and (
        "application/json" not in accept or accept.find("text/html") < accept.find("application/json")
    )


def render(title: str, message: str, detail: str | None = None) -> str:
    extra = f'<p class="detail">{escape(detail)}</p>' if detail else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body><main role="main"><h1>{escape(title)}</h1><p>{escape(message)}</p>{extra}'
        "</main></body></html>"
    )


def outcome_page(key: str, status: int, detail: str | None = None) -> HTMLResponse:
    title, message = STRINGS.get(key, DEFAULT)
    return HTMLResponse(render(title, message, detail), status_code=status)
