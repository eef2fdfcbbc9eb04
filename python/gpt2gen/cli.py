"""The ``gpt2gen`` command: generate (or score) text from the exercise model or a real GPT-2."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  gpt2gen "hello" -n 5                                  the exercise's dummy model
  gpt2gen --model gpt2 "Alan Turing theorized that" -n 40
  gpt2gen --model ./my-gpt2 "Once upon a time" -n 100 --temperature 0.8 --top-p 0.95 --seed 1
  gpt2gen --model gpt2 --score "The quick brown fox"     per-token log-probabilities

--model takes a Hugging Face model name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, or picoGPT's
124M, 355M, 774M, 1558M; downloaded once) or a local directory holding config.json,
model.safetensors, vocab.json and merges.txt.
"""


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="gpt2gen", description="Generate text with GPT-2 (C++ engine). Tokens are printed "
        "as they are produced.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", help="the prompt (read from standard input if omitted)")
    p.add_argument("-n", "--max-new-tokens", type=int, default=40, metavar="N",
                   help="tokens to generate (default: 40)")
    p.add_argument("-m", "--model", help="model name or directory (default: the exercise's dummy model)")
    p.add_argument("--models-dir", help="where downloaded models are kept (default: the Hugging Face cache)")
    p.add_argument("--dtype", choices=["float32", "bf16", "int8"], default="float32",
                   help="weights as stored (float32, default) or packed once to bf16 / int8")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow loading a pickled pytorch_model.bin (can run code: trusted files only)")

    s = p.add_argument_group("sampling (default: greedy)")
    s.add_argument("-t", "--temperature", type=float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    s.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p × the best (0 = off)")
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
    g.add_argument("--threads", type=int, help="threads for the engine (default: the cores)")
    return p.parse_args(argv)


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
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    model = load_model(args)

    if args.score:
        score = model.score(prompt)
        for token, logprob in zip(score.token_ids, score.logprobs):
            out.write(f"{logprob:10.4f}  {model.decode([token])!r}\n")
        out.write(f"total {score.total:.4f}, perplexity {score.perplexity:.4f}\n")
        return "score"

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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["batch"]:  # the subcommand has its own parser
        from .batch_cli import main as batch_main

        return batch_main(argv[1:])
    args = parse_args(argv)
    from .checkpoint import CheckpointError

    try:
        run(args, sys.stdout)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (CheckpointError, ValueError, TypeError, OSError) as error:
        message = " ".join(str(error).split())  # one line, however the message was wrapped
        print(f"gpt2gen: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
