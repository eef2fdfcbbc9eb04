"""GPT-2's byte-level BPE tokenizer in pure Python.

It gives the same ids as Hugging Face's GPT-2 tokenizer (transformers ``GPT2Tokenizer``,
which runs on the Rust ``tokenizers`` library) for every input string:

1. ``<|endoftext|>`` written in the text becomes its id. The text around it is left as it
   is: no spaces are stripped (``"a <|endoftext|> b"`` is ``a``, ``Ġ``, eot, ``Ġb``).
2. Every other stretch of text is cut into words with GPT-2's regular expression.
3. Each word's UTF-8 bytes are spelt with one printable character per byte
   (``bytes_to_unicode``), and adjacent symbols are merged by rank (``bpe``).

Decoding joins the bytes of the tokens and decodes them as UTF-8 with replacement characters
for invalid sequences, as transformers does.
"""

from __future__ import annotations

import codecs
import heapq
import json
import operator
import re

from ._unicode_tables import LETTERS, NUMBERS, SPACES

EOT = "<|endoftext|>"

# GPT-2's pattern, 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# with its classes spelt out as Unicode 16.0 tables (python/gpt2gen/_unicode_tables.py): those
# are the tables of the Rust tokenizers library behind transformers' GPT-2 tokenizer, whatever
# Unicode version Python or a regex module knows. The tests compare every code point with it.
_SPACE, _NOT_SPACE = f"[{SPACES}]", f"[^{SPACES}]"
GPT2_SPLIT_PATTERN = re.compile(
    rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{LETTERS}]+| ?[{NUMBERS}]+| ?[^{SPACES}{LETTERS}{NUMBERS}]+"
    rf"|{_SPACE}+(?!{_NOT_SPACE})|{_SPACE}+"
)

# Words seen by encode() keep their ids here. Ordinary text reuses a few tens of thousands
# of distinct words; the bound only keeps memory in check on endless novel input.
MAX_CACHED_WORDS = 100_000


def bytes_to_unicode() -> dict[int, str]:
    """Map each byte value to the character that stands for it in vocab.json / merges.txt.

    The files are text and a merges line is two tokens separated by a space, so every byte
    needs a visible character that is not whitespace. Printable Latin-1 bytes stand for
    themselves; the other 68 (controls, space, 0x7F-0xA0, the soft hyphen 0xAD) take,
    in byte order, the characters from U+0100 on.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    moved = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + moved)
            moved += 1
    return table


def bpe(word: str, bpe_ranks: dict[tuple[str, str], int]) -> list[str]:
    """Split ``word`` into characters and merge adjacent pairs, lowest rank (then leftmost) first.

    This is the order of the Rust BPE model. A heap of candidate pairs and links between
    live symbols make a merge cost O(log n), so a very long word (a long run of a single
    character, a DNA string) stays O(n log n) instead of the textbook loop's O(n^2).
    """
    symbols = list(word)
    n = len(symbols)
    following = list(range(1, n + 1))  # index of the next live symbol; n past the end
    preceding = list(range(-1, n - 1))  # index of the previous live symbol; -1 before the start

    def candidate(i: int, j: int):
        rank = bpe_ranks.get((symbols[i], symbols[j]))
        return None if rank is None else (rank, i, symbols[i] + symbols[j])

    heap = [c for i in range(n - 1) if (c := candidate(i, i + 1))]
    heapq.heapify(heap)
    while heap:
        rank, i, merged = heapq.heappop(heap)
        j = following[i]
        # An entry is stale when a merge since it was pushed changed either side of the pair.
        if not symbols[i] or j == n or merged != symbols[i] + symbols[j] or (symbols[i], symbols[j]) not in bpe_ranks:
            continue
        symbols[i], symbols[j] = merged, ""
        following[i] = following[j]
        if following[i] < n:
            preceding[following[i]] = i
        for pair in ((preceding[i], i), (i, following[i])):
            if 0 <= pair[0] and pair[1] < n and (c := candidate(*pair)):
                heapq.heappush(heap, c)
    return [s for s in symbols if s]


class Tokenizer:
    """GPT-2's tokenizer over a vocabulary (token -> id) and a list of merges in rank order."""

    def __init__(self, encoder: dict[str, int], bpe_merges: list[tuple[str, str]]):
        if not isinstance(encoder, dict):
            raise TypeError(f"the vocabulary must map token strings to ids, got {type(encoder).__name__}")
        seen: dict[int, str] = {}
        for token, token_id in encoder.items():
            if not isinstance(token, str) or isinstance(token_id, bool) or not isinstance(token_id, int):
                raise ValueError(f"vocabulary entry {token!r}: {token_id!r} must map a string to an integer id")
            if token_id < 0:
                raise ValueError(f"vocabulary entry {token!r} has the negative id {token_id}")
            if token_id in seen:
                raise ValueError(f"tokens {seen[token_id]!r} and {token!r} share the id {token_id}")
            seen[token_id] = token
        self.encoder = dict(encoder)
        # A pair listed twice keeps its last rank, as in the Rust loader.
        self.bpe_ranks = {tuple(pair): rank for rank, pair in enumerate(bpe_merges)}
        self._eot = self.encoder.get(EOT)
        byte_to_char = bytes_to_unicode()
        char_to_byte = {c: b for b, c in byte_to_char.items()}
        # The bytes of every id, for decode. A token that is not spelt in byte characters
        # (only possible for added tokens) stands for its own UTF-8, as in tokenizers.
        self._n_vocab = max(self.encoder.values(), default=-1) + 1
        self._token_bytes: dict[int, bytes] = {}  # not a list: ids may be sparse (or absurd)
        for token, token_id in self.encoder.items():
            if all(c in char_to_byte for c in token):
                self._token_bytes[token_id] = bytes(char_to_byte[c] for c in token)
            else:
                self._token_bytes[token_id] = token.encode("utf-8")
        # Byte -> spelling, as a str.translate table. A byte the vocabulary cannot spell
        # (only in a vocabulary without the full byte alphabet) maps to None, which deletes it:
        # the Rust BPE model without an unknown token drops such characters before merging.
        self._spelling = {b: (c if c in self.encoder else None) for b, c in byte_to_char.items()}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_files(cls, vocab_file, merges_file) -> Tokenizer:
        """Load vocab.json / merges.txt (or OpenAI's encoder.json / vocab.bpe)."""
        try:
            with open(vocab_file, encoding="utf-8") as f:
                encoder = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{vocab_file}: not a JSON vocabulary ({e})") from None
        with open(merges_file, encoding="utf-8") as f:
            lines = [line.rstrip("\r") for line in f.read().split("\n")]
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merges = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue  # blank lines, e.g. the trailing newline
            pair = line.split(" ")
            if len(pair) != 2:
                raise ValueError(f"{merges_file}: line {number} is not two tokens separated by a space: {line!r}")
            merges.append(tuple(pair))
        return cls(encoder, merges)

    @property
    def n_vocab(self) -> int:
        """Number of ids: one more than the largest id in the vocabulary."""
        return self._n_vocab

    @property
    def eot_token(self) -> int | None:
        """Id of <|endoftext|>, or None when the vocabulary has no such token."""
        return self._eot

    eos_token_id = eot_token

    def encode(self, text: str) -> list[int]:
        if self._eot is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for k, piece in enumerate(text.split(EOT)):
            if k:
                ids.append(self._eot)
            ids += self._encode_ordinary(piece)
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for word in GPT2_SPLIT_PATTERN.findall(text):
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = self._encode_word(word)
                if len(cache) >= MAX_CACHED_WORDS:
                    cache.clear()  # cheaper than LRU bookkeeping; a working set refills it fast
                cache[word] = word_ids
            ids += word_ids
        return ids

    def _encode_word(self, word: str) -> list[int]:
        # Latin-1 turns each byte into the character with that ordinal, which translate()
        # then maps to the byte's spelling in one pass.
        spelt = word.encode("utf-8").decode("latin-1").translate(self._spelling)
        return [self.encoder[token] for token in bpe(spelt, self.bpe_ranks)]

    def token_bytes(self, token_id) -> bytes:
        """The bytes that ``token_id`` stands for; ValueError for an id outside the vocabulary."""
        i = operator.index(token_id)
        data = self._token_bytes.get(i)
        if data is None:
            raise ValueError(f"token id {token_id!r} is not in the vocabulary (0 <= id < {self._n_vocab})")
        return data

    def decode(self, ids) -> str:
        return b"".join([self.token_bytes(i) for i in ids]).decode("utf-8", errors="replace")

    def decoder(self) -> IncrementalDecoder:
        """A streaming decoder: push ids one at a time, get text as characters complete."""
        return IncrementalDecoder(self)


class IncrementalDecoder:
    """Decodes a stream of ids; the pushes plus flush() join to exactly ``decode(all_ids)``.

    A token can end inside a UTF-8 character (emoji and CJK are often split), so bytes
    are held back until the character completes. Python's incremental UTF-8 decoder with
    errors="replace" emits the same replacement characters as decoding the whole at once.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id) -> str:
        """Add one id; return the text completed by it (possibly "")."""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """End the stream: return what is held back, an incomplete tail as U+FFFD."""
        return self._utf8.decode(b"", final=True)
