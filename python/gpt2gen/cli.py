"""The ``gpt2gen`` command: generate (or score) text from the exercise model or a real GPT-2.

``main`` dispatches on a first-word subcommand (``SUBCOMMANDS``); without one, the arguments are
a generation (``gpt2gen [options] [prompt]``). Every command reports its errors through
``report_errors``: one line on stderr and exit status 1, 130 on Ctrl-C, and a quiet exit when
the reader of its output goes away (``gpt2gen ... | head``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from .packing import FORMATS

EPILOG = """\
examples:
  gpt2gen "hello" -n 5                                  the exercise's dummy model
  gpt2gen --model gpt2 "Alan Turing theorized that" -n 40
  gpt2gen --model ./my-gpt2 "Once upon a time" -n 100 --temperature 0.8 --top-p 0.95 --seed 1
  gpt2gen --model gpt2 --score "The quick brown fox"     per-token log-probabilities
  echo "Once upon a time" | gpt2gen --model gpt2        the prompt from standard input
  gpt2gen serve --model gpt2                            an OpenAI-compatible HTTP server (serve --help)

--model takes a Hugging Face model name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, or picoGPT's
124M, 355M, 774M, 1558M; downloaded once) or a local directory holding config.json,
model.safetensors, vocab.json and merges.txt.

busy machine: the engine uses every physical core by default. If another program keeps a core
busy, pass --threads 1 (or set OMP_NUM_THREADS=1): with a core taken, two threads can be several
times slower than one. The results are the same at any thread count.
"""

def _batch(argv: list) -> int:
    from .batch_cli import main as batch_main  # lazily: a generation never imports it

    return batch_main(argv)


# First-word subcommands: name -> main(argv) -> exit status. Without one, the command line is a
# generation; a prompt that equals a subcommand's name goes after "--".
SUBCOMMANDS: dict[str, Callable[[list], int]] = {"batch": _batch}


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="gpt2gen",
        description="Generate text with GPT-2 (C++ engine). Tokens are printed as they are "
        "produced. On a busy machine, --threads 1 is often much faster (see below).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "prompt",
        nargs="?",
        help="the prompt (read from standard input if omitted, without the one trailing newline "
        "a shell adds)",
    )
    p.add_argument("-n", "--max-new-tokens", type=int, default=40, metavar="N",
                   help="tokens to generate (default: 40)")
    p.add_argument("-m", "--model",
                   help="model name or directory (default: the exercise's dummy model)")
    p.add_argument("--models-dir",
                   help="where downloaded models are kept (default: the Hugging Face cache)")
    p.add_argument("--dtype", choices=["float32", *FORMATS], default="float32",
                   help="weights as stored (float32, default) or packed once to bf16 / int8 / int4")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow loading a pickled pytorch_model.bin (can run code: trusted files only)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads for the engine (default: the physical cores); use --threads 1 "
                   "when another busy program shares the cores")

    s = p.add_argument_group("sampling (default: greedy)")
    s.add_argument("-t", "--temperature", type=float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    s.add_argument("--min-p", type=float, default=0.0,
                   help="drop tokens below min-p × the best (0 = off)")
    s.add_argument("--repetition-penalty", type=float, default=1.0, help="transformers' (1 = off)")
    s.add_argument("--presence-penalty", type=float, default=0.0, help="OpenAI's, in [-2, 2]")
    s.add_argument("--frequency-penalty", type=float, default=0.0, help="OpenAI's, in [-2, 2]")
    s.add_argument("--seed", type=int, help="makes sampling reproducible")

    g = p.add_argument_group("stopping and output")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when TEXT appears (not printed); repeatable")
    g.add_argument("--ignore-eos", action="store_true", help="generate through <|endoftext|>")
    g.add_argument("--context-overflow", choices=["error", "slide"], default="error",
                   help="past the context: fail (default) or slide the window, recomputing")
    g.add_argument("--echo", action="store_true", help="print the prompt before the continuation")
    g.add_argument("--logprobs", type=int, metavar="N",
                   help="after the text, print each token's log-probability and N alternatives")
    g.add_argument("--score", action="store_true",
                   help="instead of generating, print the prompt's per-token log-probabilities")
    return p.parse_args(argv)


# --- the prompt ------------------------------------------------------------------------------


def read_prompt(args) -> str:
    """The prompt argument, or standard input (as UTF-8) without the one newline a shell adds."""
    if args.prompt is not None:
        return _argument_text(args.prompt)
    raw = sys.stdin.buffer.read()
    raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
    return _utf8(raw, "standard input")


def _argument_text(text: str) -> str:
    """Python decodes arguments with surrogateescape: lone surrogates stand for invalid bytes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = os.fsencode(text)  # the bytes as they were given, where the platform keeps them
    except UnicodeError:
        raise ValueError("the prompt is not valid UTF-8") from None
    return _utf8(raw, "the prompt")


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what} is not valid UTF-8 ({e.reason}: byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None


# --- generating and scoring ------------------------------------------------------------------


def load_model(args):
    from .model import GPT2

    if args.model is None:
        if args.dtype != "float32":
            raise ValueError("--dtype needs --model: the exercise's model is float64")
        return GPT2.exercise()
    return GPT2.from_pretrained(args.model, args.models_dir, allow_pickle=args.allow_pickle,
                                dtype=args.dtype)


def run(args, out) -> str:
    import gpt2gen

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        gpt2gen.set_num_threads(args.threads)
    if args.max_new_tokens < 0:
        raise ValueError(f"-n must be >= 0, got {args.max_new_tokens}")
    prompt = read_prompt(args)
    model = load_model(args)
    ids = model.encode(prompt)

    if args.score:
        score_text(model, prompt, ids, out)
        return "score"

    if not ids:
        raise ValueError("the prompt is empty: generation continues a text of at least one token")
    needed = len(ids) + args.max_new_tokens
    if args.context_overflow == "error" and needed > model.n_ctx:
        raise ValueError(
            f"the prompt has {len(ids)} tokens and -n asks for {args.max_new_tokens} more: "
            f"{needed} positions exceed the model's context of {model.n_ctx}; pass a smaller -n, "
            "or --context-overflow slide to keep generating past the context"
        )
    if args.echo:
        out.write(prompt)
    completion = model.generate(
        prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
        seed=args.seed, ignore_eos=args.ignore_eos, stop_strings=args.stop,
        logprobs=args.logprobs, context_overflow=args.context_overflow,
        on_text=lambda piece: (out.write(piece), out.flush()))
    out.write("\n")
    if completion.logprobs is not None:
        for lp in completion.logprobs:
            alternatives = ", ".join(f"{text!r} {alp:.3f}" for _, text, alp in lp.top)
            out.write(f"{lp.logprob:9.4f}  {lp.text!r}  [{alternatives}]\n")
    return completion.finish_reason


def score_text(model, prompt: str, ids: list, out) -> None:
    if len(ids) < 2:
        what = "the text is empty" if not ids else f"{prompt!r} is a single token"
        raise ValueError(
            f"--score needs a text of at least two tokens ({what}): each token is scored given "
            "the tokens before it, and the first has none"
        )
    score = model.score(ids)
    for token, logprob in zip(score.token_ids, score.logprobs):
        out.write(f"{logprob:10.4f}  {model.decode([token])!r}\n")
    out.write(f"total {score.total:.4f}, perplexity {score.perplexity:.4f}\n")


# --- errors ----------------------------------------------------------------------------------


def error_message(error: BaseException) -> str:
    """One line for the terminal, in the command line's words where the library's differ."""
    from .checkpoint import CheckpointDownloadError, PickleNotAllowedError

    if isinstance(error, CheckpointDownloadError) and error.model_name is not None:
        return _download_advice(error)
    if isinstance(error, PickleNotAllowedError) and error.path is not None:
        return (
            f"{error.path.parent} holds only a pickled PyTorch checkpoint ({error.path.name}), "
            "which is not loaded by default because unpickling can run arbitrary code: convert it "
            "to model.safetensors once, or pass --allow-pickle if you trust the file (needs torch)"
        )
    return " ".join(str(error).split())  # one line, however the message was wrapped


def _download_advice(error) -> str:
    reason = " ".join(error.reason.split())
    if len(reason) > 80:  # the hub's messages run long; the type and a start are enough here
        reason = reason[:77].rsplit(" ", 1)[0] + "..."
    advice = (
        f"could not download '{error.model_name}' ({reason}). To run offline, put "
        f"{', '.join(error.files)} from https://huggingface.co/{error.repo_id} in one folder and "
        "pass --model FOLDER"
    )
    if error.target is not None:
        advice += f" (or put them in {error.target}, which --models-dir uses)"
    return advice


def report_errors(command: Callable[[], object]) -> int:
    """Runs ``command``; returns the exit status, printing a failure as one line on stderr."""
    from .checkpoint import CheckpointError

    try:
        command()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader is gone (`| head`): nothing more to say. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except (CheckpointError, ValueError, TypeError, OSError) as error:
        print(f"gpt2gen: error: {error_message(error)}", file=sys.stderr)
        return 1
    return 0


def serve(argv: list) -> int:
    """``gpt2gen serve ...``: the HTTP server's own command line (gpt2gen.server.cli)."""
    try:
        from .server.cli import main as serve_main
    except ImportError as error:  # the serve extra is not installed; the message says so
        print(f"gpt2gen: error: {error}", file=sys.stderr)
        return 1
    return serve_main(argv)


SUBCOMMANDS["serve"] = serve


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    args = parse_args(argv)
    return report_errors(lambda: run(args, sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
