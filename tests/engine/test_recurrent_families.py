"""Mamba, Mamba-2 and RWKV-4 against transformers on the fixtures of tools/make_fixtures.py
--recurrent (several shapes; F32, F16 and BF16 weights), on every ISA level; greedy generation
equal to transformers' generate; state reuse counted; int8 weights close.

Tolerance: 1e-4 relative to the largest |logit| of the sequence (float32 throughout; the GEMMs
sum in another order than torch, the scan and WKV are the same recurrences)."""
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import ryzjupyter
from ryzjupyter.engine.checkpoint import CheckpointError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "recurrent"
NAMES = sorted(json.loads((FIX / "manifest.json").read_text())["fixtures"])
RTOL = 1e-4
_cache = {}


def model(name, **kw):
    key = (name, tuple(sorted(kw.items())))
    if key not in _cache:
        _cache[key] = ryzjupyter.load(str(FIX / name), **kw)
    return _cache[key]


def reference(name):
    return load_file(str(FIX / name / "reference.safetensors"))


def n_seqs(ref):
    return len([k for k in ref if k.startswith("input_ids_")])


def test_fixtures_cover_every_family_and_format():
    arch = {n: json.loads((FIX / n / "reference.json").read_text()) for n in NAMES}
    assert {a["architecture"] for a in arch.values()} >= {"MambaForCausalLM", "Mamba2ForCausalLM",
                                                          "RwkvForCausalLM"}
    for fam in ("Mamba", "Rwkv"):
        got = {a["weights"] for a in arch.values() if a["architecture"] == fam + "ForCausalLM"}
        assert got == {"float32", "float16", "bfloat16"}, (fam, got)


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(isa, name):
    m, ref = model(name), reference(name)
    assert m.family == {"mamba": "mamba", "mamba2": "mamba2", "rwkv": "rwkv"}[name.split("_")[0]]
    for i in range(n_seqs(ref)):
        want = ref[f"logits_{i}"]
        got = m.logits(ref[f"input_ids_{i}"])
        assert got.shape == want.shape
        scale = float(np.abs(want).max())
        err = float(np.abs(got - want).max()) / scale
        assert err <= RTOL, f"{name} seq {i}: max |diff| / max |logit| = {err:.2e} > {RTOL}"


@pytest.mark.parametrize("name", NAMES)
def test_greedy_matches_transformers_generate(name):
    m, ref = model(name), reference(name)
    for i in range(n_seqs(ref)):
        r = m.new_session().generate(ref[f"input_ids_{i}"].tolist(), max_new_tokens=16, temperature=0,
                                     ignore_eos=True)
        assert r.tokens == ref[f"greedy_{i}"].tolist(), f"{name} seq {i}"


@pytest.mark.parametrize("name", ["mamba_bf16", "rwkv_f32"])
def test_chunked_prefill_and_steps_equal_whole(name):
    ref = reference(name)
    ids = ref["input_ids_2"]
    whole = model(name).logits(ids)
    m = ryzjupyter.load(str(FIX / name), prefill_chunk=7)
    cache = m.new_cache()
    a = m.forward(ids[:17], cache, all_logits=True)
    rows = [m.forward(ids[t:t + 1], cache)[0] for t in range(17, ids.size)]
    got = np.vstack([a] + [r[None] for r in rows])
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-5 * float(np.abs(whole).max()))
    assert 17 // 7 <= cache.snapshots_taken          # the chunk boundaries 7, 14 and 16 (before the last)


@pytest.mark.parametrize("name", ["mamba_f32", "rwkv_f32"])
def test_state_reuse_runs_only_the_new_tokens(name):
    """A second cell that extends the first (prompt + answer + more) runs only its new tokens; a
    re-run cell runs one token; a prompt that shares a prefix restarts from a snapshot."""
    m = ryzjupyter.load(str(FIX / name), prefill_chunk=8)
    ids = reference(name)["input_ids_2"].tolist()          # 40 tokens
    s = m.new_session()
    r1 = s.generate(ids[:20], max_new_tokens=5, temperature=0, ignore_eos=True)
    assert s.tokens_processed == 20 + 4                     # the last sampled token is not run yet
    follow = ids[:20] + r1.tokens + ids[20:30]
    before = s.tokens_processed
    r2 = s.generate(follow, max_new_tokens=3, temperature=0, ignore_eos=True)
    assert r2.stats.n_cached == 24 and r2.stats.n_prefill == len(follow) - 24
    assert s.tokens_processed - before == len(follow) - 24 + 2
    fresh = m.new_session().generate(follow, max_new_tokens=3, temperature=0, ignore_eos=True)
    assert r2.tokens == fresh.tokens                        # reuse changes nothing in the result
    # the same cell again: all but the prompt's last token come from the snapshot taken before it
    restored = s.cache.snapshots_restored
    r3 = s.generate(follow, max_new_tokens=3, temperature=0, ignore_eos=True)
    assert r3.stats.n_prefill == 1 and r3.tokens == fresh.tokens
    assert s.cache.snapshots_restored == restored + 1
    # a prompt that diverges at token 15: restart from the snapshot at 8 (a chunk boundary)
    assert sorted(s.cache.snapshots) == [8, 16, 19, 32, 34]
    other = ids[:15] + [(ids[15] + 1) % 380, 6, 7]
    r4 = s.generate(other, max_new_tokens=2, temperature=0, ignore_eos=True)
    assert r4.stats.n_cached == 8 and r4.stats.n_prefill == len(other) - 8
    assert r4.tokens == m.new_session().generate(other, max_new_tokens=2, temperature=0, ignore_eos=True).tokens


def test_state_memory_is_constant_in_the_context():
    m = ryzjupyter.load(str(FIX / "mamba_f32"), prefill_chunk=4, snapshots=3)
    s = m.new_session()
    ids = reference("mamba_f32")["input_ids_2"].tolist()
    sizes = []
    for n in (8, 24, 40):
        s.reset()
        s.prefill(ids[:n])
        sizes.append(s.cache.nbytes)
    assert len(set(sizes[1:])) == 1 and sizes[-1] == 4 * s.cache.state_bytes  # the state + 3 snapshots
    assert s.cache.state_bytes == sum(a.nbytes for a in m.fresh_state())


def test_truncate_needs_a_snapshot():
    m = model("rwkv_f32")
    cache = m.new_cache()
    m.forward(np.arange(10), cache)
    with pytest.raises(ValueError, match="no snapshot"):
        cache.truncate(5)
    cache.truncate(9)                                      # the snapshot before the last token
    assert len(cache) == 9
    cache.truncate(0)
    assert len(cache) == 0 and all(not a.any() or a.min() < -1e37 for a in cache.state)


@pytest.mark.parametrize("name", ["mamba_f32", "rwkv_bf16"])
def test_int8_weights_are_close_and_smaller(name):
    exact, q = model(name), model(name, weights="int8")
    ref = reference(name)
    ids = ref["input_ids_2"]
    a, b = exact.logits(ids), q.logits(ids)
    err = float(np.abs(a - b).max()) / float(np.abs(a).max())
    agree = (a.argmax(-1) == b.argmax(-1)).mean()
    assert 0 < err < 0.3 and agree >= 0.6, (err, agree)    # tiny random models: large activations
    assert q.nbytes < exact.nbytes


def test_options_that_do_not_apply_are_refused():
    with pytest.raises(TypeError, match="do not apply"):
        ryzjupyter.load(str(FIX / "mamba_f32"), kv_cache="int8")
    with pytest.raises(ValueError, match="weights must be"):
        ryzjupyter.load(str(FIX / "mamba_f32"), weights="int4")


def test_chat_and_stream():
    m = model("rwkv_f16")
    pieces = list(m.stream("Hello", max_new_tokens=6, temperature=0, ignore_eos=True))
    assert "".join(pieces) == m.session.last_result.text
    r = m.new_session().chat("What is the capital of France?", max_new_tokens=4, temperature=0)
    assert r.stats.n_generated >= 1


@pytest.mark.parametrize("name", ["mamba_bf16", "mamba2_bf16_groups", "rwkv_bf16"])
def test_fused_decode_is_one_call_a_token_and_equals_the_op_by_op_step(isa, name):
    """A decode step runs as one C call (recurrent_decode: the profile books it to "layers" and
    nothing to the per-kernel phases), and its logits equal the one-token prefill's."""
    ids = reference(name)["input_ids_1"]
    fused = ryzjupyter.load(str(FIX / name))
    plain = ryzjupyter.load(str(FIX / name))
    plain.fused_decode = False
    ca, cb = fused.new_cache(), plain.new_cache()
    fused.forward(ids[:4], ca)
    plain.forward(ids[:4], cb)
    for t in ids[4:]:
        a, b = fused.forward([t], ca), plain.forward([t], cb)
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * float(np.abs(b).max()))
    for x, y in zip(ca.state, cb.state):
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-6 * max(1.0, float(np.abs(y).max())))
    r = fused.new_session().generate(ids.tolist(), max_new_tokens=6, temperature=0, ignore_eos=True)
    dec = r.profile.stages["decode"]
    assert dec.counts.get("layers") == 5                     # 6 tokens: the first came from the prefill
    assert not {"scan", "conv", "matmul"} & set(dec.counts), dec.counts


@pytest.mark.parametrize("name", ["mamba_f32", "rwkv_bf16"])
def test_fused_decode_with_int8_weights_matches_the_int8_step(isa, name):
    """The fused step's int8 GEMVs (the head's streaming gemv_i8) against the op-by-op step's
    matmul_i8 tiles, on every ISA level."""
    ids = reference(name)["input_ids_1"]
    fused, plain = (ryzjupyter.load(str(FIX / name), weights="int8") for _ in range(2))
    plain.fused_decode = False
    ca, cb = fused.new_cache(), plain.new_cache()
    a = [fused.forward([t], ca) for t in ids]
    b = [plain.forward([t], cb) for t in ids]
    np.testing.assert_allclose(np.vstack(a), np.vstack(b), rtol=0, atol=2e-6 * float(np.abs(np.vstack(b)).max()))


@pytest.mark.parametrize("family", ["mamba", "rwkv"])
@pytest.mark.parametrize("fmt", ["f32", "int8"])
def test_fused_decode_split_in_stolen_chunks_gives_the_same_logits(isa, tmp_path, family, fmt):
    """Rows of 4-8 KiB: the decode's GEMVs run as one range of rows a thread walked in chunks of 16
    rows that a free thread may take from the other (work stealing). With 2 threads the logits and
    the state equal, bit for bit, those of 1 thread (each row computed alone by the same code), and
    the op-by-op step's."""
    from ryzjupyter import _native
    from ryzjupyter.families.random_recurrent import write_folder
    folder = write_folder(family, tmp_path / family, seed=7, hidden_size=1024, num_hidden_layers=1)
    ids = np.random.default_rng(8).integers(0, 384, 6)
    prev = _native.get_num_threads()
    runs = {}
    try:
        for th in (1, 2):
            _native.set_num_threads(th)
            m = ryzjupyter.load(str(folder), weights=fmt)
            c = m.new_cache()
            m.forward(ids[:2], c)
            runs[th] = (np.vstack([m.forward([t], c) for t in ids[2:]]), [a.copy() for a in c.state])
        plain = ryzjupyter.load(str(folder), weights=fmt)
        plain.fused_decode = False
        c = plain.new_cache()
        plain.forward(ids[:2], c)
        want = np.vstack([plain.forward([t], c) for t in ids[2:]])
    finally:
        _native.set_num_threads(prev)
    np.testing.assert_array_equal(runs[2][0], runs[1][0])
    for a, b in zip(runs[2][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(runs[2][0], want, rtol=0, atol=2e-6 * float(np.abs(want).max()))


# ---- malformed checkpoints: clear errors -------------------------------------------------

def _copy(tmp_path, name):
    import shutil
    dst = tmp_path / name
    shutil.copytree(FIX / name, dst)
    (dst / "reference.safetensors").unlink()
    return dst


def _rewrite(folder, edit):
    from safetensors.numpy import save_file
    sd = dict(load_file(str(folder / "model.safetensors")))
    edit(sd)
    save_file(sd, str(folder / "model.safetensors"))


def _set_config(folder, **kw):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(kw)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("name,tensor", [("mamba_f32", "backbone.layers.1.mixer.A_log"),
                                         ("mamba2_f32", "backbone.layers.0.mixer.dt_bias"),
                                         ("rwkv_f32", "rwkv.blocks.1.attention.time_first")])
def test_missing_tensor(tmp_path, name, tensor):
    d = _copy(tmp_path, name)
    _rewrite(d, lambda sd: sd.pop(tensor))
    with pytest.raises(CheckpointError, match=f"{tensor}.*missing"):
        ryzjupyter.load(str(d))


@pytest.mark.parametrize("name,tensor", [("mamba_f32", "backbone.layers.0.mixer.x_proj.weight"),
                                         ("mamba2_f32", "backbone.layers.1.mixer.in_proj.weight"),
                                         ("rwkv_f32", "rwkv.blocks.0.feed_forward.key.weight")])
def test_wrong_shape(tmp_path, name, tensor):
    d = _copy(tmp_path, name)
    _rewrite(d, lambda sd: sd.__setitem__(tensor, sd[tensor][:-1].copy()))
    with pytest.raises(CheckpointError, match=f"{tensor}.*has shape"):
        ryzjupyter.load(str(d))


@pytest.mark.parametrize("name", ["mamba_f32", "rwkv_f32"])
def test_extra_tensor_and_wrong_dtype(tmp_path, name):
    d = _copy(tmp_path, name)
    _rewrite(d, lambda sd: sd.__setitem__("extra.weight", np.zeros(3, np.float32)))
    with pytest.raises(CheckpointError, match="does not use: 'extra.weight'"):
        ryzjupyter.load(str(d))
    first = sorted(load_file(str(FIX / name / "model.safetensors")))[0]
    d2 = _copy(tmp_path / "b", name)
    _rewrite(d2, lambda sd: sd.__setitem__(first, sd[first].astype(np.int32)))
    with pytest.raises(CheckpointError, match="dtype I32"):
        ryzjupyter.load(str(d2))


# the head and state every recurrent family builds with families/head_and_state.py
@pytest.mark.parametrize("name,head", [("mamba_f16_untied", "lm_head.weight"), ("rwkv_f32", "head.weight")])
def test_untied_head_missing_is_a_clear_error(tmp_path, name, head):
    d = _copy(tmp_path, name)
    _set_config(d, tie_word_embeddings=False)
    _rewrite(d, lambda sd: sd.pop(head))
    with pytest.raises(CheckpointError, match=f"^tie_word_embeddings is false but the checkpoint has no {head}; "
                                              "the checkpoint is incomplete$"):
        ryzjupyter.load(str(d))


def test_tied_head_is_the_embedding_and_a_stored_copy_is_checked(tmp_path):
    d = _copy(tmp_path, "mamba_f32")
    _set_config(d, tie_word_embeddings=True)
    m = ryzjupyter.load(str(d))
    assert m.lm_head.w is m.embed                              # no second copy, none counted
    untied = model("mamba_f16_untied")
    assert untied.lm_head.w is not untied.embed
    from ryzjupyter.families.head_and_state import head_nbytes
    assert head_nbytes(m.lm_head, m.embed) == 0 and head_nbytes(untied.lm_head, untied.embed) == untied.lm_head.nbytes
    _rewrite(d, lambda sd: sd.__setitem__("lm_head.weight", sd["backbone.embeddings.weight"][:-1].copy()))
    with pytest.raises(CheckpointError, match="lm_head.weight.*has shape"):
        ryzjupyter.load(str(d))


def test_layer_state_is_layer_major_with_its_fills():
    from ryzjupyter.families.head_and_state import layer_state
    st = layer_state(2, (3, 0.0), ((2, 2), -1e38))
    assert [a.shape for a in st] == [(3,), (2, 2), (3,), (2, 2)]
    assert all(a.dtype == np.float32 for a in st) and not st[0].any() and (st[3] == np.float32(-1e38)).all()
    assert st[1] is not st[3]                                  # separate arrays, updated in place per layer
    m = model("rwkv_f32")                                      # RWKV-4: pp starts at -1e38, the rest at 0
    fresh = m.fresh_state()
    assert len(fresh) == 5 * m.config.n_layers and (fresh[3] < -1e37).all() and not fresh[5].any()


# Mamba and Mamba-2 load their backbone with head_and_state.load_backbone
@pytest.mark.parametrize("cls,other,label", [("MambaModel", "mamba2_f32", "Mamba"),
                                             ("Mamba2Model", "mamba_f32", "Mamba-2")])
def test_backbone_of_another_family_is_refused(cls, other, label):
    from ryzjupyter.families import mamba, mamba2
    Model = getattr(mamba if cls == "MambaModel" else mamba2, cls)
    fam = other.split("_")[0]
    with pytest.raises(CheckpointError, match=f"^{other} is a {fam} model, not {label}$"):
        Model(FIX / other)


@pytest.mark.parametrize("name", ["mamba_f32", "mamba2_f32"])
def test_backbone_load_reports_progress_per_layer(name):
    seen = []
    m = ryzjupyter.load(str(FIX / name), progress=lambda i, n: seen.append((i, n)))
    n = m.config.n_layers
    assert seen == [(i + 1, n) for i in range(n)] and len(m.layers) == n
    assert m.vocab_size == m.config.vocab_size == m.embed.shape[0] and m.norm_f.shape == (m.config.dim,)


@pytest.mark.parametrize("model_type,match", [("falcon_mamba", "variant ryzjupyter does not implement"),
                                              ("rwkv6", "variant ryzjupyter does not implement"),
                                              ("hyena", "unknown architecture")])
def test_unknown_variant(tmp_path, model_type, match):
    d = _copy(tmp_path, "mamba_f32")
    _set_config(d, model_type=model_type)
    with pytest.raises(CheckpointError, match=match):
        ryzjupyter.load(str(d))


@pytest.mark.parametrize("name,cfg,match", [
    ("mamba_f32", {"hidden_act": "gelu"}, "hidden_act"),
    ("mamba_f32", {"conv_kernel": 40}, "conv_kernel"),
    ("mamba_f32", {"state_size": 0}, "state_size"),
    ("mamba2_f32", {"num_heads": 7}, "num_heads"),
    ("mamba2_f32", {"time_step_limit": [0.0, 10.0]}, "time_step_limit"),
    ("rwkv_f32", {"attention_hidden_size": 64}, "attention_hidden_size"),
    ("rwkv_f32", {"num_hidden_layers": "two"}, "num_hidden_layers"),
])
def test_unsupported_config(tmp_path, name, cfg, match):
    d = _copy(tmp_path, name)
    _set_config(d, **cfg)
    with pytest.raises(CheckpointError, match=match):
        ryzjupyter.load(str(d))


# ---- RWKV-7 against a reference written from the paper's formulas -----------------------

@pytest.fixture(scope="module")
def rwkv7_folders(tmp_path_factory):
    from ryzjupyter.families.random_recurrent import write_folder
    root = tmp_path_factory.mktemp("rwkv7")
    return {
        "f32": write_folder("rwkv7", root / "f32", seed=1, hidden_size=64, num_hidden_layers=3, head_size=16),
        "bf16": write_folder("rwkv7", root / "bf16", seed=2, dtype="bf16", hidden_size=48, num_hidden_layers=2,
                             head_size=8, intermediate_size=96),
    }


@pytest.mark.parametrize("fmt", ["f32", "bf16"])
def test_rwkv7_equals_its_reference(isa, rwkv7_folders, fmt):
    from . import rwkv7_reference
    folder = rwkv7_folders[fmt]
    ids = np.random.default_rng(3).integers(0, 384, 21)
    want = rwkv7_reference.logits(folder, ids)
    m = ryzjupyter.load(str(folder), prefill_chunk=8)
    assert m.family == "rwkv7"
    got = m.logits(ids)
    err = float(np.abs(got - want).max()) / float(np.abs(want).max())
    assert err <= RTOL, err
    cache = m.new_cache()                                   # prefill then the fused decode, token by token
    steps = [m.forward(ids[:5], cache)[0]] + [m.forward(ids[t:t + 1], cache)[0] for t in range(5, ids.size)]
    err = float(np.abs(np.vstack(steps) - want[4:]).max()) / float(np.abs(want).max())
    assert err <= RTOL, err


def test_rwkv7_generation_and_state_reuse(rwkv7_folders):
    m = ryzjupyter.load(str(rwkv7_folders["f32"]), prefill_chunk=8)
    ids = np.random.default_rng(4).integers(0, 384, 19).tolist()
    seq = list(ids)
    for _ in range(6):                                      # greedy by full recomputation
        seq.append(int(m.logits(seq)[-1].argmax()))
    s = m.new_session()
    r = s.generate(ids, max_new_tokens=6, temperature=0, ignore_eos=True)
    assert r.tokens == seq[len(ids):]
    r2 = s.generate(ids + r.tokens + [1, 2], max_new_tokens=2, temperature=0, ignore_eos=True)
    assert r2.stats.n_cached == len(ids) + 5 and r2.stats.n_prefill == 3


def test_rwkv7_untied_head_missing_is_the_same_error(tmp_path, rwkv7_folders):
    import shutil
    d = tmp_path / "r7"
    shutil.copytree(rwkv7_folders["f32"], d)
    _set_config(d, tie_word_embeddings=False)
    _rewrite(d, lambda sd: sd.pop("head.weight"))
    with pytest.raises(CheckpointError, match="^tie_word_embeddings is false but the checkpoint has no head.weight"):
        ryzjupyter.load(str(d))


def _fla_tensors(sd, n_layers, stacked_mix=False):
    """RWKV-LM tensors under flash-linear-attention's RWKV7ForCausalLM names, written out by hand
    from fla's module tree (model.embeddings / layers.<l>.{pre_norm, attn_norm, attn, ffn_norm, ffn}
    / norm, lm_head; LoRA(x) = lora.2(act(lora.0(x))) with nn.Linear weights [out, in] and lora.2's
    bias the w0 / a0 / v0 vector; GroupNorm g_norm; the first fla version's stacked attn.x_x)."""
    out = {"model.embeddings.weight": sd["emb.weight"], "model.norm.weight": sd["ln_out.weight"],
           "model.norm.bias": sd["ln_out.bias"], "lm_head.weight": sd["head.weight"]}
    for l in range(n_layers):
        b, m = f"blocks.{l}.", f"model.layers.{l}."
        if l == 0:
            out[m + "pre_norm.weight"], out[m + "pre_norm.bias"] = sd[b + "ln0.weight"], sd[b + "ln0.bias"]
        for lm, fla in (("ln1", "attn_norm"), ("ln2", "ffn_norm"), ("att.ln_x", "attn.g_norm")):
            out[m + fla + ".weight"], out[m + fla + ".bias"] = sd[b + lm + ".weight"], sd[b + lm + ".bias"]
        if stacked_mix:
            out[m + "attn.x_x"] = np.stack([sd[b + f"att.x_{c}"].reshape(-1) for c in "rwkvag"])
        else:
            for c in "rwkvag":
                out[m + f"attn.x_{c}"] = sd[b + f"att.x_{c}"]
        out[m + "attn.k_k"] = sd[b + "att.k_k"].reshape(-1)
        out[m + "attn.k_a"] = sd[b + "att.k_a"].reshape(-1)
        out[m + "attn.r_k"] = sd[b + "att.r_k"]
        for lm, fla in (("receptance", "r_proj"), ("key", "k_proj"), ("value", "v_proj"), ("output", "o_proj")):
            out[m + f"attn.{fla}.weight"] = sd[b + f"att.{lm}.weight"]
        for c in ("wavg" if l else "wag"):
            out[m + f"attn.{c}_lora.lora.0.weight"] = np.ascontiguousarray(sd[b + f"att.{c}1"].T)
            out[m + f"attn.{c}_lora.lora.2.weight"] = np.ascontiguousarray(sd[b + f"att.{c}2"].T)
            if c != "g":
                out[m + f"attn.{c}_lora.lora.2.bias"] = sd[b + f"att.{c}0"].reshape(-1)
        out[m + "ffn.x_k"] = sd[b + "ffn.x_k"].reshape(-1)
        out[m + "ffn.key.weight"], out[m + "ffn.value.weight"] = sd[b + "ffn.key.weight"], sd[b + "ffn.value.weight"]
    return out


def _fla_folder(src, dst, stacked_mix=False, **cfg):
    """The RWKV-LM folder src as an fla-hub style RWKV7ForCausalLM checkpoint in dst."""
    from safetensors.numpy import save_file
    c = json.loads((src / "config.json").read_text())
    dst.mkdir()
    config = {"architectures": ["RWKV7ForCausalLM"], "model_type": "rwkv7", "hidden_size": c["hidden_size"],
              "num_hidden_layers": c["num_hidden_layers"], "vocab_size": c["vocab_size"],
              "head_dim": c["head_size"], "num_heads": None, "hidden_ratio": 4.0,
              "intermediate_size": c["intermediate_size"], "norm_eps": 1e-5, "norm_bias": True, "norm_first": True,
              "hidden_act": "sqrelu", "attn": None, "attn_mode": "chunk", "fuse_norm": False,
              "value_dim": [c["hidden_size"]] * c["num_hidden_layers"], "tie_word_embeddings": False,
              "decay_low_rank_dim": 8, "a_low_rank_dim": 8, "v_low_rank_dim": 4, "gate_low_rank_dim": 8,
              "torch_dtype": "float32", **cfg}
    (dst / "config.json").write_text(json.dumps(config))
    sd = load_file(str(src / "model.safetensors"))
    save_file(_fla_tensors(sd, c["num_hidden_layers"], stacked_mix), str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("stacked_mix", [False, True], ids=["x_rwkvag", "x_x"])
def test_rwkv7_loads_the_fla_hub_naming(isa, tmp_path, rwkv7_folders, stacked_mix):
    """A checkpoint in flash-linear-attention's RWKV7ForCausalLM naming (the fla-hub models) runs as
    the same weights in RWKV-LM's naming: equal logits (prefill and the fused decode), greedy tokens."""
    import shutil
    lm = tmp_path / "lm"
    shutil.copytree(rwkv7_folders["f32"], lm)
    _set_config(lm, group_norm_eps=16 * 1e-5)           # fla: the group norm's eps is head_dim * norm_eps
    fla = _fla_folder(rwkv7_folders["f32"], tmp_path / "fla", stacked_mix)
    a, b = ryzjupyter.load(str(lm), prefill_chunk=8), ryzjupyter.load(str(fla), prefill_chunk=8)
    assert b.family == "rwkv7" and b.config.fla and b.config.gn_eps == pytest.approx(16e-5)
    ids = np.random.default_rng(5).integers(0, 384, 17)
    want = a.logits(ids)
    np.testing.assert_allclose(b.logits(ids), want, rtol=0, atol=1e-6 * float(np.abs(want).max()))
    cache = b.new_cache()
    steps = [b.forward(ids[:5], cache)[0]] + [b.forward(ids[t:t + 1], cache)[0] for t in range(5, ids.size)]
    np.testing.assert_allclose(np.vstack(steps), want[4:], rtol=0, atol=RTOL * float(np.abs(want).max()))
    g = dict(max_new_tokens=6, temperature=0, ignore_eos=True)
    assert b.new_session().generate(ids.tolist(), **g).tokens == a.new_session().generate(ids.tolist(), **g).tokens


@pytest.mark.parametrize("edit, cfg, match", [
    (lambda sd: sd.__setitem__("model.layers.0.attn.q_proj.weight", np.zeros((64, 64), np.float32)), {},
     "does not use: 'model.layers.0.attn.q_proj.weight'"),
    (lambda sd: sd.pop("model.layers.1.attn.v_lora.lora.2.bias"), {}, "v0"),
    (lambda sd: sd.__setitem__("model.layers.1.attn.g_lora.lora.0.weight", np.zeros((8, 63), np.float32)), {},
     "g_lora.lora.0.weight.* has shape \\[8, 63\\]"),
    (None, {"attn": {"layers": [1], "num_heads": 4}}, "softmax attention layers"),
    (None, {"value_dim": 128}, "value_dim"),
    (None, {"norm_bias": False}, "norm_bias"),
])
def test_rwkv7_fla_naming_errors(tmp_path, rwkv7_folders, edit, cfg, match):
    d = _fla_folder(rwkv7_folders["f32"], tmp_path / "fla", **cfg)
    if edit is not None:
        _rewrite(d, edit)
    with pytest.raises(CheckpointError, match=match):
        ryzjupyter.load(str(d))


@pytest.mark.parametrize("name", ["mamba_f32", "rwkv_f32", "mamba2_f32"])
@pytest.mark.parametrize("draft", ["lookup", "adjacency"])
def test_speculative_decoding_gives_the_greedy_tokens(name, draft):
    """draft= on a recurrent model: the verify pass keeps a state snapshot at every position so
    rejected draft tokens are taken back; greedy output equals plain greedy decoding."""
    m = model(name)
    ids = reference(name)["input_ids_2"].tolist()
    prompt = ids[:12] + ids[:12] + ids[:6]                    # repeats: the drafters find proposals
    plain = m.new_session().generate(prompt, max_new_tokens=20, temperature=0, ignore_eos=True)
    s = m.new_session()
    r = s.generate(prompt, max_new_tokens=20, temperature=0, ignore_eos=True, draft=draft, num_draft=4)
    assert r.tokens == plain.tokens
    assert r.stats.drafted > 0 and r.stats.target_passes < r.stats.n_generated + 1
    more = s.generate(prompt + r.tokens + ids[:3], max_new_tokens=4, temperature=0, ignore_eos=True)
    again = m.new_session().generate(prompt + r.tokens + ids[:3], max_new_tokens=4, temperature=0, ignore_eos=True)
    assert more.tokens == again.tokens and more.stats.n_cached >= len(prompt)


@pytest.mark.parametrize("name", ["mamba_f32", "rwkv_f32"])
def test_verify_tree_rows_are_decode_steps_and_commit_runs_the_path(name):
    """LanguageModel.verify_tree on a recurrent state: every node runs from its parent's state
    (the snapshot RecurrentModel._keep_position takes after each node), row i bitwise the
    one-token step after the node's ancestors; commit(path) leaves the state the path gives."""
    from ryzjupyter.decoding.tree import depths_of, path_to
    m = model(name)
    ids = [int(t) for t in reference(name)["input_ids_0"][:4]]
    parents = [-1, 0, 1, 0, 3, 0]
    toks = [5, 7, 9, 11, 13, 15]
    c = m.new_cache(32)
    m.forward(np.asarray(ids, np.int64), c)
    rows, commit = m.verify_tree(toks, depths_of(parents), c)
    assert c.tokens == ids
    for node in range(len(toks)):
        r = m.new_cache(32)
        m.forward(np.asarray(ids, np.int64), r)
        for i in path_to(parents, node):
            want = m.forward(np.asarray([toks[i]], np.int64), r)[-1]
        np.testing.assert_array_equal(rows[node], want)
    with pytest.raises(ValueError, match="root-to-node path"):
        commit([0, 2])
    commit([0, 3, 4])
    assert c.tokens == ids + [5, 11, 13]
    r = m.new_cache(32)
    m.forward(np.asarray(ids + [5, 11, 13], np.int64), r)
    for a, b in zip(c.state, r.state):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert m.verify([17, 19], c).shape == (2, m.vocab_size) and len(c) == len(ids) + 5
    c.truncate(len(ids) + 4)                                  # verify kept a snapshot after each token
    c.truncate(len(ids) + 3)
