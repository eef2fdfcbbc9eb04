"""``POST /tokenize`` and ``POST /detokenize`` in vLLM's shapes."""

from __future__ import annotations

from .chat import template_of
from .errors import invalid
from .protocol import DetokenizeRequest, TokenizeRequest, parse


async def tokenize(state, http_request) -> dict:
    body = parse(TokenizeRequest, await http_request.body())
    state.check_model(body.model)
    if body.messages is not None:
        text = template_of(state).render([(m.role, m.content) for m in body.messages],
                                         add_generation_prompt=body.add_generation_prompt is not False)
        ids = await state.encode(text, "messages")
    else:
        ids = await state.encode(body.prompt, "prompt")
    strings = [state.token_text.string(t) for t in ids] if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": state.model.n_ctx, "tokens": ids, "token_strs": strings}


async def detokenize(state, http_request) -> dict:
    body = parse(DetokenizeRequest, await http_request.body())
    state.check_model(body.model)
    for token in body.tokens:
        if not 0 <= token < state.n_vocab:
            raise invalid("tokens", f"token id {token} is outside the vocabulary (0 <= id < {state.n_vocab})")
    return {"prompt": state.model.decode(body.tokens)}
