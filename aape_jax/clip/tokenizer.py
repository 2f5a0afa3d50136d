"""The original OpenAI CLIP tokenizer (byte-level BPE), reimplemented in pure Python.

Why not `transformers.CLIPTokenizer`: a frozen CLIP only gives the text embeddings it was
trained for when it sees exactly the token ids of OpenAI's own `clip.tokenize`. Those ids
depend on OpenAI's text cleaning (`ftfy.fix_text`, `html.unescape` twice, whitespace
collapse, lower-casing), which transformers' fast (tokenizers-backed) CLIP tokenizer
replaces with a different normaliser (NFC + whitespace + lowercase, no ftfy, no HTML
unescaping), so texts with entities, mojibake, etc. get different ids. transformers v5
also silently builds a 2-token vocabulary when its files are not found, which must never
pass unnoticed. This module therefore follows openai/CLIP's `simple_tokenizer.py` and
`clip.tokenize(..., truncate=True)` step for step, reading the vocabulary and merges of a
Hugging Face format checkpoint and checking them. Both layouts are read: `vocab.json` +
`merges.txt` (older transformers, OpenAI-derived repositories) and `tokenizer.json` (the
`tokenizers` library file, all that today's `CLIPTokenizer.save_pretrained` writes); only
the vocabulary and merges are taken from the latter, never its text pipeline, so the ids
are OpenAI's whichever layout a checkpoint has.

`write_byte_level_vocab` learns a small vocabulary and writes it in both layouts, so that
tests and an offline demo model can run without any download; `write_tokenizer_files` and
`write_tokenizer_json` write a given vocabulary (e.g. the real one) the same way.
"""

from __future__ import annotations

import collections
import heapq
import html
import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from functools import lru_cache

import ftfy
import numpy as np
import regex

__all__ = [
    "SOT_TOKEN",
    "EOT_TOKEN",
    "Tokenizer",
    "bytes_to_unicode",
    "clean_text",
    "first_positions",
    "pre_tokenize",
    "read_vocab_and_merges",
    "write_byte_level_vocab",
    "write_tokenizer_files",
    "write_tokenizer_json",
]

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MERGES_HEADER = "#version: 0.2"
TOKENIZER_JSON = "tokenizer.json"

# OpenAI's pre-tokenisation pattern, verbatim (the special tokens first so that they stay
# whole; IGNORECASE is a no-op after lower-casing but kept to match the original).
_TOKEN_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")

# Distinct words whose BPE result is memoised; natural-language word counts stay far below
# this, and the bound keeps adversarial inputs (e.g. random strings) from growing memory.
_BPE_CACHE_SIZE = 1 << 18


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible map from the 256 byte values to printable unicode characters.

    BPE works on strings, so every byte needs a visible, non-whitespace stand-in; printable
    Latin-1 bytes map to themselves and the rest to code points from 256 upwards. The dict
    order (printable bytes first) is the order of the first 256 vocabulary entries.
    """
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


# `str.translate` table mapping a latin-1 decoded byte string to the byte symbols, which
# is much faster than a per-byte dict lookup in a generator.
_BYTE_TRANSLATION = bytes_to_unicode()


def _byte_encode(word: str) -> str:
    return word.encode("utf-8").decode("latin-1").translate(_BYTE_TRANSLATION)


def clean_text(text: str) -> str:
    """OpenAI's cleaning: ftfy, HTML unescape twice, whitespace collapse, lower case."""
    text = ftfy.fix_text(text)
    # Twice, as OpenAI does, so doubly escaped entities ("&amp;amp;") are undone too.
    text = html.unescape(html.unescape(text))
    text = text.strip()
    text = _WHITESPACE.sub(" ", text).strip()
    return text.lower()


def pre_tokenize(text: str) -> list[str]:
    """Cleans `text` and splits it into OpenAI's pre-tokens (words, digits, punctuation)."""
    return _TOKEN_PATTERN.findall(clean_text(text))


def _bpe(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """Applies merges to `word` lowest rank first, like OpenAI's `SimpleTokenizer.bpe`.

    Each round merges every non-overlapping occurrence (scanning left to right) of the
    best-ranked adjacent pair; this order defines the ids, so it must not be "optimised"
    into a different merge order.
    """
    while len(word) > 1:
        best_rank = None
        best: tuple[str, str] | None = None
        for pair in zip(word, word[1:]):
            rank = ranks.get(pair)
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best = rank, pair
        if best is None:
            break
        first, second = best
        merged = first + second
        new_word: list[str] = []
        i = 0
        n = len(word)
        while i < n:
            if i < n - 1 and word[i] == first and word[i + 1] == second:
                new_word.append(merged)
                i += 2
            else:
                new_word.append(word[i])
                i += 1
        word = tuple(new_word)
    return word


def _word_symbols(byte_word: str) -> tuple[str, ...]:
    """The initial BPE symbols of a byte-encoded word: one per byte, the last with '</w>'."""
    return tuple(byte_word[:-1]) + (byte_word[-1] + END_OF_WORD,)


class Tokenizer:
    """OpenAI CLIP tokenizer: gives the ids of `clip.tokenize(texts, truncate=True)`.

    Attributes:
      vocab_size: number of vocabulary entries (49408 for OpenAI CLIP).
      context_length: length of every row returned by `__call__`.
      sot_id: id of '<|startoftext|>', prepended to every text.
      eot_id: id of '<|endoftext|>', appended to every text (CLIP pools its text features
        at this position).
      pad_id: 0, the padding value of OpenAI's `tokenize` (zeros, not EOT as in transformers).
      text_start: 1, the index of the first text token (after SOT), where prompt
        learners insert tokens before the text.
      files: the tokenizer files `from_dir` read (fingerprinted by the feature stores).
    """

    pad_id: int = 0
    text_start: int = 1

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], context_length: int) -> None:
        """Builds the tokenizer and checks that `vocab` and `merges` fit together.

        Args:
          vocab: token string -> id, ids exactly 0..len(vocab)-1.
          merges: BPE merge pairs, best (lowest rank) first.
          context_length: row length of `__call__`'s output; at least 2 (SOT and EOT).

        Raises:
          ValueError: when the special tokens, a byte symbol or a merge result is missing
            from `vocab`, ids are not 0..len-1, or `context_length` < 2.
        """
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (SOT + EOT), got {context_length}")
        for special in (SOT_TOKEN, EOT_TOKEN):
            if special not in vocab:
                raise ValueError(f"special token {special!r} is missing from the vocabulary")
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError(f"vocabulary ids must be exactly 0..{len(vocab) - 1}")
        # Every symbol BPE can output must have an id, otherwise encode() would fail later
        # on some rare input; checking once here turns a corrupt file into a clear error.
        for symbol in bytes_to_unicode().values():
            for s in (symbol, symbol + END_OF_WORD):
                if s not in vocab:
                    raise ValueError(f"byte symbol {s!r} is missing from the vocabulary")
        for rank, (first, second) in enumerate(merges):
            if first + second not in vocab:
                raise ValueError(
                    f"merge #{rank} ({first!r} {second!r}) produces {first + second!r}, "
                    "which is missing from the vocabulary"
                )

        self.vocab_size: int = len(vocab)
        self.context_length: int = int(context_length)
        self.sot_id: int = vocab[SOT_TOKEN]
        self.eot_id: int = vocab[EOT_TOKEN]
        self._encoder: dict[str, int] = dict(vocab)
        self._decoder: dict[int, str] = {i: s for s, i in vocab.items()}
        # dict(zip(...)) as in OpenAI's code: should a pair repeat, its last rank wins.
        self._ranks: dict[tuple[str, str], int] = dict(zip(merges, range(len(merges))))
        self._byte_decoder: dict[str, int] = {c: b for b, c in bytes_to_unicode().items()}
        # Keyed on the raw (cleaned) pre-token; the specials map to their own ids because
        # OpenAI's BPE cache is seeded with them, so a literal "<|endoftext|>" in a text
        # becomes the EOT id rather than being split.
        self._cache: dict[str, tuple[int, ...]] = {SOT_TOKEN: (self.sot_id,), EOT_TOKEN: (self.eot_id,)}
        self.files: tuple[str, ...] = ()

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], context_length: int, vocab_size: int | None = None) -> Tokenizer:
        """Loads a Hugging Face CLIP tokenizer directory (see `read_vocab_and_merges`).

        `vocab.json` + `merges.txt` are read when both are there, else `tokenizer.json`;
        either way the ids come from this module's OpenAI pipeline.

        Args:
          path: checkpoint (or tokenizer) directory.
          context_length: see `Tokenizer.__init__`.
          vocab_size: expected number of vocabulary entries (e.g. the text model's
            embedding rows); checked because a mismatch otherwise shows up only as wrong
            embeddings or an index error deep inside the model.

        Raises:
          FileNotFoundError: the directory does not exist, or holds neither
            `vocab.json` + `merges.txt` nor `tokenizer.json`.
          ValueError: a file is malformed (or `tokenizer.json` is not a CLIP BPE), the
            size differs from `vocab_size`, or the vocabulary and merges disagree.
        """
        directory = pathlib.Path(path)
        vocab, merges, files = _read_tokenizer_dir(directory)
        if vocab_size is not None and len(vocab) != vocab_size:
            raise ValueError(f"{files[0]} has {len(vocab)} entries but the model expects vocab_size={vocab_size}")
        try:
            tokenizer = cls(vocab, merges, context_length)
        except ValueError as e:
            raise ValueError(f"inconsistent tokenizer files in {directory}: {e}") from e
        tokenizer.files = tuple(str(f) for f in files)
        return tokenizer

    def _encode_word(self, word: str) -> tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is None:
            symbols = _bpe(_word_symbols(_byte_encode(word)), self._ranks)
            ids = tuple(self._encoder[s] for s in symbols)
            if len(self._cache) < _BPE_CACHE_SIZE:
                self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text` after OpenAI's cleaning, without SOT/EOT and without truncation."""
        return [i for word in pre_tokenize(text) for i in self._encode_word(word)]

    def decode(self, ids: Iterable[int]) -> str:
        """Approximate inverse of `encode` (lower-cased, cleaned, words space-separated).

        Special tokens and padding are dropped, so a row of `__call__` can be passed as is.
        """
        skip = {self.sot_id, self.eot_id, self.pad_id}
        text = "".join(self._decoder[int(i)] for i in ids if int(i) not in skip)
        # '</w>' consists of printable bytes, so it survives byte decoding and is replaced
        # afterwards, as in OpenAI's decode.
        data = bytearray(self._byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Tokenizes like `clip.tokenize(texts, context_length, truncate=True)`.

        Returns:
          int32 array [N, context_length]: SOT, the BPE ids, EOT, then zeros. Too long
          texts are cut to `context_length` ids with EOT overwriting the last one, so every
          row holds exactly one EOT.
        """
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int32)
        for row, text in enumerate(texts):
            tokens = [self.sot_id, *self.encode(text), self.eot_id]
            if len(tokens) > self.context_length:
                tokens = tokens[: self.context_length]
                tokens[-1] = self.eot_id
            out[row, : len(tokens)] = tokens
        return out

    def eot_positions(self, ids: np.ndarray) -> np.ndarray:
        """Index of the first EOT in every row of `ids` ([N, L]) as int32 [N].

        CLIP takes its text feature at this position; OpenAI's `argmax(ids)` shortcut only
        works when EOT is the largest id, which small demo vocabularies do not guarantee
        to keep, hence the explicit search.

        Raises:
          ValueError: `ids` is not 2-D or a row contains no EOT.
        """
        return first_positions(ids, self.eot_id, "EOT token")


def first_positions(ids: np.ndarray, token_id: int, what: str) -> np.ndarray:
    """Index of the first `token_id` in every row of `ids` ([N, L]) as int32 [N].

    Raises:
      ValueError: `ids` is not 2-D, or a row holds no `token_id` (`what` names it).
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"expected ids of shape [N, L], got shape {ids.shape}")
    found = ids == token_id
    has = found.any(axis=1)
    if not has.all():
        rows = np.flatnonzero(~has)[:5].tolist()
        raise ValueError(f"no {what} (id {token_id}) in rows {rows}")
    return np.argmax(found, axis=1).astype(np.int32)


def _read_vocab(path: pathlib.Path) -> dict[str, int]:
    try:
        with open(path, encoding="utf-8") as f:
            vocab = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed {path}: not valid UTF-8 JSON ({e})") from e
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in vocab.items()
    ):
        raise ValueError(f"malformed {path}: expected a JSON object mapping token -> integer id")
    return vocab


def _read_merges(path: pathlib.Path) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"malformed {path}: not valid UTF-8 ({e})") from e
    # Both OpenAI and transformers drop the first line unconditionally; requiring it to be
    # the header stops a header-less file from silently losing its best merge.
    if not lines[0].startswith("#version"):
        raise ValueError(f"malformed {path}: first line must be a '#version' header, got {lines[0]!r}")
    while lines and not lines[-1].strip():
        lines.pop()
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"malformed {path} line {lineno}: expected two space-separated symbols, "
                f"got {line!r}"
            )
        merges.append((parts[0], parts[1]))
    return merges


def read_vocab_and_merges(path: str | os.PathLike[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (token -> id) and merges (best first) of a CLIP tokenizer directory.

    Reads `vocab.json` + `merges.txt` when both exist, else `tokenizer.json` (its BPE
    model's `vocab` and `merges`, the latter as "a b" strings or [a, b] pairs, plus any
    `added_tokens` missing from that vocab). Only parses; `Tokenizer` checks consistency.

    Raises:
      FileNotFoundError / ValueError: as `Tokenizer.from_dir`.
    """
    vocab, merges, _ = _read_tokenizer_dir(pathlib.Path(path))
    return vocab, merges


def _read_tokenizer_dir(
    directory: pathlib.Path,
) -> tuple[dict[str, int], list[tuple[str, str]], tuple[pathlib.Path, ...]]:
    """(vocab, merges, the files read, the vocabulary's first) of `directory`."""
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {directory}")
    vocab_path = directory / "vocab.json"
    merges_path = directory / "merges.txt"
    json_path = directory / TOKENIZER_JSON
    if vocab_path.is_file() and merges_path.is_file():
        return _read_vocab(vocab_path), _read_merges(merges_path), (vocab_path, merges_path)
    if json_path.is_file():
        vocab, merges = _read_tokenizer_json(json_path)
        return vocab, merges, (json_path,)
    missing = ", ".join(p.name for p in (vocab_path, merges_path) if not p.is_file())
    raise FileNotFoundError(
        f"tokenizer files not found in {directory}: need vocab.json + merges.txt (missing: {missing}) "
        f"or {TOKENIZER_JSON}"
    )


def _read_tokenizer_json(path: pathlib.Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a `tokenizers` library file holding CLIP's byte-level BPE."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed {path}: not valid UTF-8 JSON ({e})") from e
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise ValueError(f"malformed {path}: expected a JSON object with a 'model' object")
    if model.get("type") != "BPE":
        raise ValueError(f"unsupported {path}: model type is {model.get('type')!r}, CLIP needs 'BPE'")
    # Our BPE marks word ends with '</w>' and has no continuation prefix, as CLIP's does; a
    # model built otherwise would be given different ids, so it is refused.
    if model.get("end_of_word_suffix") != END_OF_WORD or model.get("continuing_subword_prefix") not in (None, ""):
        raise ValueError(
            f"unsupported {path}: not CLIP's BPE (end_of_word_suffix="
            f"{model.get('end_of_word_suffix')!r}, expected {END_OF_WORD!r}; continuing_subword_prefix="
            f"{model.get('continuing_subword_prefix')!r}, expected '')"
        )
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in vocab.items()
    ):
        raise ValueError(f"malformed {path}: model.vocab must be a JSON object mapping token -> integer id")
    vocab = dict(vocab)
    # Added tokens (the specials) normally repeat vocab entries; ones that do not extend it.
    added = data.get("added_tokens") or []
    if not isinstance(added, list):
        raise ValueError(f"malformed {path}: added_tokens must be a list")
    for i, token in enumerate(added):
        content = token.get("content") if isinstance(token, dict) else None
        token_id = token.get("id") if isinstance(token, dict) else None
        if not isinstance(content, str) or not isinstance(token_id, int) or isinstance(token_id, bool):
            raise ValueError(f"malformed {path}: added_tokens[{i}] needs a string 'content' and an integer 'id'")
        if vocab.setdefault(content, token_id) != token_id:
            raise ValueError(
                f"malformed {path}: added token {content!r} has id {token_id} but model.vocab gives {vocab[content]}"
            )
    raw_merges = model.get("merges")
    if not isinstance(raw_merges, list):
        raise ValueError(f"malformed {path}: model.merges must be a list")
    merges: list[tuple[str, str]] = []
    for rank, merge in enumerate(raw_merges):
        # tokenizers < 0.20 writes "a b" strings, later versions [a, b] pairs.
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) and p for p in parts)):
            raise ValueError(
                f"malformed {path}: model.merges[{rank}] must be an \"a b\" string or an [a, b] pair "
                f"of non-empty strings, got {merge!r}"
            )
        merges.append((parts[0], parts[1]))
    return vocab, merges


def _learn_merges(word_counts: dict[tuple[str, ...], int], num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE training: repeatedly merges the most frequent adjacent pair.

    Pair counts are updated incrementally (only the words containing the merged pair are
    touched) and the best pair comes from a lazily invalidated heap, so the cost is
    proportional to the work each merge does rather than to the corpus size. Ties go to
    the lexicographically smallest pair, which keeps the result deterministic.
    """
    words = [list(w) for w in word_counts]
    counts = list(word_counts.values())
    pair_counts: collections.Counter[tuple[str, str]] = collections.Counter()
    where: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    for idx, (word, count) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
            where[pair].add(idx)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)

    # Strings that already are vocabulary entries cannot be added again (vocab.json is a
    # dict), so a pair that would rebuild one is skipped for good.
    known = set(bytes_to_unicode().values())
    known |= {s + END_OF_WORD for s in bytes_to_unicode().values()}

    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        current = pair_counts.get(pair, 0)
        if current <= 0:
            continue
        if -neg != current:  # stale entry: re-queue with the current count
            heapq.heappush(heap, (-current, pair))
            continue
        merged = pair[0] + pair[1]
        if merged in known:
            del pair_counts[pair]
            continue
        known.add(merged)
        merges.append(pair)

        changed: set[tuple[str, str]] = set()
        for idx in list(where.pop(pair, ())):
            word, count = words[idx], counts[idx]
            for p in zip(word, word[1:]):
                pair_counts[p] -= count
                changed.add(p)
            new_word = _bpe(tuple(word), {pair: 0})
            words[idx] = list(new_word)
            for p in zip(new_word, new_word[1:]):
                pair_counts[p] += count
                where[p].add(idx)
                changed.add(p)
        del pair_counts[pair]
        changed.discard(pair)
        for p in changed:
            c = pair_counts.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pair_counts.pop(p, None)
    return merges


def write_byte_level_vocab(directory: str | os.PathLike[str], corpus: Iterable[str], vocab_size: int) -> None:
    """Learns a CLIP-style byte-level BPE vocabulary on `corpus` and writes it to `directory`.

    The texts are cleaned and pre-tokenised exactly as `Tokenizer` does, then merges are
    learned until the vocabulary has `vocab_size` entries, laid out as OpenAI builds its
    vocabulary: 256 byte symbols, the same 256 with '</w>', one entry per merge, then
    '<|startoftext|>' and '<|endoftext|>'. Writes it with `write_tokenizer_files`, i.e.
    in both layouts, which `Tokenizer.from_dir` and
    `transformers.CLIPTokenizer.from_pretrained` both load.

    Raises:
      ValueError: `vocab_size` < 514 (bytes plus specials), or the corpus has too few
        distinct symbol pairs to learn the requested number of merges.
    """
    base = 2 * 256 + 2
    if vocab_size < base:
        raise ValueError(f"vocab_size must be >= {base} (512 byte symbols + 2 specials), got {vocab_size}")
    num_merges = vocab_size - base

    word_counts = collections.Counter(
        _word_symbols(_byte_encode(w)) for text in corpus for w in pre_tokenize(text) if w not in (SOT_TOKEN, EOT_TOKEN)
    )
    merges = _learn_merges(dict(word_counts), num_merges)
    if len(merges) < num_merges:
        raise ValueError(
            f"corpus supports only {len(merges)} merges (vocab_size {base + len(merges)}), "
            f"{num_merges} needed for vocab_size={vocab_size}; use a larger corpus"
        )

    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + [a + b for a, b in merges]
    tokens += [SOT_TOKEN, EOT_TOKEN]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == vocab_size, "duplicate vocabulary entries"
    write_tokenizer_files(directory, vocab, merges)


_SPECIAL_TOKENS_MAP = {
    "bos_token": SOT_TOKEN,
    "eos_token": EOT_TOKEN,
    "unk_token": EOT_TOKEN,
    "pad_token": EOT_TOKEN,
}


def write_tokenizer_files(
    directory: str | os.PathLike[str], vocab: dict[str, int], merges: Sequence[tuple[str, str]]
) -> None:
    """Writes a CLIP tokenizer in both Hugging Face layouts.

    `vocab.json` + `merges.txt` (with the '#version: 0.2' header), `tokenizer.json` (see
    `write_tokenizer_json`), `tokenizer_config.json` and `special_tokens_map.json`.

    Args:
      directory: created if needed; existing files are replaced.
      vocab: token -> id, with '<|startoftext|>' and '<|endoftext|>'.
      merges: BPE merge pairs, best first.
    """
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write(MERGES_HEADER + "\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    write_tokenizer_json(out, vocab, merges)
    with open(out / "special_tokens_map.json", "w", encoding="utf-8") as f:
        json.dump(_SPECIAL_TOKENS_MAP, f, indent=2)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        **_SPECIAL_TOKENS_MAP,
    }
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def write_tokenizer_json(
    directory: str | os.PathLike[str], vocab: dict[str, int], merges: Sequence[tuple[str, str]]
) -> pathlib.Path:
    """Writes `directory/tokenizer.json` alone, as transformers' CLIPTokenizer saves it.

    Built with the `tokenizers` library like transformers' `CLIPTokenizer` (v5) and
    `convert_slow_tokenizer.CLIPConverter`: BPE with end-of-word suffix '</w>' and
    unknown token '<|endoftext|>', NFC + whitespace + lower-case normaliser, CLIP's split
    pattern then byte-level pre-tokenizer and decoder, and a RobertaProcessing
    post-processor adding '<|startoftext|>' ... '<|endoftext|>'. That pipeline is what
    transformers runs; `Tokenizer.from_dir` takes only the vocabulary and merges from it.

    Args:
      directory: created if needed.
      vocab: token -> id, with '<|startoftext|>' and '<|endoftext|>'.
      merges: BPE merge pairs, best first.

    Returns:
      The path of the written file.

    Raises:
      ValueError: a special token is missing from `vocab`.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE

    for special in (SOT_TOKEN, EOT_TOKEN):
        if special not in vocab:
            raise ValueError(f"special token {special!r} is missing from the vocabulary")
    backend = HFTokenizer(
        BPE(
            vocab=dict(vocab),
            merges=[tuple(m) for m in merges],
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix=END_OF_WORD,
            fuse_unk=False,
            unk_token=EOT_TOKEN,
        )
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_TOKEN_PATTERN.pattern), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.RobertaProcessing(
        (EOT_TOKEN, vocab[EOT_TOKEN]),
        (SOT_TOKEN, vocab[SOT_TOKEN]),
        trim_offsets=False,
        add_prefix_space=False,
    )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (SOT_TOKEN, EOT_TOKEN)])
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    path = out / TOKENIZER_JSON
    backend.save(str(path))
    return path
