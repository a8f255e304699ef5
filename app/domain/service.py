"""The domain: issue, list, revoke, look at and submit tokens. Endpoints call one method each."""

from __future__ import annotations

import json
import uuid
from typing import Any

from app.clock import Clock, isoformat
from app.config import Settings
from app.domain import issuance, policy, tokens
from app.domain.feedback import Submission
from app.domain.tokens import TokenClaims
from app.errors import (
    InvalidRequest,
    SigningDisabled,
    TokenExpired,
    TokenInvalid,
    TokenNotFound,
    TokenRevoked,
    TokenUsed,
)
from app.keys.source import KeySource
from app.ops.context import note_token
from app.store.store import Outcome, Store, TokenState, encode_field

TOKEN_PATH = "/api/v1/feedback/tokens/"


def as_uuid(text: str) -> uuid.UUID | None:
    """A token id in the path (36 characters with dashes, or 32 hex digits), else None."""
    if len(text) not in (32, 36):
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


class FeedbackService:
    def __init__(self, settings: Settings, store: Store, keys: KeySource, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.keys = keys
        self.clock = clock
        self.redirect_origins = policy.allowed_origins(settings.redirect_origins)

    def url(self, jwt: str) -> str:
        return f"{self.settings.public_url}{TOKEN_PATH}{jwt}"

    def describe(self, claims: TokenClaims, jwt: str) -> dict[str, Any]:
        return {
            "id": str(claims.token_id),
            "url": self.url(jwt),
            "expires_at": isoformat(claims.expires_at),
            "run_id": str(claims.run_id),
            "feedback_key": claims.feedback_key,
            "feedback_config": claims.config.to_json() if claims.config else None,
            **self.policy_fields(claims),
        }

    @staticmethod
    def policy_fields(claims: TokenClaims) -> dict[str, Any]:
        """Only what differs from the defaults, so default answers keep LangSmith's exact shape."""
        fields: dict[str, Any] = {}
        if claims.use != "once":
            fields["use"] = claims.use
        if claims.max_uses is not None:
            fields["max_uses"] = claims.max_uses
        if claims.confirm:
            fields["confirm"] = True
        if claims.redirect_url is not None:
            fields["redirect_url"] = claims.redirect_url
        return fields

    def status(self, claims: TokenClaims, revoked: bool, uses: int) -> str:
        if revoked:
            return "revoked"
        if policy.exhausted(claims.use, claims.max_uses, uses):
            return "used"
        if self.clock.now() >= claims.expires_at:
            return "expired"
        return "active"

    # -- issuance ---------------------------------------------------------------------------

    async def issue(self, body: Any) -> list[dict[str, Any]] | dict[str, Any]:
        signer = self.keys.keyring.signer
        if signer is None:
            raise SigningDisabled(
                "this node holds no active private key (verify-only); issue tokens elsewhere"
            )
        s = self.settings
        now = self.clock.now()
        requests, batch = issuance.parse(body, now, s.default_ttl, s.max_ttl, self.redirect_origins)
        answers, records = [], []
        created_us = int(now * 1_000_000)
        for i, req in enumerate(requests):
            token_id = uuid.uuid4()
            claims = TokenClaims(
                token_id=token_id,
                run_id=req.run_id,
                feedback_key=req.feedback_key,
                feedback_id=req.feedback_id or token_id,
                issued_at=int(now),
                expires_at=req.expires_at,
                config=req.config,
                use=req.use,
                max_uses=req.max_uses,
                confirm=req.confirm,
                redirect_url=req.redirect_url,
            )
            jwt = tokens.sign(claims, signer, s.issuer)
            if len(jwt) > tokens.MAX_TOKEN_LENGTH:
                where = f"[{i}]: " if batch else ""
                raise InvalidRequest(
                    f"{where}this feedback_config makes the token {len(jwt)} characters long; "
                    f"the limit is {tokens.MAX_TOKEN_LENGTH} (use fewer or shorter categories"
                    + (", or a shorter redirect_url)" if req.redirect_url else ")")
                )
            answers.append(self.describe(claims, jwt))
            records.append(
                (str(token_id), str(req.run_id), jwt, req.expires_at + s.leeway, created_us + i)
            )
        prune_before_us = int((now - s.max_ttl - s.leeway) * 1_000_000)
        await self.store.issue(records, prune_before_us)
        return answers if batch else answers[0]

    # -- listing and revocation -------------------------------------------------------------

    async def list_run(self, run_id: uuid.UUID, limit: int, offset: int) -> list[dict[str, Any]]:
        stored = await self.store.list_run(run_id)
        keyring = self.keys.keyring
        out = []
        for row in stored[offset : offset + limit]:
            parsed = tokens.parse(row.jwt)
            claims = TokenClaims.from_payload(json.loads(tokens.b64decode(parsed.payload_segment)))
            # A retired key revokes every token it signed.
            revoked = row.revoked or keyring.verifier(parsed.kid) is None
            item = self.describe(claims, row.jwt)
            item["created_at"] = isoformat(row.created_us / 1_000_000)
            item["status"] = self.status(claims, revoked, row.uses)
            item["uses"] = row.uses
            out.append(item)
        return out

    async def revoke(self, token_id: str) -> None:
        tid = as_uuid(token_id)
        if tid is None or not await self.store.revoke(tid):
            raise TokenNotFound("no live token has this id")
        note_token(tid)

    # -- submission -------------------------------------------------------------------------

    async def verify(self, jwt: str, expired_ok: bool = False) -> TokenClaims:
        parsed = tokens.parse(jwt)
        keyring = self.keys.keyring
        if keyring.verifier(parsed.kid) is None and await self.keys.on_unknown_kid(parsed.kid):
            keyring = self.keys.keyring
        payload = tokens.check_signature(parsed, keyring)
        try:
            return tokens.check_claims(payload, self.settings.issuer, self.clock.now(), self.settings.leeway)
        except TokenExpired:
            if not expired_ok:
                raise
            # Signature, issuer and claims all checked out before the expiry did: only time ran out.
            return TokenClaims.from_payload(payload)

    async def resolve(self, token: str, expired_ok: bool = False) -> tuple[TokenClaims, str]:
        """The path segment is a JWT, or a token id (the LangSmith SDK's way) to look up."""
        tid = as_uuid(token)
        if tid is None:
            claims = await self.verify(token, expired_ok)
            note_token(claims.token_id)
            return claims, token
        jwt = await self.store.lookup(tid)
        if jwt is None:
            raise TokenNotFound("no live token has this id")
        claims = await self.verify(jwt, expired_ok)
        if claims.token_id != tid:  # the record must name the token stored under it
            raise TokenInvalid("token record does not match its id")
        note_token(claims.token_id)
        return claims, jwt

    # -- read-only looks -------------------------------------------------------------------------

    async def info(self, token: str) -> dict[str, Any]:
        """What a page needs to render the right control; consumes nothing. An expired token
        still answers (status ``expired``) as long as it verifies otherwise."""
        claims, _ = await self.resolve(token, expired_ok=True)
        state = await self.store.state(claims.token_id)
        latest = None
        if claims.use == "update" and state.answer is not None:
            latest = {**state.answer, "revision": state.uses}
        return {
            "id": str(claims.token_id),
            "run_id": str(claims.run_id),
            "feedback_key": claims.feedback_key,
            "feedback_config": claims.config.to_json() if claims.config else None,
            "expires_at": isoformat(claims.expires_at),
            "use": claims.use,
            "max_uses": claims.max_uses,
            "confirm": claims.confirm,
            "status": self.status(claims, state.revoked, state.uses),
            "uses": state.uses,
            "latest": latest,
        }

    async def preview(self, claims: TokenClaims, submission: Submission | None) -> Outcome | None:
        """Before a confirmation page: would this submission be taken? Raises what ``record``
        would raise now; returns the stored outcome when it would be a duplicate, else None.
        The answer may still change before the person confirms: ``record`` decides."""
        state: TokenState = await self.store.state(claims.token_id)
        if state.revoked:
            raise TokenRevoked("this token was revoked")
        if (
            submission is not None
            and claims.use != "many"
            and state.answer is not None
            and state.fingerprint == submission.fingerprint()
        ):
            answer = state.answer if claims.use == "once" else {**state.answer, "revision": state.uses}
            return Outcome(answer, duplicate=True, uses=state.uses)
        if policy.exhausted(claims.use, claims.max_uses, state.uses):
            raise TokenUsed("this token was already used")
        return None

    # -- recording -------------------------------------------------------------------------------

    async def submit(self, token: str, submission: Submission) -> Outcome:
        claims, _ = await self.resolve(token)
        return await self.record(claims, submission)

    async def record(self, claims: TokenClaims, submission: Submission) -> Outcome:
        submission.check(claims.config)
        created_at = isoformat(self.clock.now())
        # Under 'many' every submission is a feedback of its own.
        feedback_id = str(uuid.uuid4() if claims.use == "many" else claims.feedback_id)
        token_id, run_id = str(claims.token_id), str(claims.run_id)
        answer = {
            "id": feedback_id,
            "run_id": run_id,
            "feedback_key": claims.feedback_key,
            **submission.to_json(),
            "created_at": created_at,
        }
        entry = {
            "id": feedback_id,
            "token_id": token_id,
            "run_id": run_id,
            "feedback_key": claims.feedback_key,
            "score": encode_field(submission.score),
            "value": encode_field(submission.value),
            "comment": encode_field(submission.comment),
            "correction": encode_field(submission.correction),
            "metadata": encode_field(submission.metadata),
            "created_at": created_at,
        }
        return await self.store.submit(
            token_id,
            submission.fingerprint(),
            claims.expires_at + self.settings.leeway,
            answer,
            entry,
            use=claims.use,
            cap=claims.max_uses,
        )
