"""Driving the engine's scheduler directly in tests: submit, then collect a request to its end."""

from gpt2gen import _core
from gpt2gen.options import generation_options


def collect(request):
    """(tokens, logprobs or None, finish reason) of a _core.Request, once it is over."""
    tokens, logprobs, finish = [], None, None
    while finish is None:
        request.wait(0.05)
        new, scored, finish = request.take()
        tokens += new
        if scored is not None:
            logprobs = (logprobs or []) + scored
    return tokens, logprobs, finish


def run(model, prompts, max_new_tokens, seeds=None, **options):
    """Every prompt's (tokens, logprobs, finish) from one scheduler running them together."""
    scheduler = _core.Scheduler(model, max_batch=max(len(prompts), 1))
    try:
        requests = scheduler.submit(prompts, [generation_options(max_new_tokens, **options)],
                                    seeds=seeds or [0] * len(prompts))
        return [collect(r) for r in requests]
    finally:
        scheduler.shutdown()
