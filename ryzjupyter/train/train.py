"""Train a tiny BitNet b1.58 (quantization-aware) on the KJV corpus and export it in the packed 2B4T format.

Example (the exact commands used for the shipped models are in ryzjupyter/models/demo/MODEL_CARD.md):

    python -m ryzjupyter.train.corpus --out-dir /tmp/kjv
    python -m ryzjupyter.train.train --corpus /tmp/kjv/kjv-train.txt --valid /tmp/kjv/kjv-valid.txt \
        --out ryzjupyter/models/demo --hidden 256 --layers 4 --cpu-minutes 40

In-context copy mix (``--copy-frac F``): a fraction F of the training rows are copy sequences, a passage from
``--copy-sources`` (the training chapters ``kjv`` and/or corpus.py's copy-<name>-train.txt files) that recurs
later in the row; no copy row shares a 16-token run with --valid or the ``--copy-exclude`` files. The rules are in
copymix.py; with F = 0 the rows are exactly the plain windows of earlier runs. ``--ctx`` sets the context (RoPE has
no table, so any length trains; the export's max_position_embeddings and the tokenizer's model_max_length are set
to it). The record then also holds ``copy_mix`` (sources with their token counts and SHA-256, rows drawn),
``copy_second_over_first`` (bench copy's perplexity ratio on 8 doubled validation passages, also in every eval) and,
for ctx > 256, ``val_ppl_256`` (validation perplexity with 256-token windows, comparable with earlier models).

Training length is a CPU-time budget (``--cpu-minutes``, measured with time.process_time so a SIGSTOP/SIGCONT or
a busy machine does not shorten it), optionally capped by ``--wall-minutes``, or a fixed ``--steps``; the
learning-rate schedule (linear warmup, cosine decay) follows the progress fraction. Runs with ``--threads 1`` by default.

Validation perplexity (written to ``validation_ppl.json`` and reproduced by ``python -m ryzjupyter.bench ppl``):
  ids = tokenizer.encode(valid_text, add_special_tokens=False)   (no BOS, no EOS)
  split ids into consecutive non-overlapping windows of n_ctx = max_position_embeddings tokens starting at 0; the
  last window holds the remainder (dropped if it has fewer than 2 tokens); every window is evaluated on its own
  from position 0 (fresh cache); inside a window of length L, token j+1 is predicted from tokens 0..j for
  j = 0..L-2 (so the first token of each window is never predicted);
  ppl = exp(sum of -log p / number of predicted tokens), computed in float32 with the exported weights.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import copymix
from . import corpus as corpus_mod
from . import export as export_mod
from . import tok as tok_mod
from .model import BitNetConfig, BitNetLM, trainable_from_packed

WINDOWING = ("ids = tokenizer.encode(text, add_special_tokens=False) (no BOS/EOS); consecutive non-overlapping "
             "windows ids[i*n_ctx:(i+1)*n_ctx] starting at 0, n_ctx = max_position_embeddings; the last window keeps "
             "the remainder (dropped if < 2 tokens); each window is run on its own from position 0; in a window of "
             "length L the tokens 1..L-1 are predicted; ppl = exp(sum nll / count), float32 forward, "
             "exported weights")

SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a wise teacher.", "Answer in the style of the scriptures.",
                  "You are a storyteller."]
USER_PREFIXES = ["", "", "", "Continue: ", "Tell me more: ", "Go on. ", "What comes next? "]


def build_stream(tok, chapters, rng: random.Random, chat_per_chapter: int) -> np.ndarray:
    """Plain chapters wrapped in <|begin_of_text|> ... <|end_of_text|>, plus chat samples
    (user: one verse, assistant: the following 1-4 verses, <|eot_id|>) tokenized exactly as at inference
    (rendered prompt with generation prompt, then the answer), shuffled and concatenated."""
    bos, eos, eot = (tok.token_to_id(t) for t in tok_mod.SPECIALS)
    texts, kinds = [], []
    for verses in chapters:
        texts.append("\n".join(verses) + "\n")
        kinds.append(("plain",))
        for _ in range(chat_per_chapter):
            if len(verses) < 2:
                break
            i = rng.randrange(len(verses) - 1)
            k = rng.randint(1, 4)
            msgs = []
            if rng.random() < 0.2:
                msgs.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            msgs.append({"role": "user", "content": rng.choice(USER_PREFIXES) + verses[i]})
            texts.append(tok_mod.render_chat(msgs, add_generation_prompt=True))
            kinds.append(("chat", "\n".join(verses[i + 1:i + 1 + k])))
    enc = tok.encode_batch(texts, add_special_tokens=False)
    answers = [k[1] for k in kinds if k[0] == "chat"]
    enc_ans = iter(tok.encode_batch(answers, add_special_tokens=False))
    docs = []
    for e, k in zip(enc, kinds):
        if k[0] == "plain":
            docs.append([bos] + e.ids + [eos])
        else:
            docs.append(e.ids + next(enc_ans).ids + [eot])
    rng.shuffle(docs)
    return np.fromiter((i for d in docs for i in d), dtype=np.int64)


def valid_windows(ids: list[int], n_ctx: int) -> list[list[int]]:
    wins = [ids[i:i + n_ctx] for i in range(0, len(ids), n_ctx)]
    return [w for w in wins if len(w) >= 2]


@torch.no_grad()
def evaluate(model, windows, max_windows=None, per_window=False):
    """Sum of -log p over every predicted token of the windows (see the module docstring); float64 sums."""
    model.eval()
    ws = windows[:max_windows] if max_windows else windows
    nlls = []
    full = [w for w in ws if len(w) == len(ws[0])]
    rest = [w for w in ws if len(w) != len(ws[0])]
    for group in [full[i:i + 16] for i in range(0, len(full), 16)] + [[w] for w in rest]:
        x = torch.tensor(group, dtype=torch.long)
        logits = model(x[:, :-1]).float()
        loss = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # [B, L-1]
        nlls.extend(float(v) for v in loss.double().sum(1))
    n = sum(len(w) - 1 for w in ws)
    model.train()
    if per_window:
        return math.fsum(nlls), n, nlls
    return math.fsum(nlls), n


@torch.no_grad()
def sample(model, tok, prompt_ids, n_new=60, temperature=0.8, top_k=40, seed=0, stop_ids=()):
    g = torch.Generator().manual_seed(seed)
    model.eval()
    ids = list(prompt_ids)
    n_ctx = model.config.max_position_embeddings
    for _ in range(n_new):
        logits = model(torch.tensor([ids[-n_ctx:]]))[0, -1].float()
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            v, ix = torch.topk(logits / temperature, top_k)
            nxt = int(ix[torch.multinomial(torch.softmax(v, -1), 1, generator=g)])
        ids.append(nxt)
        if nxt in stop_ids:
            break
    model.train()
    return tok.decode(ids[len(prompt_ids):], skip_special_tokens=False)


def build_copy_mix(a, tok, chapters, stream, vids):
    """The copy mix of the run (copymix.CopySequences) and its record for validation_ppl.json."""
    sources, rec_sources = [], []
    for src in a.copy_sources:
        if src == "kjv":
            docs, name, sha = chapters, "kjv", None
        else:
            text = open(src, encoding="utf-8").read()
            docs, name, sha = corpus_mod.text_to_chapters(text), copymix.source_name(src), \
                hashlib.sha256(text.encode()).hexdigest()
        ids = copymix.tokenize_documents(tok, docs)
        sources.append((name, ids))
        rec_sources.append({"name": name, "file": None if src == "kjv" else os.path.basename(src), "sha256": sha,
                            "documents": len(docs), "tokens": int(len(ids))})
    excluded = [vids]
    for path in a.copy_exclude:
        excluded.append(tok.encode(open(path, encoding="utf-8").read(), add_special_tokens=False).ids)
    mix = copymix.CopySequences(sources, stream, a.ctx + 1, copymix.Exclusion(excluded), a.copy_min_passage,
                                a.copy_max_passage)
    print("copy mix: " + ", ".join(f"{r['name']} {r['tokens']:,} tokens" for r in rec_sources)
          + f"; {a.copy_frac:.0%} of rows; excluded: validation text"
          + "".join(f", {os.path.basename(p)}" for p in a.copy_exclude), flush=True)
    return mix, {"frac": a.copy_frac, "sources": rec_sources, "min_passage": mix.min_passage,
                 "max_passage": mix.max_passage, "exclude_run_tokens": copymix.EXCLUDE_N,
                 "excluded": ["validation text"] + [os.path.basename(p) for p in a.copy_exclude]}


def lr_at(progress: float, base: float, warmup_frac: float, min_frac: float) -> float:
    if progress < warmup_frac:
        return base * progress / warmup_frac
    p = min(1.0, (progress - warmup_frac) / max(1e-9, 1 - warmup_frac))
    return base * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="training text (kjv-train.txt from ryzjupyter.train.corpus)")
    ap.add_argument("--valid", required=True, help="held-out text for validation perplexity")
    ap.add_argument("--out", help="export folder (config.json, model.safetensors, tokenizer*, ...)")
    ap.add_argument("--tokenizer", help="reuse this tokenizer.json (e.g. the main model's, for the draft)")
    ap.add_argument("--init", help="continue from a model this trainer exported (a folder: its weights, shape and "
                                   "tokenizer; --hidden/--layers/--heads/--kv-heads/--inter/--vocab/--rope-theta are taken from "
                                   "it, --ctx may extend its context)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--inter", type=int, default=0, help="FFN size (default: 2.5*hidden rounded to 64)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup-frac", type=float, default=0.03)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--chat-per-chapter", type=int, default=2)
    ap.add_argument("--copy-frac", type=float, default=0.0,
                    help="fraction of training rows that are copy sequences (a passage recurring in the row; "
                         "see ryzjupyter/train/copymix.py); 0 = plain windows only")
    ap.add_argument("--copy-sources", nargs="+", default=["kjv"],
                    help="where copy passages come from: 'kjv' (the training chapters) and/or text files in the "
                         "chapters' format (corpus.py --sources writes copy-<name>-train.txt); chosen uniformly")
    ap.add_argument("--copy-exclude", nargs="*", default=[],
                    help="texts no copy sequence may share a run of 16 tokens with, besides --valid (always "
                         "excluded), e.g. corpus.py's copy-valid.txt")
    ap.add_argument("--copy-min-passage", type=int, default=16)
    ap.add_argument("--copy-max-passage", type=int, default=0, help="default: (ctx + 1) // 2")
    ap.add_argument("--steps", type=int, default=0, help="fixed number of steps (overrides --cpu-minutes)")
    ap.add_argument("--cpu-minutes", type=float, default=5.0)
    ap.add_argument("--wall-minutes", type=float, default=0.0,
                    help="also cap the training by wall-clock time (schedule progress = max of the two fractions), "
                         "so that a run on a busy machine still completes its learning-rate schedule in time")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=48, help="windows used for the periodic (partial) eval")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--pid-file", help="write the pid here while training (removed at the end)")
    ap.add_argument("--log", help="append JSON lines of progress here")
    ap.add_argument("--save-torch", help="also save the float (latent) weights here (.pt) for later re-export")
    ap.add_argument("--verify-hf", action="store_true", help="after export, compare with transformers' BitNet")
    return ap


def main(argv=None):
    a = build_parser().parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    if a.pid_file:
        with open(a.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    t_wall0, t_cpu0 = time.time(), time.process_time()

    train_text = open(a.corpus, encoding="utf-8").read()
    valid_text = open(a.valid, encoding="utf-8").read()
    chapters = corpus_mod.text_to_chapters(train_text)
    if a.init and not a.tokenizer:
        a.tokenizer = os.path.join(a.init, "tokenizer.json")
    if a.tokenizer:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(a.tokenizer)
    else:
        tok = tok_mod.train_tokenizer((v for ch in chapters for v in ch), a.vocab)
    vocab = tok.get_vocab_size()
    stream = build_stream(tok, chapters, rng, a.chat_per_chapter)
    vids = tok.encode(valid_text, add_special_tokens=False).ids
    vwin = valid_windows(vids, a.ctx)
    mix, copy_rng, copy_record = None, None, None
    if not 0.0 <= a.copy_frac <= 1.0:
        raise SystemExit(f"--copy-frac must be in [0, 1], got {a.copy_frac}")
    if a.copy_frac > 0:
        mix, copy_record = build_copy_mix(a, tok, chapters, stream, vids)
        copy_rng = random.Random(a.seed + 1)
    print(f"tokenizer vocab {vocab}; train stream {len(stream)} tokens ({len(train_text)} chars of text); "
          f"valid {len(vids)} tokens in {len(vwin)} windows of {a.ctx}", flush=True)

    if a.init:
        model = trainable_from_packed(a.init, max_position_embeddings=a.ctx)
        cfg = model.config
        if cfg.vocab_size != vocab:
            raise SystemExit(f"--init {a.init}: its embedding has {cfg.vocab_size} rows, the tokenizer {vocab} tokens")
        # the record's args say the shape that was trained
        a.hidden, a.layers, a.heads, a.kv_heads, a.inter, a.vocab, a.rope_theta = (
            cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size, cfg.rope_theta)
    else:
        inter = a.inter or int(round(a.hidden * 2.5 / 64)) * 64
        cfg = BitNetConfig(vocab_size=vocab, hidden_size=a.hidden, intermediate_size=inter,
                           num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                           max_position_embeddings=a.ctx, rope_theta=a.rope_theta,
                           bos_token_id=tok.token_to_id(tok_mod.BOS), eos_token_id=tok.token_to_id(tok_mod.EOS))
        model = BitNetLM(cfg)
    print("config", cfg, "params", model.num_params(), flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    budget = a.cpu_minutes * 60.0
    log = open(a.log, "a") if a.log else None
    step, t_train0, w_train0 = 0, time.process_time(), time.time()
    tokens_seen = 0
    loss_ema = None
    history = []
    while True:
        used = time.process_time() - t_train0
        progress = step / a.steps if a.steps else used / budget
        if a.wall_minutes and not a.steps:
            progress = max(progress, (time.time() - w_train0) / (a.wall_minutes * 60.0))
        if progress >= 1.0:
            break
        lr = lr_at(progress, a.lr, a.warmup_frac, a.min_lr_frac)
        for gparam in opt.param_groups:
            gparam["lr"] = lr
        rows, _ = copymix.batch_rows(stream, a.ctx + 1, a.batch, step, rng, mix, a.copy_frac, copy_rng)
        x = torch.from_numpy(rows)
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_seen += a.batch * a.ctx
        lv = loss.item()
        loss_ema = lv if loss_ema is None else 0.95 * loss_ema + 0.05 * lv
        if step % 10 == 0:
            print(f"step {step} loss {lv:.3f} ema {loss_ema:.3f} lr {lr:.2e} "
                  f"cpu {used / 60:.1f}m tok/cpu-s {tokens_seen / max(used, 1e-9):.0f}", flush=True)
        if a.eval_every and step % a.eval_every == 0:
            nll, n = evaluate(model, vwin, a.eval_windows)
            rec = {"step": step, "cpu_min": used / 60, "loss_ema": loss_ema, "val_ppl_partial": math.exp(nll / n),
                   "copy_second_over_first": copymix.second_over_first(model, vids, a.ctx)}
            history.append(rec)
            print("eval", json.dumps(rec), flush=True)
            if log:
                log.write(json.dumps(rec) + "\n")
                log.flush()

    train_cpu = time.process_time() - t_train0
    if copy_record is not None:
        copy_record["rows"] = sum(copymix.is_copy_row(k, a.copy_frac) for k in range(step * a.batch))
        copy_record["rows_total"] = step * a.batch
        copy_record["rejected_draws"] = mix.rejected
    export_mod.round_embeddings_(model)
    nll, n, per_win = evaluate(model, vwin, per_window=True)
    ppl = math.exp(nll / n)
    ppl_256 = None
    if a.ctx > 256:      # the shipped models' windows until 2026-12: compare a longer-context model with them
        nll_256, n_256 = evaluate(model, valid_windows(vids, 256))
        ppl_256 = math.exp(nll_256 / n_256)
    result = {
        "val_ppl_256": ppl_256,
        "copy_mix": copy_record,
        "copy_second_over_first": copymix.second_over_first(model, vids, a.ctx),
        "val_ppl": ppl, "val_nll_sum": nll, "val_predicted_tokens": n, "val_tokens": len(vids),
        "val_file": "validation.txt", "val_file_sha256": hashlib.sha256(valid_text.encode()).hexdigest(),
        "windowing": WINDOWING, "val_window_nll": per_win,
        "val_windows": len(vwin), "n_ctx": a.ctx, "steps": step, "tokens_seen": tokens_seen,
        "train_cpu_minutes": train_cpu / 60, "train_wall_minutes": (time.time() - w_train0) / 60, "wall_minutes": (time.time() - t_wall0) / 60,
        "threads": a.threads, "params": model.num_params(), "config": cfg.__dict__, "args": vars(a),
        "train_stream_tokens": int(len(stream)), "history": history,
    }
    print(f"FINAL val ppl {ppl:.4f} ({n} predicted tokens, {len(vwin)} windows) steps {step} "
          f"cpu {train_cpu / 60:.1f} min" + (f"; with 256-token windows {ppl_256:.4f}" if ppl_256 else "")
          + f"; copy probe: second/first occurrence ppl {result['copy_second_over_first']:.3f}", flush=True)
    eot = tok.token_to_id(tok_mod.EOT)
    samples = []
    bos = tok.token_to_id(tok_mod.BOS)
    for prompt in ["And God said", "The LORD is my shepherd", "In the beginning"]:
        ids = [bos] + tok.encode(prompt, add_special_tokens=False).ids
        samples.append({"prompt": prompt, "kind": "completion",
                        "text": sample(model, tok, ids, 60, stop_ids=(cfg.eos_token_id,))})
    for q in ["Who made the heaven and the earth?", "Tell me about love."]:
        ids = tok.encode(tok_mod.render_chat([{"role": "user", "content": q}]), add_special_tokens=False).ids
        samples.append({"prompt": q, "kind": "chat",
                        "text": sample(model, tok, ids, 60, stop_ids=(eot, cfg.eos_token_id))})
    result["samples"] = samples
    for s_ in samples:
        print("SAMPLE", json.dumps(s_), flush=True)
    if a.out:
        export_mod.export(model, a.out, eot_id=eot)
        tok_mod.save_tokenizer(tok, a.out, a.ctx)
        with open(os.path.join(a.out, "validation.txt"), "w", encoding="utf-8") as f:
            f.write(valid_text)
        with open(os.path.join(a.out, "validation_ppl.json"), "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        if a.verify_hf:
            rel = export_mod.verify_with_transformers(model, a.out)
            print(f"transformers BitNetForCausalLM fp32 vs trainer: max rel diff {rel:.3e}", flush=True)
            result["transformers_max_rel_diff"] = rel
            with open(os.path.join(a.out, "validation_ppl.json"), "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
    if a.save_torch:
        torch.save({"config": cfg.__dict__, "state_dict": model.state_dict()}, a.save_torch)
    if log:
        log.write(json.dumps({k: v for k, v in result.items() if k not in ("history",)}) + "\n")
        log.close()
    if a.pid_file:
        try:
            os.remove(a.pid_file)
        except OSError:
            pass


if __name__ == "__main__":
    main()
