"""The HTTP face: OpenAI's `/v1/completions`, `/v1/chat/completions` and `/v1/models` on FastAPI.

Streaming answers are server-sent events, one `data: {chunk}` per piece of text and a final
`data: [DONE]`, as OpenAI's clients expect. Anything refused gets OpenAI's error JSON with a 4xx
status; a failure inside the model gets the same shape with 500, and the server goes on serving.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from xmodel2.serve.engine import Engine, Job
from xmodel2.serve.requests import ApiError, RequestParser


def create_app(engine: Engine, model_name: str) -> FastAPI:
    app = FastAPI(title="xmodel2", docs_url=None, redoc_url=None)
    parser = RequestParser(engine.tokenizer, model_name, engine.context)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def refuse(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(404)
    async def not_found(request: Request, _exc) -> JSONResponse:
        return JSONResponse(ApiError(404, f"no such endpoint: {request.url.path}").body(), status_code=404)

    @app.exception_handler(405)
    async def wrong_method(request: Request, _exc) -> JSONResponse:
        return JSONResponse(ApiError(405, f"{request.method} is not allowed on {request.url.path}").body(),
                            status_code=405)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "xmodel2"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json(request)
        job = parser.completion(body)
        return await _answer(engine, job, body, "cmpl", model_name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json(request)
        job = parser.chat(body)
        return await _answer(engine, job, body, "chatcmpl", model_name)

    return app


async def _json(request: Request):
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from None


async def _answer(engine: Engine, job: Job, body: dict, prefix: str, model_name: str):
    engine.submit(job)
    reply_id = f"{prefix}-{uuid.uuid4().hex}"
    chat = prefix == "chatcmpl"
    if body.get("stream"):
        return StreamingResponse(_events(job, reply_id, chat, model_name), media_type="text/event-stream")
    parts = []
    while True:
        event = await job.events.get()
        if event[0] == "text":
            parts.append(event[1])
        elif event[0] == "error":
            raise ApiError(500, f"generation failed: {event[1]}", kind="server_error")
        else:
            _, finish_reason, count = event
            break
    text = "".join(parts)
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
              if chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason})
    return {"id": reply_id, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model_name, "choices": [choice], "usage": _usage(job, count)}


async def _events(job: Job, reply_id: str, chat: bool, model_name: str):
    """SSE lines for one streamed answer; a client that goes away cancels its row."""
    head = {"id": reply_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model_name}

    def chunk(text: str | None, finish_reason: str | None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"

    try:
        if chat:
            yield chunk(None, None, first=True)
        while True:
            event = await job.events.get()
            if event[0] == "text":
                yield chunk(event[1], None)
            elif event[0] == "error":
                error = ApiError(500, f"generation failed: {event[1]}", kind="server_error")
                yield f"data: {json.dumps(error.body())}\n\n"
                break
            else:
                yield chunk(None, event[1])
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True  # harmless once finished; stops the row if the client left early


def _usage(job: Job, completion_tokens: int) -> dict:
    prompt = len(job.prompt_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}
