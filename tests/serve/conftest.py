"""A real server on 127.0.0.1 (uvicorn on a free port) over a model manager with the bundled demo
model; the official openai client talks to it."""
import os

import pytest

pytest.importorskip("starlette", reason="the server needs the serve extra (in the test extras)")
pytest.importorskip("uvicorn", reason="the server needs the serve extra (in the test extras)")

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def manager():
    from ryzjupyter.manager import ModelManager
    m = ModelManager()
    m.load(None)                                   # the bundled demo model, named "demo"
    yield m
    m.clear()


@pytest.fixture(scope="module")
def server(manager):
    from ryzjupyter import serve
    h = serve.start(manager, port=0, max_tokens_limit=512, max_body_bytes=64 * 1024)
    yield h
    serve.stop()


@pytest.fixture(scope="module")
def demo(manager):
    return manager.get("demo")


@pytest.fixture
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url, api_key=server.api_key, max_retries=0, timeout=120)


@pytest.fixture
def aclient(server):
    openai = pytest.importorskip("openai")
    return openai.AsyncOpenAI(base_url=server.url, api_key=server.api_key, max_retries=0, timeout=120)


def chat_ids(model, messages):
    """The prompt ids a chat request becomes (the server renders the template like this)."""
    tok = model.tokenizer
    return tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False)
