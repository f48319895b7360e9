"""Rejects bad SAG, PAG and SEG arguments in txt2img/img2img API requests with HTTP 422, before any sampling.

The webui only logs exceptions raised inside script hooks, so a request cannot be refused from there;
this plain ASGI middleware reads the request body first, checks our entries of `alwayson_scripts`
and either answers 422 naming the field or hands the unchanged body on.
"""
import json

from ..core.params import InvalidParams, parse_script_args
from .paste import METHODS

GENERATION_PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")


def request_error(body: bytes, methods=METHODS):
    """The message for a request whose arguments for one of `methods` (params classes) are bad, or None
    (also for bodies that are not JSON)."""
    try:
        request = json.loads(body)
    except ValueError:
        return None
    scripts = request.get("alwayson_scripts") if isinstance(request, dict) else None
    if not isinstance(scripts, dict):
        return None
    titles = {params_class.METHOD.title.lower(): params_class for params_class in methods}
    for name, entry in scripts.items():
        params_class = titles.get(str(name).lower())
        if params_class is None:
            continue
        where = f"alwayson_scripts[{name!r}]"
        args = entry.get("args", []) if isinstance(entry, dict) else None
        if not isinstance(args, list):
            return f"{where} must be an object with an \"args\" list"
        try:
            parse_script_args(args, strict=True, defaults=params_class())
        except InvalidParams as error:
            return f"{where}: {error}"
    return None


def on_app_started(_demo, app) -> None:
    """Adds the argument check (HTTP 422) in front of the generation endpoints."""
    app.middleware_stack = None
    app.add_middleware(ArgumentValidation)
    app.build_middleware_stack()


class ArgumentValidation:
    """ASGI middleware: 422 for bad arguments of our methods on the generation endpoints."""

    def __init__(self, app, methods=METHODS):
        self.app, self.methods = app, methods

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        error = request_error(body, self.methods)
        if error is not None:
            content = json.dumps({"error": "InvalidParams", "detail": error}).encode()
            await send({"type": "http.response.start", "status": 422,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]})
            return await send({"type": "http.response.body", "body": content})

        replayed = False

        async def replay():  # the body once, then the real channel (which reports the disconnect)
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)
