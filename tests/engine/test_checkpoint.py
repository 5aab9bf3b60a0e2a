import json
import os

import numpy as np
import pytest

from ryzjupyter.engine.checkpoint import (Checkpoint, CheckpointError, SafetensorsFile, bf16_to_f32, detect_kind,
                                   read_config, resolve_model_path, rope_theta)
from ryzjupyter.families.random_bitnet import _bf16_bits, write_random_bitnet

from .conftest import FIXTURES


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_random_bitnet(tmp_path_factory.mktemp("tiny"), seed=1)


def test_reads_what_safetensors_reads(tiny_folder):
    from safetensors.numpy import load_file
    ck = Checkpoint(tiny_folder)
    # the reference reader handles every dtype except BF16; compare those, and BF16 through its bits
    ref = {}
    from safetensors import safe_open
    with safe_open(str(tiny_folder / "model.safetensors"), framework="numpy") as f:
        for k in f.keys():
            if ck.info(k).dtype != "BF16":
                ref[k] = f.get_tensor(k)
    assert ref
    for k, v in ref.items():
        np.testing.assert_array_equal(ck.raw(k), v)
    emb = ck.raw("model.embed_tokens.weight")
    assert emb.dtype == np.uint16 and not emb.flags.writeable
    assert ck.f32("model.embed_tokens.weight").dtype == np.float32


def test_bf16_widening_is_exact():
    x = np.array([1.0, -2.5, 3.140625, 0.0, -0.0, 2.0 ** -100, np.inf], np.float32)
    np.testing.assert_array_equal(bf16_to_f32(_bf16_bits(x)), x)


def test_require_names_tensor_and_problem(tiny_folder):
    ck = Checkpoint(tiny_folder)
    with pytest.raises(CheckpointError, match=r"model.norm.weight.*shape \[64\].*\[65\]"):
        ck.require("model.norm.weight", (65,), ("BF16",))
    with pytest.raises(CheckpointError, match=r"model.norm.weight.*dtype BF16"):
        ck.require("model.norm.weight", (64,), ("F32",))
    with pytest.raises(CheckpointError, match=r"lm_head.weight.*missing"):
        ck.require("lm_head.weight", (1, 1), ("F32",))
    with pytest.raises(CheckpointError, match="does not use"):
        ck.check_all_used()


def test_truncated_file(tiny_folder, tmp_path):
    for fn in os.listdir(tiny_folder):
        (tmp_path / fn).write_bytes((tiny_folder / fn).read_bytes())
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        Checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="too short"):
        Checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(CheckpointError, match="header length"):
        Checkpoint(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        Checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        Checkpoint(tmp_path)


def test_pickle_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        Checkpoint(tmp_path)


def test_sharded(tiny_folder, tmp_path):
    from safetensors.numpy import save_file
    ck = Checkpoint(tiny_folder)
    names = ck.names()
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    wm = {}
    for fn, ns in shards.items():
        # store BF16 tensors as F32 in the shards (safetensors.numpy cannot write BF16)
        save_file({n: ck.f32(n) if ck.info(n).dtype == "BF16" else np.array(ck.raw(n)) for n in ns},
                  str(tmp_path / fn))
        wm.update({n: fn for n in ns})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    (tmp_path / "config.json").write_text((tiny_folder / "config.json").read_text())
    sh = Checkpoint(tmp_path)
    assert sorted(sh.names()) == sorted(names)
    for n in names:
        np.testing.assert_array_equal(sh.f32(n) if sh.info(n).dtype == "F32" else sh.raw(n),
                                      ck.f32(n) if ck.info(n).dtype == "BF16" else ck.raw(n))
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors.*missing"):
        Checkpoint(tmp_path)


def test_rope_theta_both_spellings():
    assert rope_theta({"rope_theta": 10000}, 5e5) == 10000.0
    assert rope_theta({"rope_parameters": {"rope_theta": 123.0, "rope_type": "default"}}, 5e5) == 123.0
    assert rope_theta({}, 5e5) == 5e5
    with pytest.raises(CheckpointError, match="rope"):
        rope_theta({"rope_scaling": {"rope_type": "llama3", "factor": 8}}, 5e5)


def test_detect_kind(tiny_folder):
    base = {"model_type": "bitnet", "architectures": ["BitNetForCausalLM"]}
    assert detect_kind(base).variant == "float"
    q = lambda **kw: {**base, "quantization_config": {"quant_method": "bitnet", **kw}}  # noqa: E731
    k = detect_kind(q(linear_class="bitlinear", quantization_mode="offline"), Checkpoint(tiny_folder))
    assert (k.variant, k.scale_mode) == ("packed", "divide")
    assert detect_kind(q(linear_class="autobitlinear", quantization_mode="offline")).scale_mode == "multiply"
    assert detect_kind(q(linear_class="autobitlinear", quantization_mode="online")).variant == "online"
    assert detect_kind({"model_type": "llama", "architectures": ["BitnetForCausalLM"]}).variant == "1bitllm"
    with pytest.raises(CheckpointError, match="unknown architecture"):
        detect_kind({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(CheckpointError, match="linear_class"):
        detect_kind(q(linear_class="weird"))


def test_resolve_paths(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="cannot be read"):   # ENAMETOOLONG from stat(): not an OSError
        resolve_model_path(str(tmp_path / ("x" * 300) / "folder"))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_model_path(tmp_path / "f.txt")
    assert resolve_model_path(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        resolve_model_path("someone/not-a-cached-model", local_files_only=True, cache_dir=tmp_path / "hub")


def test_hub_id_from_cache(tmp_path, tiny_folder):
    """A model in huggingface_hub's cache layout resolves offline."""
    repo = tmp_path / "hub" / "models--me--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for fn in os.listdir(tiny_folder):
        (snap / fn).write_bytes((tiny_folder / fn).read_bytes())
    p = resolve_model_path("me/tiny", local_files_only=True, cache_dir=tmp_path / "hub")
    assert (p / "config.json").is_file()


@pytest.mark.parametrize("key,value", [("hidden_size", "64"), ("num_key_value_heads", 3), ("head_dim", 0),
                                       ("rms_norm_eps", "tiny"), ("hidden_act", "gelu"), ("num_hidden_layers", -1),
                                       ("hidden_size", float("inf")), ("vocab_size", float("nan")),
                                       ("max_position_embeddings", 0.5), ("tie_word_embeddings", "no")])
def test_bad_config_values(key, value):
    from ryzjupyter.families.bitnet import Config
    cfg = {"model_type": "bitnet", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}
    cfg[key] = value
    with pytest.raises(CheckpointError, match=key if key != "num_key_value_heads" else "multiple"):
        Config.from_dict(cfg, detect_kind(cfg))


@pytest.mark.parametrize("cfg,what", [({"architectures": 3.5}, "architectures"),
                                      ({"architectures": [1]}, "architectures"),
                                      ({"model_type": ["bitnet"]}, "model_type")])
def test_detect_kind_bad_types(cfg, what):
    """Found by tests/fuzz (checkpoint_config): a wrong JSON type is a CheckpointError naming the key."""
    with pytest.raises(CheckpointError, match=what):
        detect_kind(cfg)


def test_kv_cache_larger_than_address_space(tmp_path):
    """A context the KV cache cannot even reserve is refused at load, with the max_context that fits."""
    import ryzjupyter
    for f in (FIXTURES / "packed").iterdir():
        (tmp_path / f.name).symlink_to(f)
    cfg = json.loads((FIXTURES / "packed" / "config.json").read_text())
    cfg["max_position_embeddings"] = 10**15
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="max_context=N"):
        ryzjupyter.load(tmp_path)
    assert ryzjupyter.load(tmp_path, max_context=64).max_context == 64


@pytest.mark.parametrize("entry,what", [({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "dtype"),
                                        ({"dtype": "U8", "shape": [-1, -2], "data_offsets": [0, 2]}, "shape"),
                                        ({"dtype": "U8", "shape": [2**32, 2**32], "data_offsets": [0, 0]}, "needs"),
                                        ({"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}, "data_offsets"),
                                        ("F32", "an object")])
def test_bad_safetensors_header_entries(tmp_path, entry, what):
    """Found by tests/fuzz (safetensors): every header entry is checked before a tensor is mapped."""
    header = json.dumps({"w": entry}).encode()
    p = tmp_path / "model.safetensors"
    p.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(CheckpointError, match=what):
        SafetensorsFile(p)
