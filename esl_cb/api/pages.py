"""The web pages, served by the API process: server-rendered Jinja2 templates and small plain
JavaScript shipped in the package (esl_cb/web/), no build step, nothing from a CDN.

Sign-in: the page keeps the token in the tab's sessionStorage and sends it as a bearer header with
each request; the pages themselves hold no data until the token's requests bring it. Not a cookie:
a browser sends a cookie by itself with any request to the site, so every action (cancel, change,
an agent's state) would need a CSRF defence; a header is only sent by our own script. The token
goes when the tab closes (a wall screen signs in once per tab)."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

WEB = Path(__file__).resolve().parent.parent / "web"
PAGES = {"supervisor": "Supervisor", "agent": "Agent", "reports": "Reports"}
# No inline script, nothing from elsewhere: what a page runs is only our own files.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def mount(app: FastAPI) -> None:
    templates = Jinja2Templates(directory=str(WEB / "templates"))
    app.mount("/ui/static", StaticFiles(directory=str(WEB / "static")), name="static")

    def page(request: Request, name: str, title: str) -> HTMLResponse:
        response = templates.TemplateResponse(request, f"{name}.html", {"page": name, "title": title,
                                                                       "pages": PAGES})
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/supervisor")

    @app.get("/ui/signin", include_in_schema=False)
    def signin(request: Request) -> HTMLResponse:
        return page(request, "signin", "Sign in")

    for name, title in PAGES.items():
        def show(request: Request, name: str = name, title: str = title) -> HTMLResponse:
            return page(request, name, title)
        app.add_api_route(f"/ui/{name}", show, include_in_schema=False, methods=["GET"])
