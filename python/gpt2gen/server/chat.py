"""``POST /v1/chat/completions``: chat through a built-in template (``--chat-template``).

GPT-2 has no chat format of its own, so without a template every chat request is a 400 that
says so. With one, the messages become a prompt (chat_templates.py), the template's stop strings
join the request's, and the reply is ``model.generate(that prompt, ...)`` exactly.
"""

from __future__ import annotations

import uuid

from .errors import APIError, invalid
from .generation import Group, check_prompt, finish_reason, run_to_end, sampling
from .logprobs import chat as chat_logprobs
from .protocol import ChatCompletionRequest, envelope, now, parse, usage
from .sse import DONE, EventStream, event

# Engine argument -> chat field, for the engine's validation messages.
_FIELDS = {"max_new_tokens": "max_completion_tokens", "logprobs": "top_logprobs", "prompt": "messages"}


def template_of(state):
    if state.template is None:
        raise invalid("messages", "This server has no chat template: GPT-2 was not trained to chat. "
                      "Start it with --chat-template plain (or chatml), or use /v1/completions.",
                      "chat_template_missing")
    return state.template


async def create_chat_completion(state, http_request):
    body = parse(ChatCompletionRequest, await http_request.body())
    state.check_model(body.model)
    template = template_of(state)
    prompt = template.render([(m.role, m.content) for m in body.messages])
    ids = await state.encode(prompt, "messages")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens is None:  # OpenAI's default: as much as the context leaves
        max_tokens = max(state.model.n_ctx - len(ids), 0)
    field = "max_completion_tokens" if body.max_completion_tokens is not None or body.max_tokens is None else "max_tokens"
    check_prompt(state, ids, max_tokens, field="messages", max_tokens_field=field)
    options = sampling(body, state.n_vocab, extra_stop=template.stop)
    options["logprobs"] = (body.top_logprobs or 0) if body.logprobs else None
    group = Group(state, [ids], body.n or 1, max_tokens, options, body.seed,
                  fields={**_FIELDS, "max_new_tokens": field})
    group.submit()
    reply = _Reply(state, body, group)
    if body.stream:
        return EventStream(reply.stream(), group.cancel)
    return reply.whole(await run_to_end(group, http_request.receive))


class _Reply:
    def __init__(self, state, body, group):
        self.state, self.body, self.group = state, body, group
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", now()

    def _logprobs(self, entries):
        return {"content": chat_logprobs(self.state.token_text, entries)} if self.body.logprobs else None

    def whole(self, completions: dict) -> dict:
        choices = [{"index": c.index,
                    "message": {"role": "assistant", "content": completions[c.index].text},
                    "logprobs": self._logprobs(completions[c.index].logprobs),
                    "finish_reason": finish_reason(completions[c.index])}
                   for c in self.group.choices]
        generated = sum(len(c.token_ids) for c in completions.values())
        return envelope("chat.completion", self.id, self.created, self.state.config.served_model_name,
                        choices, usage=usage(self.group.prompt_tokens, generated))

    def _chunk(self, choices: list, **extra) -> bytes:
        if self.body.include_usage:
            extra.setdefault("usage", None)
        return event(envelope("chat.completion.chunk", self.id, self.created,
                              self.state.config.served_model_name, choices, **extra))

    def _delta(self, choice, delta: dict, logprobs=None, reason=None) -> bytes:
        return self._chunk([{"index": choice.index, "delta": delta, "logprobs": logprobs,
                             "finish_reason": reason}])

    async def stream(self):
        generated = 0
        try:
            for choice in self.group.choices:  # OpenAI opens each choice with the role
                yield self._delta(choice, {"role": "assistant", "content": ""})
            async for kind, choice, item in self.group.events():
                if kind == "delta":
                    logprobs = self._logprobs(item.logprobs) if item.token_ids else None
                    if item.text or logprobs:
                        yield self._delta(choice, {"content": item.text}, logprobs)
                else:
                    generated += len(item.token_ids)
                    yield self._delta(choice, {}, None, finish_reason(item))
            if self.body.include_usage:
                yield self._chunk([], usage=usage(self.group.prompt_tokens, generated))
        except APIError as error:
            yield event(error.body())
        yield DONE
