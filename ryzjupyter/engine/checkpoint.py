"""Finding and reading Hugging Face checkpoints without torch.

A checkpoint is a folder with config.json, one or more *.safetensors files (sharded ones with a
model.safetensors.index.json), tokenizer.json and usually tokenizer_config.json. A hub id
("owner/name") is resolved to such a folder through huggingface_hub's cache.

Safetensors files are memory-mapped: every tensor is a read-only numpy view on the file, so a
checkpoint costs address space, not memory, until a tensor is touched. numpy has no bfloat16, so
BF16 tensors come back as uint16 views and `Checkpoint.f32(name)` widens them (bits << 16).

Pickle files (*.bin, *.pt, *.pth) can run arbitrary code when read; they are refused unless the
caller passes allow_pickle=True.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the problem and the fix."""


# ----------------------------------------------------------------------------
# locating the folder (local path or hub id)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def resolve_model_path(path_or_id, *, revision=None, allow_pickle=False, local_files_only=None,
                       cache_dir=None) -> Path:
    """Return the local folder for a path or a Hugging Face hub id.

    A hub id is looked up in huggingface_hub's cache first (works offline); if it is not cached
    and the network is allowed, it is downloaded. Raises CheckpointError naming what is missing."""
    if path_or_id is None:
        raise CheckpointError("no model given: pass a folder path or a hub id such as "
                              "'microsoft/bitnet-b1.58-2B-4T'")
    text = os.fspath(path_or_id)
    p = Path(os.path.expanduser(text))
    try:
        is_dir, is_file = p.is_dir(), p.is_file()
    except OSError as e:                # a path the system cannot even look up (a name too long...)
        raise CheckpointError(f"model folder {text[:200]!r} cannot be read ({e.strerror}); pass an existing "
                              "folder with config.json + *.safetensors, or a hub id like 'owner/name'") from None
    if is_dir:
        return p.resolve()
    if is_file:
        raise CheckpointError(f"{text!r} is a file; pass the folder that holds config.json and the "
                              f"*.safetensors files (here: {str(p.parent)!r})")
    if not _HUB_ID.match(text):  # not "owner/name": a local path that is not there
        raise CheckpointError(f"model folder {text!r} does not exist; pass an existing folder with "
                              "config.json + *.safetensors, or a hub id like 'owner/name'")
    return _resolve_hub_id(text, revision=revision, allow_pickle=allow_pickle,
                           local_files_only=local_files_only, cache_dir=cache_dir)


def _resolve_hub_id(repo_id, *, revision, allow_pickle, local_files_only, cache_dir) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub import constants as hf_constants
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError(f"hub id {repo_id!r} needs huggingface_hub: pip install huggingface_hub") from e
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
    if allow_pickle:
        patterns += ["*" + s for s in _PICKLE_SUFFIXES]
    kw = dict(revision=revision, allow_patterns=patterns, cache_dir=cache_dir)
    try:  # the cache first: no network needed when the files are there
        return Path(snapshot_download(repo_id, local_files_only=True, **kw))
    except Exception as cached_err:  # noqa: BLE001 - any failure means "not usable from cache"
        offline = local_files_only or hf_constants.HF_HUB_OFFLINE
        where = cache_dir or hf_constants.HF_HUB_CACHE
        if offline:
            raise CheckpointError(
                f"model {repo_id!r} is not in the Hugging Face cache ({where}) and downloads are off "
                "(HF_HUB_OFFLINE=1 or local_files_only=True); download it where there is network with "
                f"`huggingface-cli download {repo_id}`, or pass a local folder") from cached_err
    try:
        return Path(snapshot_download(repo_id, **kw))
    except Exception as e:  # noqa: BLE001 - network, auth, 404: report them all clearly
        raise CheckpointError(
            f"model {repo_id!r} is not in the Hugging Face cache ({where}) and could not be downloaded "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}); check the id and "
            "the network, or download it elsewhere and pass the local folder") from e


# ----------------------------------------------------------------------------
# config.json

def read_config(folder) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{str(folder)!r} has no config.json; a Hugging Face model folder needs "
                              "config.json next to its *.safetensors files")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({e}); the file is damaged or truncated, "
                              "download it again") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object, not {type(cfg).__name__}")
    return cfg


def rope_theta(config: dict, default: float) -> float:
    """RoPE base from either spelling: top-level `rope_theta` (transformers 4.x) or
    `rope_parameters.rope_theta` (5.x)."""
    rp = config.get("rope_parameters")
    if isinstance(rp, dict) and rp.get("rope_theta") is not None:
        theta = rp["rope_theta"]
        rtype = rp.get("rope_type", "default")
        if rtype not in (None, "default"):
            raise CheckpointError(f"rope_parameters.rope_type={rtype!r} (RoPE scaling) is not supported; "
                                  "only the default RoPE is implemented")
    elif config.get("rope_theta") is not None:
        theta = config["rope_theta"]
    else:
        theta = default
    rs = config.get("rope_scaling")
    if isinstance(rs, dict) and rs.get("rope_type", rs.get("type")) not in (None, "default"):
        raise CheckpointError(f"rope_scaling={rs!r} is not supported; only the default RoPE is implemented")
    try:
        theta = float(theta)
    except (TypeError, ValueError):
        raise CheckpointError(f"rope_theta must be a number, got {theta!r} in config.json") from None
    if not 0 < theta < float("inf"):
        raise CheckpointError(f"rope_theta must be a positive finite number, got {theta} in config.json")
    return theta


# ----------------------------------------------------------------------------
# safetensors, memory-mapped

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


@dataclass
class TensorInfo:
    name: str
    dtype: str          # safetensors spelling: "F32", "BF16", "U8", ...
    shape: tuple
    file: Path
    start: int          # absolute byte offset in the file
    nbytes: int


class SafetensorsFile:
    """One *.safetensors file: header parsed and checked, tensors as read-only memmap views."""

    def __init__(self, path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{self.path.name}: file is {size} bytes, too short to be safetensors "
                                      "(truncated download?); download it again")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise CheckpointError(f"{self.path.name}: header length {n} does not fit in a {size}-byte "
                                      "file; the file is truncated or not safetensors, download it again")
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise CheckpointError(f"{self.path.name}: safetensors header is not valid JSON ({e}); "
                                  "the file is damaged, download it again") from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path.name}: the safetensors header must be a JSON object, not "
                                  f"{type(header).__name__}; the file is damaged or not safetensors, "
                                  "download it again")
        meta = header.pop("__metadata__", None) or {}
        self.metadata = meta if isinstance(meta, dict) else {}
        base = 8 + n
        self.tensors: dict[str, TensorInfo] = {}
        for name, h in header.items():
            dtype, shape, (a, b) = self._entry(name, h)
            want = math.prod(shape) * np.dtype(_ST_DTYPES[dtype]).itemsize
            if b - a != want:
                raise CheckpointError(f"{self.path.name}: tensor {name!r} {dtype}{list(shape)} needs {want} "
                                      f"bytes but the header gives {b - a}; the file is damaged")
            if base + b > size:
                raise CheckpointError(f"{self.path.name}: tensor {name!r} ends at byte {base + b} but the "
                                      f"file has {size} bytes; the file is truncated, download it again")
            self.tensors[name] = TensorInfo(name, dtype, shape, self.path, base + a, b - a)
        self._mm = None

    def _entry(self, name, h):
        """One header entry checked: dtype (a known name), shape (non-negative integers), data_offsets
        (two integers, 0 <= start <= end)."""
        def bad(what):
            return CheckpointError(f"{self.path.name}: bad header entry for tensor {name!r} ({what}); "
                                   "the file is damaged, download it again")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not isinstance(h, dict):
            raise bad(f"an object with dtype, shape and data_offsets expected, got {type(h).__name__}")
        dtype, shape, offsets = h.get("dtype"), h.get("shape"), h.get("data_offsets")
        if not isinstance(dtype, str):
            raise bad(f"dtype must be a string, got {dtype!r:.60}")
        if dtype not in _ST_DTYPES:
            raise CheckpointError(f"{self.path.name}: tensor {name!r} has dtype {dtype!r:.60}, which is not "
                                  f"supported (supported: {', '.join(_ST_DTYPES)})")
        if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
            raise bad(f"shape must be a list of non-negative integers, got {shape!r:.60}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o) for o in offsets) \
                or not 0 <= offsets[0] <= offsets[1]:
            raise bad(f"data_offsets must be [start, end] with 0 <= start <= end, got {offsets!r:.60}")
        return dtype, tuple(shape), tuple(offsets)

    def _map(self):
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mm

    def raw(self, name) -> np.ndarray:
        """The stored tensor as a read-only view (BF16 as uint16)."""
        t = self.tensors[name]
        if t.nbytes == 0:
            return np.zeros(t.shape, _ST_DTYPES[t.dtype])
        buf = self._map()[t.start:t.start + t.nbytes]
        return buf.view(_ST_DTYPES[t.dtype]).reshape(t.shape)

    def close(self):
        self._mm = None


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: the top half of the f32 word."""
    bits = np.asarray(bits, dtype=np.uint16)
    pair = np.zeros(bits.shape + (2,), np.uint16)     # little-endian f32 = (low half 0, high half bits)
    pair[..., 1] = bits                               # one pass, no uint32 temporaries
    return pair.view(np.float32).reshape(bits.shape)


def to_f32(arr: np.ndarray, dtype: str) -> np.ndarray:
    """A stored tensor in float32 (a new C-contiguous array, or the view itself if already f32)."""
    if dtype == "BF16":
        return bf16_to_f32(arr)
    if dtype == "F32":
        return np.ascontiguousarray(arr)
    if dtype in ("F16", "F64"):
        return np.ascontiguousarray(arr, dtype=np.float32)
    raise CheckpointError(f"cannot read a {dtype} tensor as floating point")


# ----------------------------------------------------------------------------
# a whole checkpoint folder

class Checkpoint:
    """The tensors of a model folder (single or sharded safetensors), memory-mapped.

    Use `require(name, shape, dtypes)` to fetch a tensor while checking it, and
    `check_all_used()` at the end so that no tensor is silently ignored."""

    def __init__(self, folder, *, allow_pickle=False):
        self.folder = Path(folder)
        self.config = read_config(self.folder)
        self.files: dict[Path, SafetensorsFile] = {}
        self.index: dict[str, TensorInfo] = {}
        self.used: set[str] = set()
        self._torch_tensors = None
        st = sorted(self.folder.glob("*.safetensors"))
        index_path = self.folder / "model.safetensors.index.json"
        if not index_path.is_file():
            idx = sorted(self.folder.glob("*.safetensors.index.json"))
            index_path = idx[0] if idx else None
        if index_path is not None:
            self._load_sharded(index_path)
        elif (self.folder / "model.safetensors").is_file():   # the transformers convention
            self._add_file(self.folder / "model.safetensors")
        elif len(st) == 1:
            self._add_file(st[0])
        elif st:
            raise CheckpointError(f"{str(self.folder)!r} holds several *.safetensors files "
                                  f"({', '.join(p.name for p in st[:4])}) but no model.safetensors and no "
                                  "model.safetensors.index.json saying which are the weights; add the index")
        else:
            pickles = sorted(p for p in self.folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
            if not pickles:
                raise CheckpointError(f"{str(self.folder)!r} has no *.safetensors weights; the folder needs "
                                      "model.safetensors (or shards with model.safetensors.index.json)")
            if not allow_pickle:
                raise CheckpointError(
                    f"{str(self.folder)!r} holds only pickle weights ({', '.join(p.name for p in pickles)}); "
                    "pickle files can run arbitrary code when loaded, so they are refused. Convert them to "
                    "safetensors, or pass allow_pickle=True if you trust their source")
            self._load_pickles(pickles)

    # -- building the index
    def _add_file(self, path):
        f = SafetensorsFile(path)
        self.files[path] = f
        for name, info in f.tensors.items():
            if name in self.index:
                raise CheckpointError(f"tensor {name!r} appears in both {self.index[name].file.name} and "
                                      f"{path.name}; remove the duplicate file")
            self.index[name] = info

    def _load_sharded(self, index_path):
        try:
            wm = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            assert isinstance(wm, dict)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{index_path.name} is not a valid safetensors index (needs a "
                                  "'weight_map' object); download it again") from e
        for name, s in wm.items():
            if not isinstance(s, str) or not s or Path(s).name != s or s in (".", ".."):
                raise CheckpointError(f"{index_path.name} maps tensor {name!r} to {s!r:.80}, which is not the "
                                      "name of a file in the model folder; the index is damaged, download it again")
        shards = sorted(set(wm.values()))
        for s in shards:
            p = self.folder / s
            if not p.is_file():
                raise CheckpointError(f"shard {s!r} listed in {index_path.name} is missing from "
                                      f"{str(self.folder)!r}; download the complete model")
            self._add_file(p)
        for name, s in wm.items():
            info = self.index.get(name)
            if info is None or info.file.name != s:
                raise CheckpointError(f"{index_path.name} says tensor {name!r} is in {s!r}, but it is not "
                                      "there; the shards do not match the index, download the model again")

    def _load_pickles(self, paths):
        try:
            import torch
        except ImportError as e:
            raise CheckpointError("reading pickle (.bin) weights needs torch, which ryzjupyter does not "
                                  "depend on; convert the checkpoint to safetensors instead") from e
        self._torch_tensors = {}
        for p in paths:
            sd = torch.load(p, map_location="cpu", weights_only=False)
            for k, v in sd.items():
                if v.dtype == torch.bfloat16:
                    arr, dt = v.view(torch.int16).numpy().view(np.uint16), "BF16"
                else:
                    arr = v.numpy()
                    dt = {np.float32: "F32", np.float16: "F16", np.uint8: "U8", np.int8: "I8",
                          np.int64: "I64", np.int32: "I32", np.float64: "F64"}.get(arr.dtype.type, "F32")
                self._torch_tensors[k] = arr
                self.index[k] = TensorInfo(k, dt, tuple(arr.shape), p, 0, arr.nbytes)

    # -- access
    def __contains__(self, name):
        return name in self.index

    def names(self):
        return list(self.index)

    def info(self, name) -> TensorInfo:
        return self.index[name]

    def raw(self, name) -> np.ndarray:
        if name not in self.index:
            raise CheckpointError(f"tensor {name!r} is missing from {str(self.folder)!r}; the checkpoint is "
                                  "incomplete or does not match config.json")
        self.used.add(name)
        if self._torch_tensors is not None:
            return self._torch_tensors[name]
        return self.files[self.index[name].file].raw(name)

    def f32(self, name) -> np.ndarray:
        return to_f32(self.raw(name), self.index[name].dtype)

    def require(self, name, shape, dtypes, *, what="") -> TensorInfo:
        """Check that `name` exists with `shape` (a tuple, or a list of accepted tuples) and one of
        `dtypes`; mark it used. Raises CheckpointError naming the tensor and the fix."""
        info = self.index.get(name)
        hint = f" ({what})" if what else ""
        if info is None:
            raise CheckpointError(f"tensor {name!r}{hint} is missing from the checkpoint in "
                                  f"{str(self.folder)!r}; the files are incomplete or do not match config.json")
        shapes = shape if isinstance(shape, list) else [shape]
        if tuple(info.shape) not in [tuple(s) for s in shapes]:
            want = " or ".join(str(list(s)) for s in shapes)
            raise CheckpointError(f"tensor {name!r}{hint} has shape {list(info.shape)} but config.json implies "
                                  f"{want}; the config and weights do not belong together")
        if info.dtype not in dtypes:
            raise CheckpointError(f"tensor {name!r}{hint} has dtype {info.dtype}, expected one of "
                                  f"{', '.join(dtypes)}; the checkpoint format is not the one config.json "
                                  "declares")
        self.used.add(name)
        return info

    def check_all_used(self, ignorable=()):
        """Raise if the checkpoint holds tensors the model did not read (never skip silently)."""
        extra = [n for n in self.index if n not in self.used and not any(re.fullmatch(p, n) for p in ignorable)]
        if extra:
            shown = ", ".join(repr(n) for n in extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
            raise CheckpointError(f"the checkpoint has tensors this model does not use: {shown}; the "
                                  "architecture in config.json does not match the weights (or is a variant "
                                  "ryzjupyter does not implement)")

    def source_files(self) -> list[Path]:
        files = sorted(self.files) if self.files else sorted({i.file for i in self.index.values()})
        return [self.folder / "config.json"] + files

    def close(self):
        for f in self.files.values():
            f.close()
        self._torch_tensors = None


# ----------------------------------------------------------------------------
# which engine runs a config

@dataclass
class ModelKind:
    family: str                  # "bitnet", "mamba", "mamba2", "rwkv" (RWKV-4) or "rwkv7"
    variant: str = ""            # bitnet: "packed", "online", "offline_float", "float", "1bitllm"
    scale_mode: str = ""         # bitnet packed: "divide" (bitlinear) or "multiply" (autobitlinear)
    notes: list = field(default_factory=list)


SUPPORTED = ("BitNetForCausalLM (microsoft/bitnet-b1.58-2B-4T packed, -bf16, float), "
             "1bitLLM BitnetForCausalLM (model_type llama), MambaForCausalLM, Mamba2ForCausalLM, "
             "RwkvForCausalLM (RWKV-4) and RWKV-7 (model_type rwkv7)")


def detect_kind(config: dict, ckpt: Checkpoint | None = None) -> ModelKind:
    """Decide the family and BitNet weight format from config.json (and tensor names)."""
    mt = config.get("model_type") or ""
    if not isinstance(mt, str):
        raise CheckpointError(f"config.json: model_type must be a string like 'bitnet', got {mt!r:.60}; "
                              "fix config.json")
    mt = mt.lower()
    archs = config.get("architectures") or []
    if isinstance(archs, str):
        archs = [archs]
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise CheckpointError(f"config.json: architectures must be a list of class names like "
                              f"[\"BitNetForCausalLM\"], got {archs!r:.60}; fix config.json")
    names = ckpt.names() if ckpt is not None else []
    if mt == "bitnet" or "BitNetForCausalLM" in archs:
        qc = config.get("quantization_config")
        if not qc:
            return ModelKind("bitnet", "float", notes=["no quantization_config: float weights, as transformers"])
        if not isinstance(qc, dict) or qc.get("quant_method", "bitnet") != "bitnet":
            raise CheckpointError(f"quantization_config {qc!r} is not a BitNet one (quant_method 'bitnet'); "
                                  "this quantization is not supported")
        lc = qc.get("linear_class", "bitlinear") or "bitlinear"
        mode = qc.get("quantization_mode", "offline") or "offline"
        if not isinstance(lc, str) or lc not in ("bitlinear", "autobitlinear"):
            raise CheckpointError(f"quantization_config.linear_class={lc!r} is unknown; expected 'bitlinear' "
                                  "or 'autobitlinear'")
        if not isinstance(mode, str) or mode not in ("offline", "online"):
            raise CheckpointError(f"quantization_config.quantization_mode={mode!r} is unknown; expected "
                                  "'offline' or 'online'")
        if mode == "online":
            if lc != "autobitlinear":
                raise CheckpointError("quantization_mode 'online' needs linear_class 'autobitlinear' "
                                      "(transformers has no online 'bitlinear'); fix config.json")
            return ModelKind("bitnet", "online")
        packed = any(n.endswith(".weight") and ckpt.info(n).dtype == "U8" for n in names) if ckpt else True
        scale = "multiply" if lc == "autobitlinear" else "divide"
        return ModelKind("bitnet", "packed" if packed else "offline_float", scale)
    if mt == "llama" and (any("BitnetForCausalLM" == a or "BitNetForCausalLM" == a for a in archs)
                          or any(n.endswith("inner_attn_ln.weight") for n in names)):
        return ModelKind("bitnet", "1bitllm")
    if mt in ("mamba", "mamba2", "rwkv", "rwkv7"):
        return ModelKind(mt)
    if mt in ("falcon_mamba", "jamba", "zamba", "zamba2", "bamba", "falcon_h1", "nemotron_h", "rwkv5", "rwkv6"):
        raise CheckpointError(f"model_type {mt!r} is a Mamba/RWKV variant ryzjupyter does not implement; "
                              f"ryzjupyter runs {SUPPORTED}")
    raise CheckpointError(f"unknown architecture: model_type={mt or None!r}, architectures={archs or None}; "
                          f"ryzjupyter runs {SUPPORTED}")
