"""The HTTP surface: a Starlette app with OpenAI's endpoints over a Backend.

    GET  /v1/models, /v1/models/{name}        the manager's loaded models
    POST /v1/completions                      text completion (streaming: server-sent events)
    POST /v1/chat/completions                 chat, with the model's chat template
    POST /v1/embeddings                       sentence embeddings (ryzjupyter.embed)
    GET  /health                              {"status": "ok"} (no key needed)

Every /v1 request needs ``Authorization: Bearer KEY`` unless the server runs without auth. Bodies
are read up to max_body_bytes (413 beyond), parsed and checked (protocol.py) before anything
reaches the engine; every failure is an OpenAI-format error with its status code and the server
goes on serving. A client that disconnects cancels its generations at the next decode step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from ryzjupyter.decoding.batching import BatcherClosed, BatcherFull

from . import protocol as P
from .protocol import APIError

log = logging.getLogger("ryzjupyter.serve")
POLL_DISCONNECT_S = 0.25      # a non-streaming request checks this often whether its client left


def create_app(backend, settings) -> Starlette:
    s = settings

    def endpoint(fn, auth=True):
        async def handler(request: Request):
            backend.traffic.begin()
            status = 500
            try:
                if auth:
                    _check_key(request, s.api_key)
                resp = await fn(request)
                status = resp.status_code
                if getattr(resp, "ryz_tracks_itself", False):
                    status = None               # the stream records its own end
                return resp
            except APIError as e:
                status = e.status
                return JSONResponse(e.body(), status_code=e.status)
            except ClientDisconnect:
                status = 499
                return JSONResponse(P.error_body("the client disconnected"), status_code=400)
            except Exception as e:              # noqa: BLE001 - never a traceback to the client
                log.exception("request failed")
                return JSONResponse(P.error_body(f"internal server error: {type(e).__name__}: {e}", "server_error"),
                                    status_code=500)
            finally:
                if status is not None:
                    backend.traffic.end(status)
                    backend.changed()
        return handler

    async def read_json(request):
        cl = request.headers.get("content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                raise APIError(400, f"Content-Length is not a number: {cl!r}") from None
            if n > s.max_body_bytes:
                raise _too_large(n, s.max_body_bytes)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > s.max_body_bytes:
                raise _too_large(size, s.max_body_bytes)
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise APIError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                           "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
                           code="invalid_json") from None

    # -- models
    async def list_models(request):
        return JSONResponse({"object": "list", "data": [P.model_object(n, backend._created)
                                                        for n in backend.model_names()]})

    async def get_model(request):
        name = request.path_params["name"]
        if name not in backend.model_names():
            raise APIError(404, f"The model '{name}' does not exist or is not loaded in this server",
                           param="model", code="model_not_found")
        return JSONResponse(P.model_object(name, backend._created))

    # -- generation
    async def completions(request):
        req = P.parse_completion(await read_json(request), s)
        return await generate(request, req, chat=False)

    async def chat_completions(request):
        req = P.parse_chat(await read_json(request), s)
        return await generate(request, req, chat=True)

    async def generate(request, req, chat):
        name, model, batcher = await run_in_threadpool(backend.batcher, req.model)
        prompts = await run_in_threadpool(_prompt_ids, model, req, chat)
        budgets = [_budget(model, ids, req, s) for ids in prompts]
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        handles = []

        def on_piece(i):
            return lambda piece: loop.call_soon_threadsafe(events.put_nowait, (i, piece, None))

        def on_done(i):
            return lambda h: loop.call_soon_threadsafe(events.put_nowait, (i, None, h))

        try:
            for p, ids in enumerate(prompts):
                for j in range(req.n):
                    i = p * req.n + j
                    sampling = dict(req.sampling)
                    if sampling["seed"] is not None:      # choices of one request differ, choice 0 = n=1's
                        sampling["seed"] = (sampling["seed"] + j) % 2 ** 63
                    handles.append(batcher.submit(ids, budgets[p], stop=req.stop, ignore_eos=req.ignore_eos,
                                                  on_piece=on_piece(i), on_done=on_done(i), **sampling))
        except BatcherFull as e:
            _cancel(handles)
            raise APIError(429, f"The server is busy: {e}", type="rate_limit_error", code="queue_full") from None
        except BatcherClosed as e:
            _cancel(handles)
            raise APIError(503, f"{e}; the model was unloaded, retry", type="server_error") from None
        except (ValueError, TypeError) as e:
            _cancel(handles)
            raise APIError(400, str(e)) from None
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        created = int(time.time())
        n_prompt = sum(len(ids) for ids in prompts)
        if req.stream:
            ended = _Ended(backend, handles, n_prompt)
            resp = StreamingResponse(_sse(ended, events, handles, rid, created, name, chat, req),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(ended.end, 499))
            resp.ryz_tracks_itself = True
            return resp
        done = 0
        checked = time.monotonic()
        try:
            while done < len(handles):
                try:
                    _, piece, h = await asyncio.wait_for(events.get(), POLL_DISCONNECT_S)
                    if h is not None:
                        done += 1
                except asyncio.TimeoutError:
                    pass
                if time.monotonic() - checked >= POLL_DISCONNECT_S:     # pieces may arrive all the time
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        backend.traffic.add(cancelled=_cancel(handles))
                        raise APIError(499, "the client disconnected")
        except asyncio.CancelledError:
            backend.traffic.add(cancelled=_cancel(handles))
            raise
        failed = next((h.error for h in handles if h.error is not None), None)
        if failed is not None:
            raise APIError(500, f"the engine failed: {type(failed).__name__}: {failed}", type="server_error")
        results = [h.result for h in handles]
        n_out = sum(len(r.tokens) for r in results)
        for r in results:
            backend.traffic.add(ttft=r.stats.ttft_s if r.tokens else None)
        backend.traffic.add(prompt=n_prompt, completion=n_out)
        build = P.chat_response if chat else P.completion_response
        return JSONResponse(build(rid, created, name, [r.text for r in results],
                                  [P.finish_reason(r.finish_reason) for r in results], n_prompt, n_out))

    # -- embeddings
    async def embeddings(request):
        model, inputs, fmt = P.parse_embeddings(await read_json(request), s)
        out = await run_in_threadpool(_embed, model, inputs, fmt)
        backend.traffic.add(prompt=out["usage"]["prompt_tokens"])
        return JSONResponse(out)

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def not_found(request, exc):
        if exc.status_code == 405:
            return JSONResponse(P.error_body(f"Method {request.method} is not allowed for {request.url.path}"),
                                status_code=405)
        return JSONResponse(P.error_body(f"Unknown request URL: {request.method} {request.url.path}. Please check "
                                         "the URL for typos (the endpoints are under /v1)", code="unknown_url"),
                            status_code=exc.status_code)

    routes = [
        Route("/v1/models", endpoint(list_models), methods=["GET"]),
        Route("/v1/models/{name:path}", endpoint(get_model), methods=["GET"]),
        Route("/v1/completions", endpoint(completions), methods=["POST"]),
        Route("/v1/chat/completions", endpoint(chat_completions), methods=["POST"]),
        Route("/v1/embeddings", endpoint(embeddings), methods=["POST"]),
        Route("/health", endpoint(health, auth=False), methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


# ----------------------------------------------------------------------------
# helpers

def _check_key(request, key):
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                       "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY); the key was printed when "
                       "the server started", code="invalid_api_key")
    if not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "Incorrect API key provided. The key was printed when the server started "
                       "(%ryz serve shows it in a notebook)", code="invalid_api_key")


def _too_large(n, limit):
    return APIError(413, f"The request body is {n} bytes; this server accepts at most {limit} bytes",
                    code="request_too_large")


def _prompt_ids(model, req, chat) -> list:
    """Each prompt's token ids (chat: the messages through the model's chat template)."""
    tok = model.tokenizer
    if chat:
        if tok is None or tok.chat_template is None:
            raise APIError(400, "this model has no chat template; use /v1/completions with a plain prompt",
                           param="messages", code="no_chat_template")
        try:
            text = tok.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
        except (ValueError, TypeError) as e:
            raise APIError(400, str(e), param="messages") from None
        return [tok.encode(text, add_special_tokens=False)]
    out = []
    for p in req.prompts:
        if isinstance(p, str):
            if tok is None:
                raise APIError(400, "this model has no tokenizer; send the prompt as token ids", param="prompt")
            out.append(tok.encode(p, add_special_tokens=True))
        else:
            bad = next((t for t in p if not 0 <= t < model.vocab_size), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} is outside the vocabulary (0..{model.vocab_size - 1})",
                               param="prompt")
            out.append(list(p))
    for ids in out:
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
    return out


def _budget(model, ids, req, s) -> int:
    """max_tokens for a prompt: as asked (the prompt and the completion must fit the context, as
    OpenAI requires), or the server's default capped by the room left."""
    ctx = model.max_context
    room = ctx - len(ids)
    if req.max_tokens is None:
        if room < 1:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, your prompt is "
                           f"{len(ids)} tokens; shorten it", param="messages" if hasattr(req, "messages") else "prompt",
                           code="context_length_exceeded")
        return min(s.default_max_tokens, room)
    if req.max_tokens > room:
        raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                       f"{len(ids) + req.max_tokens} tokens ({len(ids)} in the prompt, {req.max_tokens} in the "
                       "completion). Please reduce the length of the prompt or max_tokens",
                       param="max_tokens", code="context_length_exceeded")
    return req.max_tokens


def _cancel(handles) -> int:
    """Cancel the handles still running; returns how many."""
    n = 0
    for h in handles:
        if not h.done.is_set():
            h.cancel()
            n += 1
    return n


def _sse_line(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Ended:
    """The end of a streamed response, recorded once: by the stream when it finishes or is
    cancelled, or by the response's background task if the client left before the stream began
    (the generations are cancelled either way)."""

    def __init__(self, backend, handles, n_prompt):
        self.backend, self.handles, self.n_prompt = backend, handles, n_prompt
        self.n_out = 0
        self.done = False

    def end(self, status):
        if self.done:
            return
        self.done = True
        b = self.backend
        b.traffic.add(prompt=self.n_prompt, completion=self.n_out, cancelled=_cancel(self.handles))
        b.traffic.end(status)
        b.changed()


async def _sse(ended, events, handles, rid, created, model, chat, req):
    """The streamed response: OpenAI chunks per piece, a last chunk per choice with its
    finish_reason, the usage chunk when asked, then [DONE]. Cancelled (client gone) -> the
    generations are cancelled in `finally`."""
    status = 200
    done = 0
    try:
        if chat:
            for i in range(len(handles)):
                yield _sse_line(P.chat_chunk(rid, created, model, i, {"role": "assistant", "content": ""}))
        while done < len(handles):
            i, piece, h = await events.get()
            if piece is not None:
                yield _sse_line(P.chat_chunk(rid, created, model, i, {"content": piece}) if chat else
                                P.completion_chunk(rid, created, model, i, piece))
                continue
            done += 1
            if h.error is not None:
                status = 500
                yield _sse_line(P.error_body(f"the engine failed: {type(h.error).__name__}: {h.error}",
                                             "server_error"))
                continue
            r = h.result
            ended.n_out += len(r.tokens)
            ended.backend.traffic.add(ttft=r.stats.ttft_s if r.tokens else None)
            reason = P.finish_reason(r.finish_reason)
            yield _sse_line(P.chat_chunk(rid, created, model, i, {}, reason) if chat else
                            P.completion_chunk(rid, created, model, i, "", reason))
        if req.include_usage:
            yield _sse_line(P.usage_chunk(rid, created, model, "chat.completion.chunk" if chat else "text_completion",
                                          ended.n_prompt, ended.n_out))
        yield "data: [DONE]\n\n"
    except BaseException:
        status = 499                          # the client went away (the task was cancelled)
        raise
    finally:
        ended.end(status)


# the names /v1/embeddings answers to: the sentence embedder of ryzjupyter.embed
EMBEDDING_MODELS = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def _embed(model, inputs, fmt):
    """ryzjupyter.embed's encoder (all-MiniLM-L6-v2 on this engine's kernels): unit float32 rows in
    the order given; usage counts the encoder's tokens ([CLS] and [SEP] included, as truncated)."""
    if model not in EMBEDDING_MODELS:
        raise APIError(404, f"The model '{model}' does not exist: this server embeds with "
                       f"{' or '.join(repr(m) for m in EMBEDDING_MODELS)} (all-MiniLM-L6-v2, 384 dimensions)",
                       param="model", code="model_not_found")
    from ryzjupyter.memory.embedding import get_encoder
    try:
        enc = get_encoder(None)
    except Exception as e:                    # noqa: BLE001 - the weights are not installed: say so
        raise APIError(503, f"the embedding model is not available on this server: {e}",
                       code="model_not_available") from None
    n_tokens = sum(len(ids) for ids in enc.tokenize(inputs))
    return P.embeddings_response(model, enc.encode(inputs), n_tokens, fmt)
