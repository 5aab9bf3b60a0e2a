"""Speculative decoding is lossless: the acceptance rule's emitted distribution is exactly p
(analytic), the whole pipeline samples the target's joint distribution (chi-square and TV on a
tiny vocabulary, with a deliberately wrong rule that the same test catches), and greedy / seeded
output, stop rules, budgets and the context limit are those of plain decoding for every drafter."""
import numpy as np
import pytest
from scipy import stats as sps

from ryzjupyter.decoding import speculative
from ryzjupyter.decoding.generation import LanguageModel
from ryzjupyter.engine.kv_cache import KVCache

DRAFTS = ["lookup", "adjacency", "auto"]


# ---------------------------------------------------------------- the rule, exactly

def _cases():
    r = np.random.default_rng(0)
    V = 12
    yield "p == q", (lambda p: (p, p.copy()))(r.dirichlet(np.ones(V)))
    p = np.r_[r.dirichlet(np.ones(6)), np.zeros(6)]
    q = np.r_[np.zeros(6), r.dirichlet(np.ones(6))]
    yield "disjoint supports", (p, q)
    yield "one-hot q", (r.dirichlet(np.ones(V)), np.eye(V)[3])
    q = r.dirichlet(np.ones(V)); q[:4] = 0; q /= q.sum()
    yield "q zero where p > 0", (r.dirichlet(np.ones(V)), q)
    p = r.dirichlet(np.ones(V)); p[5:9] = 0; p /= p.sum()
    yield "p zero where q > 0", (p, r.dirichlet(np.ones(V)))
    p = r.dirichlet(np.ones(V))
    q = p.copy(); q[0] += 1e-15; q /= q.sum()
    yield "near-degenerate (1 - beta ~ 0)", (p, q)
    for _ in range(20):
        yield "random", (r.dirichlet(np.full(V, 0.3)), r.dirichlet(np.full(V, 0.3)))


@pytest.mark.parametrize("name,pq", list(_cases()))
def test_one_step_emits_exactly_p(name, pq):
    p, q = pq
    out = speculative.step_distribution(p, q)
    assert np.all(np.isfinite(out))
    assert np.abs(out - p).sum() < 1e-12, name


def test_filters_applied_to_p_and_q_alike_keep_p():
    """temperature / top-k / top-p / min-p / repetition penalty go through the target's Sampler
    for p and an identical one for q: the rule then returns the filtered p."""
    from ryzjupyter.engine.sampling import Sampler, SamplingSettings
    r = np.random.default_rng(1)
    s = SamplingSettings(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, repetition_penalty=1.3, seed=1)
    sp, sq = Sampler(s), Sampler(SamplingSettings(**{**s.as_dict(), "seed": 2}))
    for _ in range(10):
        lp, lq = r.standard_normal(16).astype(np.float32) * 3, r.standard_normal(16).astype(np.float32) * 3
        p, q = sp.probs(lp, [1, 2, 3]), sq.probs(lq, [1, 2, 3])
        assert np.abs(speculative.step_distribution(p, q) - p).sum() < 1e-12


def test_negative_control_wrong_rules_are_caught(monkeypatch):
    p = np.array([0.6, 0.3, 0.1, 0.0])
    q = np.array([0.1, 0.1, 0.3, 0.5])
    monkeypatch.setattr(speculative, "residual", lambda p, q: np.asarray(p, float))   # resample from p
    assert np.abs(speculative.step_distribution(p, q) - p).sum() > 0.1
    monkeypatch.undo()
    monkeypatch.setattr(speculative, "acceptance_probability",                          # inverted ratio
                        lambda p, q, x: min(1.0, q[x] / p[x]) if p[x] > 0 else 1.0)
    assert np.abs(speculative.step_distribution(p, q) - p).sum() > 0.1


# ---------------------------------------------------------------- the pipeline, sampled

class TinyLM(LanguageModel):
    """A test double with a tiny vocabulary and no tokenizer: the logits are a fixed random
    function of the last two tokens, run token by token (forward/verify agree exactly)."""

    def __init__(self, vocab=5, seed=0, scale=2.0, max_context=32):
        r = np.random.default_rng(seed)
        self.vocab_size, self.max_context, self.tokenizer = vocab, max_context, None
        self.table = (r.standard_normal((vocab, vocab, vocab)) * scale).astype(np.float32)

    def new_cache(self, max_len=None):
        return KVCache(1, max_len or self.max_context, 1, 1)

    def row(self, a, b):
        return self.table[a, b]

    def forward(self, token_ids, cache, all_logits=False):
        ids = [int(t) for t in token_ids]
        out = []
        for t in ids:
            prev = cache.tokens[-1] if cache.tokens else 0
            out.append(self.row(prev, t))
            cache.append([t])
        out = np.stack(out)
        return out if all_logits else out[-1:]


SAMPLED = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)


def _joint(model, prompt, L, settings):
    """The exact distribution of the next L tokens under plain sampling (enumerated)."""
    from ryzjupyter.engine.sampling import Sampler, SamplingSettings
    s = Sampler(SamplingSettings(**settings, seed=0))
    V = model.vocab_size
    probs = {(): 1.0}
    for _ in range(L):
        nxt = {}
        for seq, pr in probs.items():
            ctx = list(prompt) + list(seq)
            cache = model.new_cache()
            lg = model.forward(ctx, cache)[-1]
            p = s.probs(lg, ctx)
            for x in range(V):
                if p[x] > 0:
                    nxt[seq + (x,)] = pr * p[x]
        probs = nxt
    return probs


def _sampled_counts(model, draft, prompt, L, n, settings, num_draft):
    counts = {}
    for i in range(n):
        r = model.new_session().generate(prompt, L, draft=draft, num_draft=num_draft, seed=i, **settings)
        key = tuple(r.tokens)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _chi2(joint, counts, n):
    cells = sorted(joint)
    exp = np.array([joint[c] * n for c in cells])
    obs = np.array([counts.get(c, 0) for c in cells], float)
    assert sum(counts.values()) == obs.sum(), "a sample outside the target's support"
    small = exp < 5                                            # merge the small cells
    exp = np.r_[exp[~small], exp[small].sum()] if small.any() else exp
    obs = np.r_[obs[~small], obs[small].sum()] if small.any() else obs
    tv = 0.5 * np.abs(obs / n - exp / n).sum()
    return sps.chisquare(obs, exp).pvalue, tv


N_SAMPLES = 3000


@pytest.mark.parametrize("settings", [SAMPLED, dict(temperature=0.7, top_k=3, top_p=0.9, min_p=0.0,
                                                    repetition_penalty=1.2)])
def test_draft_model_sampling_has_the_target_distribution(settings):
    target, draft = TinyLM(seed=1), TinyLM(seed=2)
    prompt = [0, 1]
    joint = _joint(target, prompt, 3, settings)
    counts = _sampled_counts(target, draft, prompt, 3, N_SAMPLES, settings, num_draft=2)
    pval, tv = _chi2(joint, counts, N_SAMPLES)
    # premise: the draft's own joint is far from the target's, so accepting it blindly would fail
    dj = _joint(draft, prompt, 3, settings)
    assert 0.5 * sum(abs(joint.get(c, 0) - dj.get(c, 0)) for c in set(joint) | set(dj)) > 0.3
    assert pval > 1e-3, (pval, tv)
    assert tv < 0.08


def test_negative_control_the_same_test_catches_a_wrong_rule(monkeypatch):
    target, draft = TinyLM(seed=1), TinyLM(seed=2)
    prompt = [0, 1]
    joint = _joint(target, prompt, 3, SAMPLED)
    monkeypatch.setattr(speculative, "residual", lambda p, q: np.asarray(p, float))   # resample from p
    counts = _sampled_counts(target, draft, prompt, 3, N_SAMPLES, SAMPLED, num_draft=2)
    pval, tv = _chi2(joint, counts, N_SAMPLES)
    assert pval < 1e-6, (pval, tv)


def test_deterministic_drafters_reproduce_seeded_plain_sampling(toy_lm):
    """One-hot drafts draw one uniform per emitted token, like plain decoding: same seed, same
    tokens, at any temperature."""
    prompt = "ab ab ab abc ab ab"
    for draft in DRAFTS:
        for seed in (1, 2, 3):
            kw = dict(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=seed, ignore_eos=True)
            plain = toy_lm.new_session().generate(prompt, 30, **kw)
            spec = toy_lm.new_session().generate(prompt, 30, draft=draft, **kw)
            assert spec.tokens == plain.tokens, (draft, seed)


# ---------------------------------------------------------------- greedy identity and stop rules

class EchoLM(LanguageModel):
    """Greedy output is a fixed cycle over a few tokens with an occasional twist, so prompt lookup
    and the adjacency table draft a lot, right and wrong."""

    def __init__(self, tokenizer, max_context=64):
        self.tokenizer, self.vocab_size, self.max_context = tokenizer, tokenizer.vocab_size, max_context
        r = np.random.default_rng(5)
        self.noise = r.standard_normal((max_context, self.vocab_size)).astype(np.float32) * 0.1
        self.nxt = r.integers(5, min(60, self.vocab_size), self.vocab_size)

    def new_cache(self, max_len=None):
        return KVCache(1, max_len or self.max_context, 1, 1)

    def forward(self, token_ids, cache, all_logits=False):
        out = []
        for t in [int(x) for x in token_ids]:
            pos = len(cache.tokens)
            row = self.noise[pos].copy()
            row[self.nxt[t] if pos % 7 else (t * 3) % self.vocab_size] += 5.0
            out.append(row)
            cache.append([t])
        out = np.stack(out)
        return out if all_logits else out[-1:]


@pytest.fixture
def echo(tiny_tokenizer):
    return EchoLM(tiny_tokenizer)


def _same(a, b):
    assert a.tokens == b.tokens
    assert a.text == b.text
    assert a.finish_reason == b.finish_reason
    assert a.stats.n_generated == b.stats.n_generated == len(a.tokens)


@pytest.mark.parametrize("draft", DRAFTS)
@pytest.mark.parametrize("num_draft", [None, 1, 2, 3, 5, 8, 15])
def test_greedy_identical_and_drafts_accepted(echo, draft, num_draft):
    prompt = "hello hello world hello"
    plain = echo.new_session().generate(prompt, 40, temperature=0, ignore_eos=True)
    spec = echo.new_session().generate(prompt, 40, temperature=0, ignore_eos=True, draft=draft,
                                       num_draft=num_draft)
    _same(plain, spec)
    s = spec.stats
    assert s.drafted > 0 and 0 < s.accepted <= s.drafted
    assert s.target_passes == s.n_generated - s.accepted      # each pass emits its accepted drafts + 1
    assert s.tokens_per_pass > 1.0
    assert plain.stats.target_passes == plain.stats.n_generated and plain.stats.tokens_per_pass == 1.0


@pytest.mark.parametrize("draft", DRAFTS + [None])
def test_budget_stops_and_context_like_plain(tiny_tokenizer, draft):
    m = EchoLM(tiny_tokenizer, max_context=40)
    prompt = "hello hello world hello"
    n_prompt = len(tiny_tokenizer.encode(prompt))
    ref = m.new_session().generate(prompt, 60, temperature=0, ignore_eos=True)
    text = ref.text
    cases = [dict(max_new_tokens=n) for n in (0, 1, 2, 3, 7, 11)]
    cases += [dict(max_new_tokens=60)]                                 # the context limit
    cases += [dict(max_new_tokens=30, stop=[text[5:8]]), dict(max_new_tokens=30, stop=[ref.tokens[6]])]
    for kw in cases:
        plain = m.new_session()
        spec = m.new_session()
        a = plain.generate(prompt, temperature=0, ignore_eos=True, **kw)
        b = spec.generate(prompt, temperature=0, ignore_eos=True, draft=draft, num_draft=6, **kw)
        _same(a, b)
        assert len(b.tokens) <= kw["max_new_tokens"]
        assert spec.cache.tokens == plain.cache.tokens, kw             # no accepted token left beyond the output
        if kw["max_new_tokens"] == 60:
            assert a.finish_reason == "context" and n_prompt + len(a.tokens) - 1 == 40   # the cache is full


def test_interrupt_keeps_partial_and_cache_consistent(echo):
    s = echo.new_session()
    st = s.stream("hello hello world hello", 40, temperature=0, ignore_eos=True, draft="lookup")
    got = [next(st) for _ in range(3)]
    st.interrupt()
    r = st.result
    assert r.finish_reason == "interrupted" and "".join(got) == r.text[:len("".join(got))]
    assert s.cache.tokens == r.prompt_tokens + r.tokens[:-1]


def test_kv_prefix_reuse_and_chat_identical(echo):
    a, b = echo.new_session(), echo.new_session()
    for prompt in ("hello world", "hello world hello hello"):
        _same(a.generate(prompt, 12, temperature=0, ignore_eos=True),
              b.generate(prompt, 12, temperature=0, ignore_eos=True, draft="auto"))
    assert b.tokens_reused > 0
    echo = EchoLM(echo.tokenizer, max_context=256)
    a, b = echo.new_session(), echo.new_session()
    for msg in ("hello", "world hello", "hello again"):
        ra = a.chat(msg, 10, temperature=0)
        rb = b.chat(msg, 10, temperature=0, draft="adjacency")
        _same(ra, rb)
    assert a.history == b.history
    assert a.cache.tokens == b.cache.tokens


def test_draft_model_greedy_identical_and_mismatch_is_a_clear_error(tiny_tokenizer, echo):
    draft = EchoLM(tiny_tokenizer)
    draft.nxt = draft.nxt.copy()
    draft.nxt[::3] += 1                                                # a draft that is wrong sometimes
    plain = echo.new_session().generate("hello world", 30, temperature=0, ignore_eos=True)
    for k in (None, 1, 4):
        spec = echo.new_session().generate("hello world", 30, temperature=0, ignore_eos=True, draft=draft,
                                           num_draft=k)
        _same(plain, spec)
    assert spec.stats.drafted > spec.stats.accepted > 0
    with pytest.raises(ValueError, match="same tokenizer"):
        echo.generate("hello", 3, draft=TinyLM(vocab=7))
    with pytest.raises(ValueError, match="num_draft"):
        echo.generate("hello", 3, draft="lookup", num_draft=99)
    with pytest.raises(TypeError, match="draft must be"):
        echo.generate("hello", 3, draft=3.5)
    with pytest.raises(ValueError, match="cannot load a draft model by name"):
        echo.generate("hello", 3, draft="demo-draft")


# ---------------------------------------------------------------- the drafters and the controller

def test_lookup_proposes_what_followed_the_latest_match():
    d = speculative.LookupDrafter()
    ctx = [1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 6, 2, 3]
    n, cont = d.match(ctx, 3)
    assert (n, cont) == (2, [7, 8, 6])                      # "2 3" last followed by 7 8 6
    assert d.match([1, 2, 3], 4) == (0, [])


def test_adjacency_table_and_tree():
    tab = speculative.AdjacencyTable(10, width=3)
    rows = np.zeros((2, 10), np.float32)
    rows[0, [4, 5, 6]] = [3, 2, 1]
    rows[1, [7, 1, 2]] = [3, 2, 1]
    tab.update([1, 4], rows)
    assert tab.table[1].tolist() == [4, 5, 6] and tab.table[4].tolist() == [7, 1, 2]
    d = speculative.AdjacencyDrafter(tab, tree=((0,), (0, 0), (1,), (0, 1), (2,)))
    p = d.propose([0, 1], 5)
    assert p.tokens == [4, 7, 5, 1, 6] and p.parents == [-1, 0, -1, 0, -1]
    p = speculative._preorder(p)
    assert p.tokens == [4, 7, 1, 5, 6] and p.parents == [-1, 0, 0, -1, -1]


def test_controller_backs_off_and_comes_back():
    c = speculative.Controller()
    c.measured(1, 1.0)
    for n in range(2, 17):
        c.measured(n, 1.0 + 0.1 * (n - 1))
    prop = speculative.Proposal(("k",), [1] * 8, list(range(-1, 7)), list(range(8)))
    for _ in range(50):
        for s in range(8):
            c.record(("k",), s, True)
    assert c.choose(prop) == 8
    for _ in range(200):
        c.record(("k",), 0, False)
    assert c.choose(prop) == 0
    for _ in range(200):
        c.record(("k",), 0, True)
    assert c.choose(prop) > 0
