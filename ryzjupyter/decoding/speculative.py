"""Speculative decoding: a drafter proposes tokens, one batched target pass verifies them, and
the acceptance rule keeps exactly the target's distribution.

The rule (Leviathan et al. 2023, Chen et al. 2023). A draft token x drawn from the draft's
distribution q is accepted with probability min(1, p(x) / q(x)), p being the distribution the
target's sampler would draw from at that position (temperature, top-k/p, min-p and the repetition
penalty applied to p and q alike). On rejection the emitted token is drawn from
norm(max(0, p - q)) and the round ends; when every draft token is accepted, one bonus token is
drawn from p. The emitted token's distribution is then

    min(p, q) + (1 - sum(min(p, q))) * norm(max(0, p - q))  =  p

(`step_distribution` computes it from the two functions the loop uses). Deterministic drafters
(prompt lookup, the adjacency tree, a greedy draft model) have a one-hot q: the rule becomes
"draw x from p as plain decoding would; keep going while x is a drafted child". That form draws
one uniform number per emitted token, like plain decoding, so with bitwise-equal logits a seeded
speculative run emits exactly the tokens of the seeded plain run, at any temperature.

Drafters:
    LookupDrafter     prompt lookup: the longest recent n-gram match in the prompt, the chat
                      history and the reply so far proposes what followed it
    AdjacencyDrafter  the "Token Recycling" drafter (Luo et al., arXiv 2408.08696): a vocab x 8
                      table of the top-8 successors each token last had in a pass's logits; a
                      small static tree grown from it, verified in one pass with a tree mask
    ModelDrafter      a smaller model with the same tokenizer drafts a chain

`Controller` picks how many draft tokens to verify each round from the running acceptance of each
draft position and the measured time of a round over n positions (the cost model is the round
times this generation measures; `python -m ryzjupyter.bench speculative` measures the same ratios
r(n) offline): the number of tokens a round is expected to emit divided by its expected time,
against a plain decode step. A drafter that does not pay is
backed off to plain decoding; its first draft token is still checked against what was emitted, so
it comes back when it starts to pay.
"""
from __future__ import annotations

import time

import numpy as np

from ryzjupyter.engine.profiling import PROFILER

MAX_DRAFT = 15                      # draft tokens per pass: verify positions stay <= 16 (the few-token GEMMs)
DRAFT_KINDS = ("lookup", "adjacency", "auto")


# ----------------------------------------------------------------------------
# the acceptance rule

def acceptance_probability(p, q, x) -> float:
    """min(1, p(x) / q(x)) for a draft token x drawn from q (so q(x) > 0)."""
    qx = float(q[x])
    if qx <= 0.0:
        raise ValueError(f"draft token {x} has probability 0 under the draft distribution it was drawn from")
    return min(1.0, float(p[x]) / qx)


def residual(p, q):
    """norm(max(0, p - q)): what a rejection draws from. When p == q (nothing left) a rejection
    has probability 0; p itself is returned so the draw stays defined."""
    r = np.maximum(np.asarray(p, np.float64) - np.asarray(q, np.float64), 0.0)
    s = r.sum()
    if not s > 0.0:
        return np.asarray(p, np.float64)
    return r / s


def step_distribution(p, q):
    """The distribution of the token one speculative step emits, computed from the rule's two
    functions: sum over draft tokens x of q(x) * accept(x) at x, plus the rejection mass times the
    residual. Equals p (tests/engine/test_speculative.py)."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    acc = np.array([q[x] * acceptance_probability(p, q, x) if q[x] > 0 else 0.0 for x in range(p.size)])
    return acc + (1.0 - acc.sum()) * residual(p, q)


def draw(p, u) -> int:
    """The token a uniform number u in [0, 1) picks from the distribution p (inverse CDF)."""
    cdf = np.cumsum(p)
    return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(p) - 1)


def verify_sampled_chain(p_row, q_rows, drafts, rng):
    """One round of the rule for a drafter that sampled its tokens: drafts[i] was drawn from
    q_rows[i]; p_row(i) is the target's distribution at draft position i (i = len(drafts): the
    bonus position). Returns the emitted tokens (the accepted drafts, then one drawn token)."""
    out = []
    for i, x in enumerate(drafts):
        p = p_row(i)
        if rng.random() < acceptance_probability(p, q_rows[i], x):
            out.append(int(x))
            continue
        out.append(draw(residual(p, q_rows[i]), rng.random()))
        return out
    out.append(draw(p_row(len(drafts)), rng.random()))
    return out


# ----------------------------------------------------------------------------
# drafters: propose(ctx, cap) -> Proposal (tokens after ctx[-1], parent of each, slot of each)

class Proposal:
    """Draft nodes in priority order (each parent before its children): tokens[i] follows
    parents[i] (-1: the last context token); slots[i] names the position for the acceptance
    statistics; q_rows[i] is the distribution tokens[i] was drawn from (None: deterministic)."""

    __slots__ = ("key", "tokens", "parents", "slots", "q_rows")

    def __init__(self, key, tokens, parents, slots, q_rows=None):
        self.key, self.tokens, self.parents, self.slots, self.q_rows = key, tokens, parents, slots, q_rows

    def __len__(self):
        return len(self.tokens)

    def first(self, n) -> "Proposal":
        q = None if self.q_rows is None else self.q_rows[:n]
        return Proposal(self.key, self.tokens[:n], self.parents[:n], self.slots[:n], q)

    def is_chain(self):
        return all(p == i - 1 for i, p in enumerate(self.parents))


class LookupDrafter:
    """Prompt lookup: find the most recent earlier occurrence of the context's last n tokens
    (n = max_ngram down to min_ngram) and propose the tokens that followed it."""

    name = "lookup"
    free = True                          # drafting costs nothing next to a pass

    def __init__(self, max_ngram=3, min_ngram=1):
        self.max_ngram, self.min_ngram = int(max_ngram), int(min_ngram)

    def match(self, ctx, cap):
        """(n, continuation) of the best match, or (0, [])."""
        a = np.asarray(ctx, np.int64)
        L = a.size
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if L <= n:
                continue
            m = a[:L - n] == a[L - n]
            for j in range(1, n):
                m &= a[j:L - n + j] == a[L - n + j]
            hits = np.flatnonzero(m)
            if hits.size == 0:
                continue
            best = None
            for i in hits[::-1][:8]:                         # the most recent with a full continuation
                cont = a[i + n:i + n + cap]
                if best is None or cont.size > best.size:
                    best = cont
                if cont.size >= cap:
                    break
            return n, best.tolist()
        return 0, []

    def propose(self, ctx, cap):
        n, cont = self.match(ctx, cap)
        k = len(cont)
        return Proposal(("lookup", n), cont, list(range(-1, k - 1)), list(range(k)))


# the adjacency tree: nodes as rank paths from the root (rank r = the r-th best successor of the
# parent's token), listed by priority; `num_draft` / the controller take a prefix of this list
ADJACENCY_TREE = ((0,), (0, 0), (1,), (0, 0, 0), (0, 1), (2,), (1, 0), (0, 0, 0, 0), (0, 0, 1), (3,),
                  (0, 1, 0), (1, 0, 0), (0, 0, 0, 0, 0), (1, 1), (0, 2))


class AdjacencyTable:
    """The successor table of Token Recycling: row t holds the top-`width` tokens of the logits
    the last pass produced right after token t. Kept per model across generations (hot start)."""

    def __init__(self, vocab_size, width=8):
        self.width = int(width)
        self.table = np.zeros((int(vocab_size), self.width), np.int32)
        self.filled = np.zeros(int(vocab_size), bool)

    def update(self, tokens, rows):
        """rows[i]: the logits right after tokens[i]."""
        rows = np.asarray(rows)
        if rows.ndim == 1:
            rows = rows[None]
        w = self.width
        top = np.argpartition(rows, rows.shape[1] - w, axis=1)[:, -w:]
        vals = np.take_along_axis(rows, top, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        t = np.asarray(tokens, np.int64)
        self.table[t] = top                                  # a token seen twice: the last row wins
        self.filled[t] = True


class AdjacencyDrafter:
    """Token Recycling's drafter: a static tree (ADJACENCY_TREE) filled from the table."""

    name = "adjacency"
    free = True

    def __init__(self, table: AdjacencyTable, tree=ADJACENCY_TREE):
        self.table, self.tree = table, tuple(tuple(p) for p in tree)
        self._index = {p: i for i, p in enumerate(self.tree)}

    def propose(self, ctx, cap):
        tab, filled = self.table.table, self.table.filled
        tokens, parents, slots, where = [], [], [], {(): (-1, int(ctx[-1]))}
        for slot, path in enumerate(self.tree):
            if len(tokens) >= cap:
                break
            par = where.get(path[:-1])
            if par is None or not filled[par[1]] or path[-1] >= tab.shape[1]:
                continue
            tok = int(tab[par[1], path[-1]])
            where[path] = (len(tokens), tok)
            tokens.append(tok)
            parents.append(par[0])
            slots.append(slot)
        return Proposal(("adjacency",), tokens, parents, slots)


class ModelDrafter:
    """A smaller model drafts a chain: greedily when the target decodes greedily, otherwise
    sampled with the same sampling settings (q = its sampler's distribution)."""

    name = "model"
    free = False

    def __init__(self, session, settings, greedy):
        from ryzjupyter.engine.sampling import Sampler, SamplingSettings
        self.session = session
        self.greedy = greedy
        s = dict(settings.as_dict())
        s["seed"] = (int(s["seed"]) + 1) % (2 ** 63)
        self.sampler = Sampler(SamplingSettings(**s))
        self.step_s = None                                   # measured seconds per draft token

    def propose(self, ctx, cap):
        sess = self.session
        if cap <= 0 or len(ctx) + cap > sess.max_context:
            return Proposal(("model",), [], [], [])
        t0 = time.perf_counter()
        was = PROFILER.enabled
        PROFILER.enabled = False                             # booked as "draft", not as the target's layers
        try:
            logits, _ = sess.prefill(ctx)
            tokens, q_rows = [], ([] if not self.greedy else None)
            dctx = list(ctx)
            for i in range(cap):
                if self.greedy:
                    x = int(np.argmax(self.sampler._prepare(logits, dctx)))
                else:
                    q = self.sampler.probs(logits, dctx)
                    x = draw(q, self.sampler.rng.random())
                    q_rows.append(q)
                tokens.append(x)
                dctx.append(x)
                if i + 1 < cap:
                    logits = sess.step(x)
        finally:
            PROFILER.enabled = was
        dt = time.perf_counter() - t0
        PROFILER.add("draft", int(dt * 1e9))
        per = dt / cap
        self.step_s = per if self.step_s is None else 0.8 * self.step_s + 0.2 * per
        return Proposal(("model",), tokens, list(range(-1, cap - 1)), list(range(cap)), q_rows)


def check_same_tokenizer(target, draft):
    """A draft model must tokenize exactly as the target: ValueError naming the difference."""
    if draft is target:
        return
    if target.vocab_size != draft.vocab_size:
        raise ValueError(f"the draft model's vocabulary ({draft.vocab_size} tokens) differs from the target's "
                         f"({target.vocab_size}); a draft model must use the same tokenizer (for 'demo' "
                         "use 'demo-draft')")
    a, b = target.tokenizer, draft.tokenizer
    if a is None or b is None:
        return
    ids = range(a.vocab_size)
    diff = next((i for i in ids if a.id_to_token(i) != b.id_to_token(i)), None)
    if diff is not None or a.vocab_size != b.vocab_size:
        raise ValueError(f"the draft model's tokenizer differs from the target's (token {diff}: "
                         f"{b.id_to_token(diff) if diff is not None else '?'!r} vs "
                         f"{a.id_to_token(diff) if diff is not None else '?'!r}); a draft model must use "
                         "the same tokenizer")


# ----------------------------------------------------------------------------
# the adaptive controller

class Controller:
    """Chooses the number of draft nodes per round (0 = a plain decode step).

    acceptance: per (drafter key, slot) the decayed counts of 'accepted' over 'tried' (a node is
    tried when its parent was accepted); a node's chance to be on the accepted path is the product
    of its and its ancestors' rates. cost: the seconds of a round over n positions (the pass, the
    sampling, the table update), measured as an exponential average; before n was measured, the
    measured plain step times 1 + 0.15 (n - 1)."""

    DECAY = 0.97

    def __init__(self, num_draft=None):
        self.fixed = num_draft
        self.round_s: dict[int, float] = {}
        self.acc: dict[tuple, list] = {}
        self.idle = 0

    def _rate(self, key, slot):
        a, t = self.acc.get((key, slot), (0.0, 0.0))
        return (a + 1.0) / (t + 2.0)

    def record(self, key, slot, accepted):
        a, t = self.acc.get((key, slot), (0.0, 0.0))
        self.acc[(key, slot)] = [a * self.DECAY + float(accepted), t * self.DECAY + 1.0]

    def time(self, n):
        s = self.round_s.get(n)
        if s is not None:
            return s
        base = self.round_s.get(1)
        if base is None:
            base = min((v / self._ratio(m) for m, v in self.round_s.items()), default=1.0)
        return base * self._ratio(n)

    @staticmethod
    def _ratio(n):
        return 1.0 + 0.15 * (n - 1)

    def measured(self, n, seconds):
        old = self.round_s.get(n)
        self.round_s[n] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def choose(self, prop: Proposal, extra_s_per_node=0.0) -> int:
        """How many of the proposal's nodes (a prefix of its priority order) to verify."""
        if self.fixed is not None:
            return min(self.fixed, len(prop))
        if not len(prop):
            return 0
        if 1 not in self.round_s:
            return 0                                        # measure a plain step first
        reach, best_n, best = [], 0, 1.0 / self.time(1)
        gain = 1.0
        for i in range(len(prop)):
            r = self._rate(prop.key, prop.slots[i])
            par = prop.parents[i]
            reach.append((reach[par] if par >= 0 else 1.0) * r)
            gain += reach[-1]
            v = gain / (self.time(i + 2) + extra_s_per_node * (i + 1))
            if v > best:
                best, best_n = v, i + 1
        if best_n == 0:
            self.idle += 1
            if self.idle >= 16:                              # probe now and then: one draft token
                self.idle = 0
                return 1
        else:
            self.idle = 0
        return best_n


def choose_chain_length(ctrl: Controller, key, cap, extra_s_per_node):
    """For a drafter that pays per token (a draft model): the chain length before drafting."""
    if cap <= 0:
        return 0
    return ctrl.choose(Proposal(key, [0] * cap, list(range(-1, cap - 1)), list(range(cap))), extra_s_per_node)


# ----------------------------------------------------------------------------
# setting up a generation's speculation

def resolve(model, draft, num_draft):
    """Check `draft` / `num_draft` and return (kind, draft_model or None): kind is None (off),
    'lookup', 'adjacency', 'auto' or 'model'."""
    if num_draft is not None:
        if isinstance(num_draft, bool) or not isinstance(num_draft, (int, np.integer)) or not 0 <= num_draft <= MAX_DRAFT:
            raise ValueError(f"num_draft must be None (adaptive) or an integer in 0..{MAX_DRAFT}, got {num_draft!r}")
        num_draft = int(num_draft)
    if draft is None or draft is False or (isinstance(draft, str) and draft in ("", "none", "off")):
        return None, None, num_draft
    if isinstance(draft, str) and draft in DRAFT_KINDS:
        return draft, None, num_draft
    if isinstance(draft, str):
        dm = model.load_draft(draft)
    elif hasattr(draft, "forward") and hasattr(draft, "new_cache"):
        dm = draft
    else:
        raise TypeError(f"draft must be None, 'lookup', 'adjacency', 'auto', a model or a model's name or "
                        f"folder, got {type(draft).__name__}")
    check_same_tokenizer(model, dm)
    return "model", dm, num_draft


def adjacency_table(model) -> AdjacencyTable:
    """The model's successor table (made on first use, kept across generations)."""
    tab = getattr(model, "_adjacency_table", None)
    if tab is None or tab.table.shape[0] != model.vocab_size:
        tab = AdjacencyTable(model.vocab_size)
        model._adjacency_table = tab
    return tab


def _topk(rows, tokens, tab):
    if tab is not None:
        tab.update(tokens, rows)


class Speculation:
    """One generation's speculative decoding: the drafters, the controller and the counters."""

    def __init__(self, session, kind, draft_model, num_draft, sampler):
        model = session.model
        self.kind, self.sampler = kind, sampler
        self.greedy = sampler.settings.temperature == 0.0
        self.drafters = []
        self.table = adjacency_table(model) if kind in ("adjacency", "auto") else None
        if kind in ("lookup", "auto"):
            self.drafters.append(LookupDrafter())
        if kind in ("adjacency", "auto"):
            self.drafters.append(AdjacencyDrafter(self.table))
        self.model_drafter = None
        if kind == "model":
            dsess = session._draft_session(draft_model)
            self.model_drafter = ModelDrafter(dsess, sampler.settings, self.greedy)
        self.ctrl = Controller(num_draft)
        self.drafted = self.accepted_round = 0
        self.target_passes = 0
        self.draft_s = self.verify_s = self.sampling_s = 0.0
        self.last = None                  # the plain step's proposal, checked against what follows
        self.pass_sizes: dict[int, int] = {}    # draft tokens in a decode pass -> passes (0: plain steps)

    # -- one round: returns the emitted tokens (the last is never a draft) and how many were drafts
    def round(self, session, ctx, cap):
        t0 = time.perf_counter()
        prop = self._propose(ctx, cap)
        t1 = time.perf_counter()
        self.draft_s += t1 - t0
        n = 0 if prop is None else len(prop)
        self.pass_sizes[n] = self.pass_sizes.get(n, 0) + 1
        if not n:
            out = self._plain(session, ctx)
            self.ctrl.measured(1, time.perf_counter() - t1)
            return out, 0
        out, acc = self._verify(session, ctx, prop)
        self.ctrl.measured(n + 1, time.perf_counter() - t1)
        return out, acc

    def _propose(self, ctx, cap):
        self.last = None
        cap = min(cap, MAX_DRAFT)
        if cap <= 0:
            return None
        if self.model_drafter is not None:
            d = self.model_drafter
            k = choose_chain_length(self.ctrl, ("model",), cap, d.step_s or 0.0)
            return d.propose(ctx, k) if k > 0 else None
        best, best_v = None, 0.0
        for d in self.drafters:
            prop = d.propose(ctx, cap)
            if not len(prop):
                continue
            n = self.ctrl.choose(prop)
            if n == 0:
                self.last = self.last or prop
                continue
            v = self._value(prop, n)
            if best is None or v > best_v:
                best, best_v = prop.first(n), v
        if best is not None:
            self.last = None
            best = _preorder(best)
        return best

    def _value(self, prop, n):
        reach, gain = [], 1.0
        for i in range(n):
            par = prop.parents[i]
            reach.append((reach[par] if par >= 0 else 1.0) * self.ctrl._rate(prop.key, prop.slots[i]))
            gain += reach[-1]
        if self.ctrl.fixed is not None:              # a fixed k: the expected tokens alone (no timing in the choice)
            return gain
        return gain / self.ctrl.time(n + 1)

    def _plain(self, session, ctx):
        t0 = time.perf_counter()
        logits = session.step(ctx[-1])
        t = time.perf_counter()
        self.verify_s += t - t0
        self.target_passes += 1
        _topk(logits, [ctx[-1]], self.table)
        pt = PROFILER.tic()
        x = self.sampler.sample(logits, ctx)
        PROFILER.toc("sampling", pt)
        self.sampling_s += time.perf_counter() - t
        if self.last is not None:                            # free drafters: was the first guess right?
            p = self.last
            for i in range(len(p)):
                if p.parents[i] == -1:
                    self.ctrl.record(p.key, p.slots[i], p.tokens[i] == x)
        return [x]

    def _verify(self, session, ctx, prop):
        n = len(prop)
        toks = [int(ctx[-1])] + [int(t) for t in prop.tokens]
        chain = prop.is_chain()
        t0 = time.perf_counter()
        if chain:
            rows = session.verify(toks)
            commit = None
        else:
            depths = [0] * (n + 1)
            for i, p in enumerate(prop.parents):
                depths[i + 1] = depths[p + 1] + 1
            rows, commit = session.verify_tree(toks, depths)
        t1 = time.perf_counter()
        self.verify_s += t1 - t0
        self.target_passes += 1
        self.drafted += n
        _topk(rows, toks, self.table)
        pt = PROFILER.tic()
        children = {}
        for i, p in enumerate(prop.parents):
            children.setdefault(p + 1, {})[int(prop.tokens[i])] = i + 1
        if prop.q_rows is not None and not self.greedy:
            out = verify_sampled_chain(lambda i: self.sampler.probs(rows[i], ctx + prop.tokens[:i]),
                                       prop.q_rows, prop.tokens, self.sampler.rng)
            path = [0] + [i + 1 for i in range(len(out) - 1)]
        else:
            out, path, node = [], [0], 0
            while True:
                x = self.sampler.sample(rows[node], ctx + out)
                out.append(x)
                nxt = children.get(node, {}).get(x)
                if nxt is None:
                    break
                path.append(nxt)
                node = nxt
        PROFILER.toc("sampling", pt)
        self.sampling_s += time.perf_counter() - t1
        acc = len(out) - 1
        # acceptance statistics: every node whose parent was on the accepted path was tried
        on_path = set(path)
        for i in range(n):
            if prop.parents[i] + 1 in on_path:
                self.ctrl.record(prop.key, prop.slots[i], (i + 1) in on_path)
        if chain:
            session.cache.truncate(len(session.cache) - (n + 1) + len(path))
        else:
            commit(path)
        return out, acc


def _preorder(prop: Proposal) -> Proposal:
    """The nodes reordered depth-first (children in priority order), as verify_tree wants."""
    n = len(prop)
    kids = {}
    for i, p in enumerate(prop.parents):
        kids.setdefault(p, []).append(i)
    order, stack = [], list(reversed(kids.get(-1, [])))
    while stack:
        i = stack.pop()
        order.append(i)
        stack.extend(reversed(kids.get(i, [])))
    if order == list(range(n)):
        return prop
    new = {old: j for j, old in enumerate(order)}
    q = None if prop.q_rows is None else [prop.q_rows[i] for i in order]
    return Proposal(prop.key, [prop.tokens[i] for i in order],
                    [new[prop.parents[i]] if prop.parents[i] >= 0 else -1 for i in order],
                    [prop.slots[i] for i in order], q)
