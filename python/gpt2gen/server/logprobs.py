"""Log-probabilities in OpenAI's two shapes: the legacy completions object and chat's list.

A token's string is its text when its bytes are valid UTF-8 on their own; a token holding part
of a character (GPT-2 splits emoji and CJK across tokens) is spelt ``bytes:\\xe2\\x80`` as OpenAI
does, so no two tokens share a string and none carries a replacement character.
"""

from __future__ import annotations

import codecs

from .protocol import finite


class TokenText:
    """Bytes and display strings of token ids, cached (at most one entry per vocabulary id)."""

    def __init__(self, model):
        encoder = model.encoder
        if hasattr(encoder, "token_bytes"):
            self._token_bytes = encoder.token_bytes
        else:  # a word-level encoder: every token is whole text
            self._token_bytes = lambda token: model.decode([token]).encode("utf-8")
        self._strings: dict[int, str] = {}

    def bytes(self, token: int) -> bytes:
        return self._token_bytes(token)

    def string(self, token: int) -> str:
        text = self._strings.get(token)
        if text is None:
            data = self._token_bytes(token)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in data)
            self._strings[token] = text
        return text


class TextOffsets:
    """``text_offset`` of each token: where its text begins in the returned text.

    Characters are counted as the decoded text grows, so a token that ends inside a character
    starts where that character will; the offsets of a stream's pieces join to the offsets of
    the whole.
    """

    def __init__(self, token_text: TokenText, start: int = 0):
        self._token_text = token_text
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.position = start

    def take(self, tokens) -> list[int]:
        offsets = []
        for token in tokens:
            offsets.append(self.position)
            self.position += len(self._utf8.decode(self._token_text.bytes(token)))
        return offsets


def legacy(token_text: TokenText, offsets: TextOffsets, tokens, entries) -> dict:
    """The completions ``logprobs`` object for ``tokens`` (an entry of None: the first prompt token).

    ``top_logprobs`` holds the k alternatives and the chosen token, as OpenAI's "up to
    logprobs + 1" entries.
    """
    token_logprobs, top_logprobs = [], []
    for token, entry in zip(tokens, entries):
        if entry is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(finite(entry.logprob))
        top = {token_text.string(alt): finite(lp) for alt, _, lp in entry.top}
        top.setdefault(token_text.string(token), finite(entry.logprob))
        top_logprobs.append(top)
    return {"tokens": [token_text.string(t) for t in tokens], "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs, "text_offset": offsets.take(tokens)}


def chat(token_text: TokenText, entries) -> list[dict]:
    """Chat's ``logprobs.content`` list."""

    def one(token, logprob) -> dict:
        return {"token": token_text.string(token), "logprob": finite(logprob),
                "bytes": list(token_text.bytes(token))}

    return [{**one(e.token, e.logprob), "top_logprobs": [one(alt, lp) for alt, _, lp in e.top]}
            for e in entries]
