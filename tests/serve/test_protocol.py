"""The OpenAI wire format alone (no HTTP, no engine): request checks and response shapes."""
import base64

import numpy as np
import pytest

from ryzjupyter.serve import ServeSettings
from ryzjupyter.serve import protocol as P

S = ServeSettings(max_tokens_limit=100, max_n=4, max_prompts=3)


def test_completion_request_defaults_and_fields():
    r = P.parse_completion({"model": "demo", "prompt": "hi"}, S)
    assert r.prompts == ["hi"] and r.max_tokens is None and r.n == 1 and not r.stream and r.stop == []
    assert r.sampling == {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
                          "seed": None}                               # OpenAI's defaults, not the magics'
    r = P.parse_completion({"model": "m", "prompt": [[1, 2], [3]], "max_tokens": 7, "n": 2, "stop": "x", "seed": -1,
                            "stream": True, "stream_options": {"include_usage": True}, "top_k": 5,
                            "temperature": 0, "presence_penalty": 0, "logit_bias": {}, "user": "u"}, S)
    assert r.prompts == [[1, 2], [3]] and r.max_tokens == 7 and r.n == 2 and r.stop == ["x"]
    assert r.sampling["seed"] == 2 ** 63 - 1 and r.sampling["top_k"] == 5 and r.stream and r.include_usage
    assert P.parse_completion({"model": "m", "prompt": ["a", "b"], "max_completion_tokens": 3}, S).max_tokens == 3
    assert P.parse_completion({"model": "m", "prompt": [5, 6]}, S).prompts == [[5, 6]]
    assert P.parse_completion({"model": "m", "prompt": "x", "max_tokens": 9.0}, S).max_tokens == 9


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x"}, "model"), ({"model": "m"}, "prompt"), ({"model": "m", "prompt": ["a"] * 4}, "prompt"),
    ({"model": "m", "prompt": "x", "max_tokens": 101}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "prompt": "x", "n": 5}, "n"), ({"model": "m", "prompt": "x", "top_p": 1.5}, "top_p"),
    ({"model": "m", "prompt": "x", "temperature": float("nan")}, "temperature"),
    ({"model": "m", "prompt": "x", "stop": 5}, "stop"), ({"model": "m", "prompt": "x", "suffix": "s"}, "suffix"),
    ({"model": "m", "prompt": "x", "best_of": 3}, "best_of"), ({"model": "m", "prompt": [True]}, "prompt"),
    ({"model": "m", "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "m", "prompt": "x", "frequency_penalty": 0.5}, "frequency_penalty"),
    ({"model": "m", "prompt": "x", "tool_choice": "auto"}, "tool_choice"),
])
def test_completion_request_errors(body, param):
    with pytest.raises(P.APIError) as e:
        P.parse_completion(body, S)
    assert e.value.status == 400 and e.value.param == param
    err = e.value.body()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_chat_request():
    r = P.parse_chat({"model": "m", "messages": [{"role": "developer", "content": "be brief"},
                                                 {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                              {"type": "text", "text": "b"}]},
                                                 {"role": "assistant", "content": "c"}]}, S)
    assert r.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"},
                          {"role": "assistant", "content": "c"}]
    for msgs in ([], None, [{"content": "x"}], [{"role": "user"}], [{"role": "user", "content": "x", "tool_calls": [1]}]):
        with pytest.raises(P.APIError):
            P.parse_chat({"model": "m", "messages": msgs}, S)


def test_responses_and_chunks():
    r = P.chat_response("id1", 5, "demo", ["hello"], ["stop"], 3, 2)
    assert r["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert r["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    c = P.completion_chunk("id", 1, "demo", 2, "x")
    assert c["choices"][0]["index"] == 2 and c["choices"][0]["finish_reason"] is None
    assert P.usage_chunk("id", 1, "demo", "chat.completion.chunk", 4, 6)["choices"] == []
    assert [P.finish_reason(x) for x in ("length", "context", "stop", "interrupted")] == \
        ["length", "length", "stop", "stop"]
    v = np.array([[0.5, -1.25, 3.0]], np.float32)
    b64 = P.embeddings_response("e", v, 4, "base64")["data"][0]["embedding"]
    assert np.array_equal(np.frombuffer(base64.b64decode(b64), "<f4"), v[0])
    assert P.embeddings_response("e", v, 4)["data"][0]["embedding"] == [0.5, -1.25, 3.0]
    assert P.parse_embeddings({"model": "e", "input": "x"}, S) == ("e", ["x"], "float")
    with pytest.raises(P.APIError):
        P.parse_embeddings({"model": "e", "input": [1, 2]}, S)
