"""``POST /v1/completions``: OpenAI's legacy text completions.

``echo`` puts the prompt before the completion (with ``logprobs``, the prompt's tokens are scored
too, the first with ``null`` as it has no context); ``max_tokens: 0`` with ``echo`` and
``logprobs`` scores a text without generating, as evaluation harnesses do.
"""

from __future__ import annotations

import uuid

from .errors import APIError
from .generation import Group, check_prompt, finish_reason, run_to_end, sampling
from .logprobs import TextOffsets, legacy
from .protocol import CompletionRequest, envelope, now, parse, usage
from .sse import DONE, EventStream, event

DEFAULT_MAX_TOKENS = 16  # OpenAI's


async def create_completion(state, http_request):
    body = parse(CompletionRequest, await http_request.body())
    state.check_model(body.model)
    n = body.n or 1
    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    prompts = [await state.encode(p, "prompt") if isinstance(p, str) else p for p in body.prompt]
    for ids in prompts:
        check_prompt(state, ids, max_tokens)
    echo, k = bool(body.echo), body.logprobs
    options = sampling(body, state.n_vocab)
    options.update(logprobs=k, prompt_logprobs=k if echo else None)
    group = Group(state, prompts, n, max_tokens, options, body.seed)
    group.submit()
    echo_texts = [p if isinstance(p, str) else state.model.decode(p) for p in body.prompt] if echo else None
    reply = _Reply(state, body, group, echo_texts)
    if body.stream:
        return EventStream(reply.stream(), group.cancel)
    return reply.whole(await run_to_end(group, http_request.receive))


class _Reply:
    def __init__(self, state, body, group, echo_texts):
        self.state, self.body, self.group, self.echo_texts = state, body, group, echo_texts
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", now()
        self.want_logprobs = body.logprobs is not None

    def _echo(self, choice):
        return self.echo_texts[choice.index // self.group.n] if self.echo_texts else ""

    def _prompt_logprobs(self, choice, entries) -> dict:
        return legacy(self.state.token_text, TextOffsets(self.state.token_text), choice.prompt_ids, entries)

    def _offsets(self, choice) -> TextOffsets:
        # the prompt and the completion are decoded separately, so their offsets are too
        return TextOffsets(self.state.token_text, len(self._echo(choice)))

    def whole(self, completions: dict) -> dict:
        choices = []
        for choice in self.group.choices:
            completion = completions[choice.index]
            logprobs = None
            if self.want_logprobs:
                logprobs = legacy(self.state.token_text, self._offsets(choice), completion.token_ids,
                                  completion.logprobs)
                if self.echo_texts is not None:
                    logprobs = _joined(self._prompt_logprobs(choice, completion.prompt_logprobs), logprobs)
            choices.append({"text": self._echo(choice) + completion.text, "index": choice.index,
                            "logprobs": logprobs, "finish_reason": finish_reason(completion)})
        generated = sum(len(c.token_ids) for c in completions.values())
        return envelope("text_completion", self.id, self.created, self.state.config.served_model_name,
                        choices, usage=usage(self.group.prompt_tokens, generated))

    def _chunk(self, choices: list, **extra) -> bytes:
        if self.body.include_usage:
            extra.setdefault("usage", None)  # OpenAI: every chunk has it, null until the last
        return event(envelope("text_completion", self.id, self.created,
                              self.state.config.served_model_name, choices, **extra))

    def _piece(self, choice, text, logprobs, reason=None) -> bytes:
        return self._chunk([{"text": text, "index": choice.index, "logprobs": logprobs, "finish_reason": reason}])

    async def stream(self):
        offsets = {c.index: self._offsets(c) for c in self.group.choices}
        # The prompt's log-probabilities come with the completion, so with echo and logprobs a
        # choice's chunks wait for its end (a scoring request, max_tokens 0, has none anyway).
        held = {c.index: [] for c in self.group.choices} if self.echo_texts is not None and self.want_logprobs else None
        generated = 0
        try:
            if self.echo_texts is not None and held is None:
                for choice in self.group.choices:
                    yield self._piece(choice, self._echo(choice), None)
            async for kind, choice, item in self.group.events():
                if kind == "delta":
                    logprobs = None
                    if self.want_logprobs:
                        logprobs = legacy(self.state.token_text, offsets[choice.index], item.token_ids,
                                          item.logprobs)
                    if item.text or (logprobs and item.token_ids):
                        chunk = self._piece(choice, item.text, logprobs)
                        if held is None:
                            yield chunk
                        else:
                            held[choice.index].append(chunk)
                    continue
                generated += len(item.token_ids)
                reason = finish_reason(item)
                if held is not None:
                    yield self._piece(choice, self._echo(choice), self._prompt_logprobs(choice, item.prompt_logprobs))
                    for chunk in held.pop(choice.index):
                        yield chunk
                yield self._piece(choice, "", None, reason)
            if self.body.include_usage:
                yield self._chunk([], usage=usage(self.group.prompt_tokens, generated))
        except APIError as error:  # after the headers, an error can only be an event
            yield event(error.body())
        yield DONE


def _joined(first: dict, second: dict) -> dict:
    return {key: first[key] + second[key] for key in first}
