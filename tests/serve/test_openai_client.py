"""The official openai client, unchanged, against the server: models, completions, chat, streaming,
n, stop, seeds, token-id and batched prompts, async and concurrent requests, embeddings. Every text
is checked against the engine's own generate() for the same prompt alone. Every test runs with the
bundled demo model (BitNet) and with the tiny Mamba and RWKV-4 fixtures (the server module's
`manager` fixture is parametrized here: one server per model)."""
import asyncio
import re
from pathlib import Path

import pytest

from .conftest import chat_ids

openai = pytest.importorskip("openai")

PROMPT = "In the beginning God created"
REPO = Path(__file__).resolve().parents[2]
SERVED = {"demo": None,                                              # the bundled BitNet demo
          "mamba": REPO / "tests" / "fixtures" / "recurrent" / "mamba_f32",
          "rwkv": REPO / "tests" / "fixtures" / "recurrent" / "rwkv_f32"}
MESSAGES = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Who made the heaven?"}]


@pytest.fixture(scope="module", params=list(SERVED))
def manager(request):
    from ryzjupyter.manager import ModelManager
    m = ModelManager()
    folder = SERVED[request.param]
    m.load(None if folder is None else str(folder), name=request.param)
    assert m.current_name == request.param
    yield m
    m.clear()


@pytest.fixture(scope="module")
def name(manager):
    return manager.current_name


@pytest.fixture(scope="module")
def demo(manager, name):
    """The served model (named `demo` for the bundled demo, `mamba` or `rwkv` for the fixtures)."""
    return manager.get(name)


def alone(model, prompt, n, **kw):
    """What the engine gives this prompt alone (OpenAI's defaults: top_k and min_p off)."""
    kw.setdefault("top_k", 0)
    kw.setdefault("min_p", 0.0)
    kw.setdefault("top_p", 1.0)
    return model.new_session().generate(prompt, n, **kw)


def test_models(client, name):
    ids = [m.id for m in client.models.list()]
    assert ids == [name]
    m = client.models.retrieve(name)
    assert (m.id, m.object, m.owned_by) == (name, "model", "ryzjupyter")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("no-such-model")


def test_completion_greedy_equals_engine(client, demo, name):
    r = client.completions.create(model=name, prompt=PROMPT, max_tokens=24, temperature=0)
    ref = alone(demo, PROMPT, 24, temperature=0)
    assert r.object == "text_completion" and r.model == name and r.id.startswith("cmpl-")
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(demo.tokenizer.encode(PROMPT)) == ref.stats.n_prompt
    assert r.usage.completion_tokens == len(ref.tokens) == 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + 24


def test_the_manager_sees_the_server_generate(client, manager, name):
    """While the server decodes, the model is generating in the manager (the sidebar's live view);
    afterwards the manager's last generation is the request that ended last."""
    import time
    client.completions.create(model=name, prompt=PROMPT, max_tokens=17, temperature=0)
    deadline = time.time() + 10
    while manager.generating_now and time.time() < deadline:
        time.sleep(0.01)
    last = manager.last_generation
    assert last["model"] == name and last["stats"]["n_generated"] == 17 and last["finish_reason"] == "length"
    assert not manager.list()[0].busy


def test_completion_sampled_with_seed_equals_engine(client, demo, name):
    kw = dict(temperature=0.8, top_p=0.9, seed=1234)
    r = client.completions.create(model=name, prompt=PROMPT, max_tokens=30, **kw)
    assert r.choices[0].text == alone(demo, PROMPT, 30, **kw).text
    again = client.completions.create(model=name, prompt=PROMPT, max_tokens=30, **kw)
    assert again.choices[0].text == r.choices[0].text
    other = client.completions.create(model=name, prompt=PROMPT, max_tokens=30, temperature=0.8, top_p=0.9,
                                      seed=99)
    assert other.choices[0].text != r.choices[0].text
    # the engine's own options through extra_body
    r = client.completions.create(model=name, prompt=PROMPT, max_tokens=20, temperature=0.7, seed=5,
                                  extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2})
    assert r.choices[0].text == alone(demo, PROMPT, 20, temperature=0.7, seed=5, top_k=5, min_p=0.1,
                                      repetition_penalty=1.2).text


def test_completion_streaming(client, demo, name):
    chunks = list(client.completions.create(model=name, prompt=PROMPT, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == alone(demo, PROMPT, 24, temperature=0).text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 5        # it really streamed
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert len({c.id for c in chunks}) == 1
    no_usage = list(client.completions.create(model=name, prompt=PROMPT, max_tokens=5, stream=True))
    assert all(c.usage is None for c in no_usage)


def test_chat_greedy_equals_engine(client, demo, name):
    r = client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=40, temperature=0)
    ref = alone(demo, chat_ids(demo, MESSAGES), 40, temperature=0)
    msg = r.choices[0].message
    assert r.object == "chat.completion" and msg.role == "assistant" and msg.content == ref.text
    assert r.choices[0].finish_reason == ("stop" if ref.finish_reason == "stop" else "length")
    assert r.usage.prompt_tokens == len(chat_ids(demo, MESSAGES))
    assert r.usage.completion_tokens == len(ref.tokens)
    # max_completion_tokens is the newer spelling of max_tokens
    r2 = client.chat.completions.create(model=name, messages=MESSAGES, max_completion_tokens=40, temperature=0)
    assert r2.choices[0].message.content == msg.content
    # text parts and the developer role
    parts = [{"role": "developer", "content": "You are brief."},
             {"role": "user", "content": [{"type": "text", "text": "Who made "}, {"type": "text", "text": "the heaven?"}]}]
    r3 = client.chat.completions.create(model=name, messages=parts, max_tokens=40, temperature=0)
    assert r3.choices[0].message.content == msg.content


def test_chat_streaming(client, demo, name):
    stream = client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=40, temperature=0.9,
                                            seed=7, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    ref = alone(demo, chat_ids(demo, MESSAGES), 40, temperature=0.9, seed=7)
    assert text == ref.text
    assert chunks[-1].usage.completion_tokens == len(ref.tokens)
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stop_n_and_batched_prompts(client, demo, name):
    ref = alone(demo, PROMPT, 30, temperature=0).text
    # a stop string from the middle of the answer (plain letters: the tiny recurrent fixtures' random
    # weights also write bytes that are not whole UTF-8 characters)
    cut = re.findall(r"[A-Za-z]{2,}", ref[len(ref) // 3:])[0]
    r = client.completions.create(model=name, prompt=PROMPT, max_tokens=30, temperature=0, stop=[cut, "zzz"])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == ref[:ref.index(cut)]
    # n choices: choice j is seeded seed + j, so choice 0 is the n=1 answer and the others differ
    many = client.completions.create(model=name, prompt=PROMPT, max_tokens=20, temperature=1.0, seed=11, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    one = client.completions.create(model=name, prompt=PROMPT, max_tokens=20, temperature=1.0, seed=11)
    assert many.choices[0].text == one.choices[0].text
    assert many.choices[1].text == alone(demo, PROMPT, 20, temperature=1.0, seed=12).text
    assert len({c.text for c in many.choices}) == 3
    assert many.usage.completion_tokens == 60
    # several prompts in one request (strings, and token ids), choices in prompt order
    prompts = ["The LORD is my", "def main():", PROMPT]
    batch = client.completions.create(model=name, prompt=prompts, max_tokens=12, temperature=0)
    assert [c.text for c in batch.choices] == [alone(demo, p, 12, temperature=0).text for p in prompts]
    ids = demo.tokenizer.encode("The LORD is my")
    by_ids = client.completions.create(model=name, prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == batch.choices[0].text


def test_async_client_concurrent_requests(aclient, demo, server, name):
    """16 requests at once from the async client (chat and completions, some streaming): each
    answer equals its prompt's answer alone."""
    prompts = [f"{w} said unto" for w in ("Moses", "Aaron", "David", "Jesus", "Peter", "Paul", "Abraham", "Noah")]

    async def complete(p):
        r = await aclient.completions.create(model=name, prompt=p, max_tokens=16, temperature=0)
        return r.choices[0].text

    async def chat_stream(p):
        s = await aclient.chat.completions.create(model=name, messages=[{"role": "user", "content": p}],
                                                  max_tokens=16, temperature=0, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])

    async def main():
        return await asyncio.gather(*[complete(p) for p in prompts], *[chat_stream(p) for p in prompts])

    steps_before = server.backend.snapshot()
    got = asyncio.run(main())
    want = [alone(demo, p, 16, temperature=0).text for p in prompts]
    want += [alone(demo, chat_ids(demo, [{"role": "user", "content": p}]), 16, temperature=0).text for p in prompts]
    assert got == want
    engines = server.backend.snapshot()["engines"]
    assert engines and engines[0]["requests"] > steps_before["engines"][0]["requests"]


def test_embeddings(client, server, name):
    """client.embeddings.create unchanged: base64 (the client's default) and float, the vectors
    ryzjupyter.embed gives, in order; usage counts the encoder's tokens; a wrong name is a 404."""
    import numpy as np

    from ryzjupyter import embed
    from ryzjupyter.memory.embedding import get_encoder
    texts = ["The LORD is my shepherd", "def f(x): return x", ""]
    want = embed(texts)
    r = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    got = np.array([d.embedding for d in r.data], np.float32)
    assert [d.index for d in r.data] == [0, 1, 2] and r.model == "all-MiniLM-L6-v2"
    np.testing.assert_array_equal(got, want)                 # base64: the float32 bytes
    assert r.usage.prompt_tokens == sum(len(x) for x in get_encoder().tokenize(texts)) == r.usage.total_tokens
    one = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=texts[0],
                                   encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, want[0], rtol=0, atol=1e-7)   # JSON floats
    with pytest.raises(openai.NotFoundError, match="all-MiniLM-L6-v2") as e:
        client.embeddings.create(model=name, input=["a sentence"])
    assert e.value.body["code"] == "model_not_found"
    assert client.completions.create(model=name, prompt="And God said", max_tokens=4).choices[0].text
