"""The console's pages and decisions.

Every page answers HTML, or JSON when the request prefers `application/json` (the same data). Every
state-changing request is a POST that must carry the session's CSRF token (form field `csrf_token`
or header `X-CSRF-Token`) and, when the browser sends one, an Origin of this host; the session
cookie is SameSite=Strict on top. Templates autoescape everything, links are built only from our
own ids, and the Content-Security-Policy forbids scripts, so agent or processor text stays text.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from datetime import UTC, datetime, time as dtime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.auth.config import AuthConfig, is_loopback
from refund_mcp.auth.scopes import APPROVE, READ
from refund_mcp.console.identity import Human, SignInRefused, human_from
from refund_mcp.console.oidc import OidcClient
from refund_mcp.console.sessions import COOKIE, IDLE, SECURE_COOKIE, Session, SessionStore
from refund_mcp.domain.errors import Forbidden, NotSupported, RefundError, RefundNotFound, ValidationFailed
from refund_mcp.domain.models import RefundReason
from refund_mcp.service.console import STATUSES, ConsoleQueries, RefundFilter, expires_in_words

logger = logging.getLogger("refund_mcp.console")

HERE = Path(__file__).parent
LOGIN_CSRF_COOKIE = "refund_mcp_login_csrf"
MAX_FORM_BYTES = 16 * 1024
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_STATUS_FOR = {Forbidden: 403, NotSupported: 409, ValidationFailed: 400, RefundNotFound: 404}
NOTICES = {
    "approved": "Approved and sent to the processor; the status below is its answer so far.",
    "first_approval": "Your approval is recorded; a second, different approver must approve before it is sent.",
    "denied": "Denied: nothing was refunded and the amount is released.",
    "resolved_failed": "Marked failed: the amount is released.",
    "resolved_retry": "Retrying with the same idempotency key.",
    "signed_out": "You are signed out.",
}


class _Stop(Exception):
    """Answer this response now (authentication, scope or CSRF refusal)."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on our own form posts.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _local_path(value: str | None) -> str:
    """Only our own pages as a redirect target: never another host, scheme or `//host`."""
    if value and value.startswith("/console") and not value.startswith("//") and "\\" not in value:
        return value
    return "/console"


def _date(value: str | None, name: str, *, end: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationFailed(f"{name} must be a date (YYYY-MM-DD) or an ISO 8601 time", fields=[name]) from exc
    if len(value) == 10 and end:  # a whole day: up to the end of it
        parsed = datetime.combine(parsed.date(), dtime.max)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _int(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise ValidationFailed(f"{name} must be a whole number of minor units", fields=[name]) from exc
    if number < 0:
        raise ValidationFailed(f"{name} cannot be negative", fields=[name])
    return number


class Console:
    def __init__(self, app: Any, config: AuthConfig, *, oidc: OidcClient | None = None) -> None:
        self.app = app
        self.config = config
        self.oidc = oidc
        self.queries = ConsoleQueries(app.service)
        self.sessions = SessionStore(app.db, lambda: app.service.clock())  # read late: one clock for the whole app
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True, default_for_string=True)
        )
        self.templates.filters["expires_in"] = expires_in_words
        self.css = (HERE / "static" / "console.css").read_bytes()
        self._allowed_hosts = {name.strip("[]").lower() for name in config.allowed_hosts}

    # ------------------------------------------------------------------ plumbing

    def routes(self) -> list[BaseRoute]:
        table = [
            ("/console", self.queue, "GET"),
            ("/console/login", self.login_form, "GET"),
            ("/console/login", self.login, "POST"),
            ("/console/logout", self.logout, "POST"),
            ("/console/sso", self.sso_start, "GET"),
            ("/console/sso/callback", self.sso_callback, "GET"),
            ("/console/refunds", self.refunds, "GET"),
            ("/console/refunds/{refund_id}", self.refund, "GET"),
            ("/console/refunds/{refund_id}/approve", self.approve, "POST"),
            ("/console/refunds/{refund_id}/deny", self.deny, "POST"),
            ("/console/refunds/{refund_id}/resolve", self.resolve, "POST"),
            ("/console/attention", self.attention, "GET"),
            ("/console/policy", self.policy, "GET"),
            ("/console/policy/check", self.policy_check, "POST"),
            ("/console/audit", self.audit_page, "GET"),
            ("/console/audit/verify", self.audit_verify, "POST"),
            ("/console/audit/export", self.audit_export, "GET"),
            ("/console/static/console.css", self.stylesheet, "GET"),
        ]
        return [Route(path, self._guard(handler), methods=[method]) for path, handler, method in table]

    def _guard(self, handler: Any) -> Any:
        async def guarded(request: Request) -> Response:
            try:
                self._check_host(request)
                response = await handler(request)
            except _Stop as stop:
                response = stop.response
            return _secure_headers(response)

        return guarded

    def _check_host(self, request: Request) -> None:
        # DNS rebinding: a page on another name that resolves here must not reach the console.
        host = (request.url.hostname or "").lower()
        if host not in self._allowed_hosts:
            raise _Stop(PlainError("unknown Host", 421))

    def _cookie_name(self, request: Request) -> str:
        return COOKIE if is_loopback(request.url.hostname or "") else SECURE_COOKIE

    async def _session(self, request: Request, scope: str = READ) -> Session:
        session = await self.sessions.get(request.cookies.get(self._cookie_name(request)))
        if session is None:
            if _wants_json(request) or request.method != "GET":
                raise _Stop(JSONResponse({"error": "unauthorized", "error_description": "sign in at /console/login"}, status_code=401))
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise _Stop(RedirectResponse(f"/console/login?next={quote(target, safe='')}", status_code=303))
        if not session.has(scope):
            raise _Stop(self._error(request, session, 403, f"[forbidden] this needs {scope}; you ({session.actor}) have {', '.join(sorted(session.scopes))}"))
        return session

    async def _form(self, request: Request) -> FormData:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
            raise _Stop(PlainError("form too large", 413))
        return await request.form(max_files=0, max_fields=50)

    def _check_origin(self, request: Request) -> None:
        # Browsers may send "null" (privacy settings); the CSRF token and SameSite=Strict still hold then.
        origin = request.headers.get("origin")
        if origin and origin != "null" and (urlsplit(origin).hostname or "").lower() != (request.url.hostname or "").lower():
            raise _Stop(PlainError("cross-origin request refused", 403))

    async def _state_change(self, request: Request, scope: str) -> tuple[Session, FormData]:
        """A POST that changes something: a signed-in session with `scope`, same origin, the CSRF token."""
        self._check_origin(request)
        session = await self._session(request, READ)
        form = await self._form(request)
        presented = form.get("csrf_token") or request.headers.get("x-csrf-token")
        if not session.csrf_ok(presented if isinstance(presented, str) else None):
            raise _Stop(self._error(request, session, 403, "[forbidden] missing or wrong CSRF token: reload the page and try again"))
        if not session.has(scope):
            raise _Stop(self._error(request, session, 403, f"[forbidden] this needs {scope}; you ({session.actor}) have {', '.join(sorted(session.scopes))}"))
        return session, form

    def _page(self, request: Request, template: str, session: Session | None, data: BaseModel | dict[str, Any] | None, status: int = 200, **context: Any) -> Response:
        if _wants_json(request):
            payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else (data or {})
            if context.get("error"):
                payload = {"error": context["error"], **({"data": payload} if payload else {})}
            return JSONResponse(payload, status_code=status)
        notice = NOTICES.get(request.query_params.get("notice", ""))
        html = self.templates.get_template(template).render(
            session=session, data=data, notice=notice, path=request.url.path, statuses=STATUSES,
            reasons=[reason.value for reason in RefundReason], processors=self.app.processors.names(), **context,
        )
        return HTMLResponse(html, status_code=status)

    def _error(self, request: Request, session: Session | None, status: int, message: str) -> Response:
        return self._page(request, "error.html", session, None, status=status, error=message)

    def _refund_error(self, request: Request, session: Session, exc: RefundError) -> Response:
        status = next((code for kind, code in _STATUS_FOR.items() if isinstance(exc, kind)), 409)
        return self._error(request, session, status, str(exc))

    # ------------------------------------------------------------------ sign-in

    async def login_form(self, request: Request, *, error: str | None = None, status: int = 200) -> Response:
        login_csrf = secrets.token_urlsafe(32)
        next_path = _local_path(request.query_params.get("next"))
        response = self._page(
            request, "login.html", None, None, status=status, error=error, login_csrf=login_csrf, next_path=next_path,
            sso=self.oidc is not None, tokens=self.config.enabled,
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE, login_csrf, max_age=600, httponly=True, samesite="strict",
            secure=not is_loopback(request.url.hostname or ""), path="/console",
        )
        return response

    async def login(self, request: Request) -> Response:
        self._check_origin(request)
        form = await self._form(request)
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        presented = form.get("csrf_token")
        if not expected or not isinstance(presented, str) or not hmac.compare_digest(expected, presented):
            return await self.login_form(request, error="The sign-in form expired; try again.", status=403)
        token = form.get("token")
        if not isinstance(token, str) or not token.strip() or self.config.verifier is None:
            return await self.login_form(request, error="Enter your personal token.", status=400)
        access = await self.config.verifier.verify_token(token.strip())
        if access is None:
            await self._audit_sign_in("unknown", "denied", {"why": "unknown token"})
            return await self.login_form(request, error="That token is not valid.", status=401)
        try:
            human = human_from(access.client_id, access.scopes)
        except SignInRefused as exc:
            await self._audit_sign_in(access.client_id, "denied", {"why": str(exc)})
            return await self.login_form(request, error=str(exc), status=403)
        return await self._signed_in(request, human, "token", _local_path(form.get("next") if isinstance(form.get("next"), str) else None))

    async def _signed_in(self, request: Request, human: Human, via: str, next_path: str) -> Response:
        session_id = await self.sessions.create(human.actor, human.scopes, via)
        await self._audit_sign_in(human.actor, "ok", {"via": via, "scopes": sorted(human.scopes)})
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            self._cookie_name(request), session_id, max_age=int(IDLE.total_seconds()) * 24, httponly=True, samesite="strict",
            secure=not is_loopback(request.url.hostname or ""), path="/",
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/console")
        return response

    async def _audit_sign_in(self, actor: str, outcome: str, detail: dict[str, Any]) -> None:
        async with self.app.db.write() as conn:
            await audit.append(conn, AuditEntry(actor=actor, action="console.sign_in", outcome=outcome, detail=detail))

    async def logout(self, request: Request) -> Response:
        session, _form = await self._state_change(request, READ)
        await self.sessions.end(request.cookies.get(self._cookie_name(request)))
        response = RedirectResponse("/console/login?notice=signed_out", status_code=303)
        response.delete_cookie(self._cookie_name(request), path="/")
        return response

    async def sso_start(self, request: Request) -> Response:
        if self.oidc is None:
            return PlainError("single sign-on is not configured", 404)
        redirect_uri = f"{request.url.scheme}://{request.url.netloc}/console/sso/callback"
        try:
            target = await self.oidc.start(redirect_uri, _local_path(request.query_params.get("next")))
        except SignInRefused as exc:
            return await self.login_form(request, error=str(exc), status=502)
        return RedirectResponse(target, status_code=303)

    async def sso_callback(self, request: Request) -> Response:
        if self.oidc is None:
            return PlainError("single sign-on is not configured", 404)
        params = request.query_params
        if params.get("error"):
            return await self.login_form(request, error="The identity provider did not sign you in.", status=401)
        try:
            human, next_path = await self.oidc.finish(params.get("state", ""), params.get("code", ""))
        except SignInRefused as exc:
            return await self.login_form(request, error=str(exc), status=401)
        return await self._signed_in(request, human, "sso", next_path)

    # ------------------------------------------------------------------ pages

    async def queue(self, request: Request) -> Response:
        session = await self._session(request)
        items = await self.queries.approval_queue()
        total = await self.queries.pending_count()
        if _wants_json(request):
            # The CSRF token too, so a script holding the session can POST decisions (header X-CSRF-Token).
            you = {"actor": session.actor, "scopes": sorted(session.scopes), "csrf_token": session.csrf_token}
            return self._page(request, "queue.html", session, {"pending": [item.model_dump(mode="json") for item in items], "total": total, "you": you})
        return self._page(request, "queue.html", session, None, items=items, total=total)

    async def refunds(self, request: Request) -> Response:
        session = await self._session(request)
        params = request.query_params
        try:
            filters = RefundFilter(
                status=params.get("status") or None,
                processor=params.get("processor") or None,
                actor=params.get("actor") or None,
                transaction_id=params.get("transaction_id") or None,
                created_from=_date(params.get("from"), "from"),
                created_to=_date(params.get("to"), "to", end=True),
                amount_min=_int(params.get("amount_min"), "amount_min"),
                amount_max=_int(params.get("amount_max"), "amount_max"),
            )
            page = await self.queries.search(filters, cursor=params.get("cursor") or None, limit=_int(params.get("limit"), "limit") or 50)
        except (RefundError, ValidationError) as exc:
            message = str(exc) if isinstance(exc, RefundError) else "[validation_error] a filter is not valid"
            return self._error(request, session, 400, message)
        query = {key: value for key, value in params.items() if key not in ("cursor",) and value}
        return self._page(request, "refunds.html", session, page, filters=query, next_query={**query, "cursor": page.next_cursor} if page.next_cursor else None)

    async def refund(self, request: Request) -> Response:
        session = await self._session(request)
        try:
            detail = await self.queries.refund_detail(request.path_params["refund_id"])
        except RefundError as exc:
            return self._refund_error(request, session, exc)
        return self._page(request, "refund.html", session, detail, csrf=session.csrf_token)

    async def _decided(self, request: Request, refund_id: str, view: Any, notice: str) -> Response:
        if _wants_json(request):
            return JSONResponse(view.model_dump(mode="json"))
        return RedirectResponse(f"/console/refunds/{refund_id}?notice={notice}", status_code=303)

    def _note(self, form: FormData) -> str | None:
        note = form.get("note")
        if not isinstance(note, str) or not note.strip():
            return None
        return note.strip()[:500]

    async def approve(self, request: Request) -> Response:
        return await self._decide(request, self.app.service.approve)

    async def deny(self, request: Request) -> Response:
        return await self._decide(request, self.app.service.deny)

    async def _decide(self, request: Request, decision: Any) -> Response:
        session, form = await self._state_change(request, APPROVE)
        refund_id = request.path_params["refund_id"]
        try:
            view = await decision(refund_id, approver=session.actor, note=self._note(form))
        except RefundError as exc:
            return self._refund_error(request, session, exc)
        notice = {"cancelled": "denied", "pending_approval": "first_approval"}.get(view.status, "approved")
        return await self._decided(request, refund_id, view, notice)

    async def resolve(self, request: Request) -> Response:
        session, form = await self._state_change(request, APPROVE)
        refund_id = request.path_params["refund_id"]
        outcome = form.get("outcome")
        if outcome not in ("failed", "retry"):
            return self._error(request, session, 400, "[validation_error] outcome must be failed or retry")
        try:
            view = await self.app.service.resolve_queued(refund_id, outcome=outcome, operator=session.actor, note=self._note(form))
        except RefundError as exc:
            return self._refund_error(request, session, exc)
        return await self._decided(request, refund_id, view, f"resolved_{outcome}")

    async def attention(self, request: Request) -> Response:
        session = await self._session(request)
        return self._page(request, "attention.html", session, await self.queries.attention(), csrf=session.csrf_token)

    async def policy(self, request: Request, *, check: Any = None, error: str | None = None, status: int = 200, session: Session | None = None) -> Response:
        session = session or await self._session(request)
        info = await self.queries.policy_info()
        if _wants_json(request) and check is not None:
            return JSONResponse(check.model_dump(mode="json"))
        return self._page(request, "policy.html", session, info, status=status, check=check, error=error, csrf=session.csrf_token)

    async def policy_check(self, request: Request) -> Response:
        # A dry run moves nothing, but it is audited as the human's policy check: a POST with CSRF.
        session, form = await self._state_change(request, READ)
        def field(name: str) -> str:
            value = form.get(name)
            return value.strip() if isinstance(value, str) else ""

        try:
            check = await self.app.service.check_refund_policy(
                session.actor, field("transaction_id"), field("reason"), _int(field("amount_minor"), "amount_minor"), field("currency") or None
            )
        except RefundError as exc:
            if _wants_json(request):
                return JSONResponse({"error": str(exc)}, status_code=400)
            return await self.policy(request, error=str(exc), status=400, session=session)
        return await self.policy(request, check=check, session=session)

    async def audit_page(self, request: Request) -> Response:
        session = await self._session(request)
        return self._page(request, "audit.html", session, await self.queries.chain_status(), csrf=session.csrf_token)

    async def audit_verify(self, request: Request) -> Response:
        session, _form = await self._state_change(request, READ)
        status = await self.queries.verify_chain()
        if _wants_json(request):
            return JSONResponse(status.model_dump(mode="json"))
        return self._page(request, "audit.html", session, status, csrf=session.csrf_token)

    async def audit_export(self, request: Request) -> Response:
        await self._session(request)
        import json

        async def lines() -> Any:
            async for record in audit.export(self.app.db.engine):
                yield json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"

        return StreamingResponse(
            lines(), media_type="application/x-ndjson", headers={"Content-Disposition": 'attachment; filename="refund-mcp-audit.jsonl"'}
        )

    async def stylesheet(self, request: Request) -> Response:
        return Response(self.css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


def PlainError(message: str, status: int) -> Response:  # noqa: N802 - reads like the response class it returns
    return Response(message, status_code=status, media_type="text/plain")


def console_routes(app: Any, config: AuthConfig, *, oidc: OidcClient | None = None) -> list[BaseRoute]:
    return Console(app, config, oidc=oidc).routes()
