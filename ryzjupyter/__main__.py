"""Command line: `python -m ryzjupyter generate --model PATH "prompt"`, `python -m ryzjupyter chat` and
`python -m ryzjupyter serve`.

    python -m ryzjupyter generate --model microsoft/bitnet-b1.58-2B-4T -n 64 "The KV cache is"
    python -m ryzjupyter chat --model PATH --system "Be brief."
    python -m ryzjupyter generate --draft lookup "..."             # speculative decoding, docs/speculative.md
    python -m ryzjupyter serve --model demo --port 8000          # OpenAI-compatible, docs/serving.md

Without --model the bundled demo model is used. Text streams to stdout; stats go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time


def _sampling_args(p):
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--max-new-tokens", type=int, default=128, help="tokens to generate (default 128)")
    g.add_argument("-t", "--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=40, help="0 = off (default 40)")
    g.add_argument("--top-p", type=float, default=0.95, help="1 = off (default 0.95)")
    g.add_argument("--min-p", type=float, default=0.05, help="0 = off (default 0.05)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off (default 1.0)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: fresh, printed in stats)")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g = p.add_argument_group("speculative decoding (lossless: same output, fewer target passes)")
    g.add_argument("--draft", default=None, metavar="DRAFT",
                   help="lookup, adjacency, auto, or a draft model with the same tokenizer (a bundled name "
                        "such as demo-draft, or a folder); default: off")
    g.add_argument("--num-draft", type=int, default=None, metavar="K",
                   help="draft tokens per verify pass, 0..15 (default: adaptive)")


def _model_args(p):
    p.add_argument("--model", "-m", default=None, help="model folder or hub id (default: the bundled model)")
    p.add_argument("--max-context", type=int, default=None, help="limit the context (smaller KV cache)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading .bin pickle weights")


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m ryzjupyter", description="ryzjupyter: LLMs on the CPU.")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="continue a prompt")
    _model_args(g)
    _sampling_args(g)
    g.add_argument("--stats", action="store_true", help="print token and timing stats to stderr")
    g.add_argument("prompt", help="the prompt text ('-' reads stdin)")
    c = sub.add_parser("chat", help="interactive chat with the model's chat template")
    _model_args(c)
    _sampling_args(c)
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--stats", action="store_true", help="print stats after each reply")
    s = sub.add_parser("serve", help="an OpenAI-compatible server (continuous batching) for the models",
                       description="Serve models over OpenAI's API (/v1/chat/completions, /v1/completions, "
                                   "/v1/models, /v1/embeddings) until Ctrl-C. Models are named as the model "
                                   "manager names them (demo for the bundled model).")
    s.add_argument("--model", "-m", action="append", default=None, metavar="MODEL",
                   help="a model to load and serve (name, folder or hub id; repeatable; default: demo)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--api-key", default=None, metavar="KEY",
                   help="the key clients must send (default: a new random key, printed at start)")
    g.add_argument("--no-auth", action="store_true", help="no key (only allowed with --host 127.0.0.1)")
    s.add_argument("--max-context", type=int, default=None, help="limit each model's context")
    s.add_argument("--max-batch", type=int, default=16, help="streams decoded together per model (default 16)")
    s.add_argument("--max-tokens-limit", type=int, default=4096,
                   help="the largest max_tokens a request may ask for (default 4096)")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    return ap


def _serve(a):
    from ryzjupyter import serve
    from ryzjupyter.manager import MANAGER
    opts = {"max_context": a.max_context} if a.max_context else {}
    names = []
    for spec in a.model or [None]:
        name, _ = MANAGER.load(None if spec == "demo" else spec, **opts)
        names.append(name)
    h = serve.start(MANAGER, host=a.host, port=a.port, api_key=a.api_key, auth=not a.no_auth,
                    max_batch=a.max_batch, max_tokens_limit=a.max_tokens_limit, max_body_bytes=a.max_body_bytes)
    print(f"serving {', '.join(names)} at {h.url}", flush=True)
    if h.api_key and not a.api_key:
        print(f"API key: {h.api_key}", flush=True)
    elif h.api_key:
        print("API key: the one given with --api-key", flush=True)
    else:
        print("no API key (--no-auth): anyone on this machine can use the server", flush=True)
    print("Ctrl-C stops the server", file=sys.stderr, flush=True)
    try:
        while h.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    finally:
        serve.stop()
    return 0


def _options(a):
    return dict(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                repetition_penalty=a.repetition_penalty, seed=a.seed, stop=a.stop,
                draft=a.draft, num_draft=a.num_draft)


def _print_stats(r):
    s = r.stats
    print(f"[{s.n_prompt} prompt tokens ({s.n_cached} cached), {s.n_generated} generated, "
          f"ttft {s.ttft_s * 1000:.0f} ms, prefill {s.prefill_tok_s:.1f} tok/s, decode {s.decode_tok_s:.1f} tok/s, "
          f"seed {r.settings['seed']}, finish: {r.finish_reason}]", file=sys.stderr)
    if s.drafter:
        print(f"[draft {r.settings.get('draft')}: {s.accepted}/{s.drafted} draft tokens accepted "
              f"({s.acceptance:.0%}), {s.tokens_per_pass:.2f} tokens per target pass; draft {s.draft_s * 1000:.0f} ms, "
              f"verify {s.verify_s * 1000:.0f} ms, sampling {s.sampling_s * 1000:.0f} ms]", file=sys.stderr)


def main(argv=None):
    a = build_parser().parse_args(argv)
    from ryzjupyter.engine.checkpoint import CheckpointError
    from ryzjupyter.families.loading import load
    if a.command == "serve":
        from ryzjupyter.serve import ServeConfigError
        try:
            return _serve(a)
        except (CheckpointError, ServeConfigError, ValueError, ImportError, MemoryError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        model = load(a.model, max_context=a.max_context, allow_pickle=a.allow_pickle)
        if a.command == "generate":
            prompt = sys.stdin.read() if a.prompt == "-" else a.prompt
            s = model.stream(prompt, a.max_new_tokens, **_options(a))
            for piece in s:
                print(piece, end="", flush=True)
            print(flush=True)
            if a.stats:
                _print_stats(s.result)
            return 0
        print("chat: an empty line or Ctrl-D ends; /reset clears the history", file=sys.stderr)
        while True:
            try:
                line = input("> ")
            except EOFError:
                print()
                return 0
            if not line.strip():
                return 0
            if line.strip() == "/reset":
                model.reset()
                continue
            s = model.chat(line, a.max_new_tokens, system=a.system, stream=True, **_options(a))
            for piece in s:
                print(piece, end="", flush=True)
            print(flush=True)
            if a.stats:
                _print_stats(s.result)
    except (CheckpointError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
