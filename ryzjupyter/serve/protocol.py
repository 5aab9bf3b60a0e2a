"""OpenAI's wire format: request bodies checked into plain values, responses and stream chunks
built as the official clients expect them, errors in OpenAI's shape.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

Pure functions over dicts: no HTTP, no engine (tests/serve/test_protocol.py checks them alone).
Supported: /v1/completions (prompt as a string, strings, token ids or lists of them), /v1/chat/
completions (system/developer/user/assistant messages, text content or text parts), max_tokens
(max_completion_tokens), temperature, top_p, n, stop, seed, stream, stream_options.include_usage,
and the extensions top_k, min_p, repetition_penalty, ignore_eos (extra_body in the openai client).
Fields that would change the answer in a way the engine cannot honour (tools, logprobs, logit_bias,
non-zero presence or frequency penalties, echo, suffix, best_of, response_format other than text,
images) are refused with 400 instead of being ignored.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

__all__ = ["APIError", "GenerationParams", "CompletionRequest", "ChatRequest", "parse_completion", "parse_chat",
           "parse_embeddings", "error_body", "model_object", "finish_reason", "new_id"]


class APIError(Exception):
    """An error response: HTTP status and OpenAI's error object."""

    def __init__(self, status, message, *, type="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message, type="invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad(message, param=None, code=None):
    return APIError(400, message, param=param, code=code)


@dataclass
class GenerationParams:
    """What one request asks of the engine (for each of its n choices)."""
    model: str
    max_tokens: int | None          # None: the server's default, capped by the context
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    stop: list = field(default_factory=list)
    ignore_eos: bool = False
    sampling: dict = field(default_factory=dict)   # temperature, top_p, top_k, min_p, repetition_penalty, seed


@dataclass
class CompletionRequest(GenerationParams):
    prompts: list = field(default_factory=list)    # each a str or a list of token ids


@dataclass
class ChatRequest(GenerationParams):
    messages: list = field(default_factory=list)   # [{"role", "content": str}]


# ----------------------------------------------------------------------------
# field checks

def _number(body, key, lo, hi, default, *, lo_open=False):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(f"{key} must be a number, got {v!r}", key)
    if v < lo or (lo_open and v == lo) or v > hi:
        raise bad(f"{key} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}", key)
    return float(v)


def _integer(body, key, lo, hi, default, *, hint=""):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"{key} must be an integer, got {v!r}", key)
    if not lo <= v <= hi:
        raise bad(f"{key} must be in [{lo}, {hi}], got {v}{hint}", key)
    return v


def _bool(body, key, default=False):
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"{key} must be true or false, got {v!r}", key)
    return v


def _refuse(body, key, allowed=(None,), why="is not supported by this server"):
    v = body.get(key)
    if isinstance(v, (list, dict)) and not v:         # an empty list or object asks for nothing
        v = None
    if v not in allowed:
        raise bad(f"{key} {why}", key, "unsupported_parameter")


def _common(body: dict, limits) -> dict:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("you must provide a model parameter (a model name from GET /v1/models)", "model")
    hint = f" (this server's limit is {limits.max_tokens_limit})"
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, key, 1, limits.max_tokens_limit, None, hint=hint)
    n = _integer(body, "n", 1, limits.max_n, 1)
    stream = _bool(body, "stream")
    so = body.get("stream_options")
    include_usage = False
    if so is not None:
        if not isinstance(so, dict):
            raise bad("stream_options must be an object", "stream_options")
        if not stream:
            raise bad("stream_options is only allowed when stream is true", "stream_options")
        include_usage = _bool(so, "include_usage")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise bad("stop must be a non-empty string or a list of up to 4 non-empty strings", "stop")
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad(f"seed must be an integer, got {seed!r}", "seed")
        seed %= 2 ** 63                               # negative seeds are valid OpenAI seeds
    sampling = {
        "temperature": _number(body, "temperature", 0, 2, 1.0),
        "top_p": _number(body, "top_p", 0, 1, 1.0, lo_open=True),
        "top_k": _integer(body, "top_k", 0, 1 << 30, 0),
        "min_p": _number(body, "min_p", 0, 1, 0.0),
        "repetition_penalty": _number(body, "repetition_penalty", 0, 10, 1.0, lo_open=True),
        "seed": seed,
    }
    for key in ("presence_penalty", "frequency_penalty"):
        v = _number(body, key, -2, 2, 0.0)
        if v != 0.0:
            raise bad(f"{key} is not supported by this server (use repetition_penalty)", key, "unsupported_parameter")
    _refuse(body, "logit_bias")
    for key in ("tools", "functions"):
        _refuse(body, key, (None,), "(tool calling) is not supported by this server")
    _refuse(body, "tool_choice", (None, "none"))
    _refuse(body, "function_call", (None, "none"))
    rf = body.get("response_format")
    if rf is not None and rf != {"type": "text"}:
        raise bad("response_format other than {\"type\": \"text\"} is not supported by this server",
                  "response_format", "unsupported_parameter")
    return dict(model=model, max_tokens=max_tokens, n=n, stream=stream, include_usage=include_usage, stop=stop,
                ignore_eos=_bool(body, "ignore_eos"), sampling=sampling)


# ----------------------------------------------------------------------------
# requests

def parse_completion(body, limits) -> CompletionRequest:
    """/v1/completions: prompt is a string, a list of strings, a list of token ids or a list of
    lists of token ids (one choice set per prompt)."""
    common = _common(body, limits)
    for key in ("suffix",):
        _refuse(body, key, (None, ""))
    _refuse(body, "echo", (None, False))
    _refuse(body, "logprobs", (None,), "is not supported by this server")
    best_of = body.get("best_of")
    if best_of is not None and best_of != common["n"]:
        raise bad("best_of is not supported by this server (leave it out, or equal to n)", "best_of",
                  "unsupported_parameter")
    p = body.get("prompt")
    if isinstance(p, str):
        prompts = [p]
    elif isinstance(p, list) and p and all(_is_token(t) for t in p):
        prompts = [list(p)]
    elif isinstance(p, list) and p and all(isinstance(x, str) for x in p):
        prompts = list(p)
    elif isinstance(p, list) and p and all(isinstance(x, list) and x and all(_is_token(t) for t in x) for x in p):
        prompts = [list(x) for x in p]
    else:
        raise bad("prompt must be a string, a list of strings, a list of token ids or a list of lists of "
                  "token ids (none empty)", "prompt")
    if len(prompts) > limits.max_prompts:
        raise bad(f"at most {limits.max_prompts} prompts in one request, got {len(prompts)}", "prompt")
    if len(prompts) * common["n"] > limits.max_batch * 4:
        raise bad(f"{len(prompts)} prompts x n={common['n']} is more generations than this server takes in "
                  "one request; send fewer", "n")
    return CompletionRequest(prompts=prompts, **common)


def _is_token(t):
    return isinstance(t, int) and not isinstance(t, bool)


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def parse_chat(body, limits) -> ChatRequest:
    """/v1/chat/completions: messages with roles system (or developer), user and assistant, whose
    content is a string or a list of text parts."""
    common = _common(body, limits)
    _refuse(body, "logprobs", (None, False), "is not supported by this server")
    _refuse(body, "top_logprobs", (None,), "is not supported by this server")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad("messages must be a non-empty list of {\"role\": ..., \"content\": ...} objects", "messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content", where)
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role must be one of system, developer, user, assistant (tools are not "
                      f"supported), got {role!r}", f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad(f"{where}.content[{j}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                              "are supported", f"{where}.content")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad(f"{where}.content must be a string or a list of text parts", f"{where}.content")
        if m.get("tool_calls"):
            raise bad(f"{where}.tool_calls: tool calling is not supported by this server", f"{where}.tool_calls")
        out.append({"role": ROLES[role], "content": content})
    return ChatRequest(messages=out, **common)


def parse_embeddings(body, limits) -> tuple[str, list, str]:
    """/v1/embeddings: (model, inputs as strings, encoding_format "float" or "base64": the
    openai client asks for base64, little-endian float32)."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("you must provide a model parameter", "model")
    x = body.get("input")
    if isinstance(x, str):
        inputs = [x]
    elif isinstance(x, list) and x and all(isinstance(s, str) for s in x):
        inputs = list(x)
    else:
        raise bad("input must be a string or a non-empty list of strings", "input")
    if len(inputs) > 2048:
        raise bad(f"at most 2048 inputs in one request, got {len(inputs)}", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad(f"encoding_format must be \"float\" or \"base64\", got {fmt!r}", "encoding_format")
    if body.get("dimensions") is not None:
        raise bad("dimensions is not supported by this server", "dimensions", "unsupported_parameter")
    return model, inputs, fmt


# ----------------------------------------------------------------------------
# responses

def new_id(prefix) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def model_object(name, created=None) -> dict:
    return {"id": name, "object": "model", "created": int(created or time.time()), "owned_by": "ryzjupyter"}


def finish_reason(engine_reason) -> str:
    """The engine's finish_reason in OpenAI's words: 'length' for the token budget or the end of
    the context, 'stop' for a stop token or string (and for a generation that was stopped)."""
    return "length" if engine_reason in ("length", "context") else "stop"


def usage(prompt_tokens, completion_tokens) -> dict:
    return {"prompt_tokens": int(prompt_tokens), "completion_tokens": int(completion_tokens),
            "total_tokens": int(prompt_tokens + completion_tokens)}


def completion_response(rid, created, model, texts, reasons, prompt_tokens, completion_tokens) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                        for i, (t, r) in enumerate(zip(texts, reasons))],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_response(rid, created, model, texts, reasons, prompt_tokens, completion_tokens) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                         "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))],
            "usage": usage(prompt_tokens, completion_tokens)}


def completion_chunk(rid, created, model, index, text, reason=None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": reason}]}


def chat_chunk(rid, created, model, index, delta, reason=None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}]}


def usage_chunk(rid, created, model, obj, prompt_tokens, completion_tokens) -> dict:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def embeddings_response(model, vectors, prompt_tokens, encoding_format="float") -> dict:
    """vectors: float32 rows; base64 = the little-endian float32 bytes of each row."""
    import base64

    import numpy as np

    def enc(v):
        v = np.asarray(v, dtype="<f4").reshape(-1)
        return base64.b64encode(v.tobytes()).decode("ascii") if encoding_format == "base64" else v.tolist()
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": enc(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": int(prompt_tokens), "total_tokens": int(prompt_tokens)}}
