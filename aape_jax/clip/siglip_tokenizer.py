"""The tokenizer of SigLIP / SigLIP 2 checkpoints, giving transformers' ids without transformers.

A frozen SigLIP only gives the text embeddings it was trained for when it sees the ids its
users get from `processor(text=..., padding="max_length", max_length=64, truncation=True)`,
i.e. `tokenizer(texts, padding="max_length", max_length=context_length, truncation=True)`:
the text's ids, one end-of-sequence id, then the pad id up to `context_length`; a too long
text is cut so that the eos stays last. (SigLIP's text tower pools its last position, hence
the fixed length.) Two checkpoint layouts exist:

* `tokenizer.json` (SigLIP 2: Gemma's BPE vocabulary, `<eos>`, pad `<pad>` = 0): read with
  the `tokenizers` library and used with the file's own normaliser, pre-tokeniser and
  post-processor, which is what transformers v5's fast tokenizers do. With a tokenizer.json
  transformers v5 ignores `add_bos_token` / `add_eos_token` in tokenizer_config.json (it
  pops them), so only the post-processor adds special tokens; it must end the text with the
  eos, because transformers appends none otherwise. When transformers would pick its
  `Siglip2Tokenizer` (tokenizer_config.json says so, or config.json's `model_type` is
  "siglip2"), that class lower-cases before the file's normaliser, and so does this one.
  The FixRes SigLIP 2 checkpoints (`model_type` "siglip", tokenizer class `GemmaTokenizer`)
  are *not* lower-cased by transformers, although big_vision trained them on lower-cased text.
* `spiece.model` (SigLIP v1 on the hub: T5's 32k SentencePiece vocabulary, `</s>` = 1,
  `<unk>` = 2, pad `</s>`): transformers' `SiglipTokenizer` (a slow, Python tokenizer)
  re-done step by step: the text is split around added/special tokens (stripping the
  whitespace next to those with lstrip/rstrip), each piece is lower-cased (`do_lower_case`),
  stripped of ASCII punctuation and whitespace-collapsed, encoded by SentencePiece behind an
  `<unk>` prefix that is cut off again, and an eos is appended unless the ids already end with
  one. It needs the `sentencepiece` package.

`write_tiny_siglip_tokenizer` writes a small vocabulary in either layout, so that tests and
tiny checkpoints work without a download.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import re
import string
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tokenizers

from aape_jax.clip.tokenizer import first_positions

__all__ = [
    "SPIECE_MODEL",
    "TOKENIZER_JSON",
    "SiglipTokenizer",
    "canonicalize_text",
    "write_tiny_siglip_tokenizer",
]

TOKENIZER_JSON = "tokenizer.json"
SPIECE_MODEL = "spiece.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
SPIECE_UNDERLINE = "\u2581"  # "▁", SentencePiece's word-boundary marker

_INSTALL_SENTENCEPIECE = "pip install sentencepiece"

# transformers' named special tokens (PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES).
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# The defaults of the tokenizer classes transformers picks for these checkpoints, used for the
# special tokens the tokenizer files leave out (exactly as the class's __init__ would).
_CLASS_DEFAULTS: dict[str, dict[str, str]] = {
    "SiglipTokenizer": {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"},
    "GemmaTokenizer": {
        "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "mask_token": "<mask>",
    },
    "Siglip2Tokenizer": {
        "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "mask_token": "<mask>",
    },
}
# Class-level padding sides (transformers' Gemma/Siglip2 tokenizers pad left unless configured).
_CLASS_PADDING_SIDE = {"GemmaTokenizer": "left", "Siglip2Tokenizer": "left"}

_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")
_PROBE_TEXT = "a photo of a dog"


def canonicalize_text(text: str, do_lower_case: bool = True) -> str:
    """transformers' `SiglipTokenizer.canonicalize_text` (after big_vision's prompt engineering).

    Lower-cases (when `do_lower_case`), removes ASCII punctuation (`string.punctuation`),
    collapses whitespace runs to one space and strips the ends.
    """
    if do_lower_case:
        text = text.lower()
    text = text.translate(_PUNCTUATION_TABLE)
    text = _WHITESPACE.sub(" ", text)
    return text.strip()


# ----------------------------------------------------------------------------- file reading


def _read_json_object(path: pathlib.Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed {path}: not valid UTF-8 JSON ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"malformed {path}: expected a JSON object, got {type(value).__name__}")
    return value


def _content(value: Any, where: str) -> str | None:
    """The text of a special token as tokenizer files write it: a string or {"content": ...}."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"malformed {where}: a special token must be a string or an object with 'content', got {value!r}")


@dataclasses.dataclass(frozen=True)
class _Added:
    """An added/special token of transformers' slow tokenizer and its stripping flags."""

    content: str
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


@dataclasses.dataclass
class _TokenizerFiles:
    """What transformers v5's `from_pretrained` takes from tokenizer_config.json / special_tokens_map.json."""

    directory: pathlib.Path
    config: dict[str, Any]
    config_path: pathlib.Path
    tokenizer_class: str | None  # as written in tokenizer_config.json, without "Fast"
    loaded_class: str | None  # the class transformers loads (whose defaults fill the gaps)
    # Named special tokens: name -> string or serialised AddedToken dict (None when set to null).
    specials: dict[str, Any]
    extra_specials: list[Any]

    @classmethod
    def read(cls, directory: pathlib.Path, loaded_class: str | None = None) -> _TokenizerFiles:
        """Reads the files; `loaded_class` overrides tokenizer_config.json's class."""
        config_path = directory / TOKENIZER_CONFIG
        map_path = directory / SPECIAL_TOKENS_MAP
        config = _read_json_object(config_path) or {}
        special_map = _read_json_object(map_path)
        tokenizer_class = config.get("tokenizer_class")
        if tokenizer_class is not None and not isinstance(tokenizer_class, str):
            raise ValueError(f"malformed {config_path}: tokenizer_class must be a string, got {tokenizer_class!r}")
        if tokenizer_class is not None:
            tokenizer_class = tokenizer_class.removesuffix("Fast")

        specials = {name: config[name] for name in _SPECIAL_NAMES if name in config}
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        # transformers v5 reads special_tokens_map.json only for configs without
        # added_tokens_decoder (older saves), and then its values win over tokenizer_config's.
        if special_map is not None and "added_tokens_decoder" not in config:
            for name in _SPECIAL_NAMES:
                if name in special_map:
                    specials[name] = special_map[name]
            for key in ("additional_special_tokens", "extra_special_tokens"):
                more = special_map.get(key)
                if isinstance(more, list):
                    extra = list(extra) + [t for t in more if t not in extra]
        if not isinstance(extra, list):
            raise ValueError(f"malformed {config_path}: additional_special_tokens must be a list, got {extra!r}")
        loaded_class = loaded_class or tokenizer_class
        for name, value in _CLASS_DEFAULTS.get(loaded_class or "", {}).items():
            specials.setdefault(name, value)
        for name, value in specials.items():
            _content(value, f"{config_path} ({name})")
        for value in extra:
            _content(value, f"{config_path} (additional_special_tokens)")
        return cls(directory, config, config_path, tokenizer_class, loaded_class, specials, list(extra))

    def special(self, name: str) -> str | None:
        return _content(self.specials.get(name), str(self.config_path))

    def bool_option(self, key: str, default: bool) -> bool:
        value = self.config.get(key, default)
        if not isinstance(value, bool):
            raise ValueError(f"malformed {self.config_path}: {key} must be true or false, got {value!r}")
        return value

    def check_sides(self) -> None:
        """Refuses configs under which transformers pads or truncates on the left."""
        effects = {"padding_side": "put the padding before the text", "truncation_side": "cut long texts at the start"}
        for key, effect in effects.items():
            default = _CLASS_PADDING_SIDE.get(self.loaded_class or "", "right") if key == "padding_side" else "right"
            side = self.config.get(key, default)
            if side != "right":
                given = "" if key in self.config else f" (the default of {self.loaded_class})"
                raise ValueError(
                    f"{self.config_path} gives {key}={side!r}{given}: transformers would {effect}, but "
                    f"SigLIP rows hold the text first; set \"{key}\": \"right\" in {self.config_path}"
                )


def _model_type(directory: pathlib.Path) -> str | None:
    config = _read_json_object(directory / "config.json")
    value = (config or {}).get("model_type")
    return value if isinstance(value, str) else None


# ----------------------------------------------------------------------------- tokenizers backend


class _FastText:
    """A tokenizer.json pipeline, used the way transformers' fast tokenizer uses it."""

    def __init__(self, backend: tokenizers.Tokenizer, pad_id: int, pad_token: str, source: str) -> None:
        self.backend = backend  # without truncation and padding
        self.pad_id = pad_id
        self.pad_token = pad_token
        self.source = source
        self._model_inputs_backend: tokenizers.Tokenizer | None = None
        self._model_inputs_length = -1

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def model_inputs(self, texts: list[str], context_length: int) -> list[list[int]]:
        """Ids of `tokenizer(texts, padding="max_length", max_length=L, truncation=True)`."""
        if self._model_inputs_length != context_length:
            # What transformers' set_truncation_and_padding does, on a copy so that encode()
            # keeps its untruncated backend.
            backend = tokenizers.Tokenizer.from_str(self.backend.to_str())
            backend.enable_truncation(max_length=context_length, stride=0, strategy="longest_first", direction="right")
            backend.enable_padding(length=context_length, direction="right", pad_id=self.pad_id,
                                   pad_token=self.pad_token, pad_type_id=0)
            self._model_inputs_backend, self._model_inputs_length = backend, context_length
        assert self._model_inputs_backend is not None
        return [e.ids for e in self._model_inputs_backend.encode_batch(texts, add_special_tokens=True)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=True)


def _load_fast(directory: pathlib.Path) -> tuple[_FastText, int, int, list[int]]:
    """Reads tokenizer.json; returns (backend, eos id, text_start, leading special ids)."""
    path = directory / TOKENIZER_JSON
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise ValueError(f"malformed {path}: cannot be read by the tokenizers library ({e})") from e
    file_padding = backend.padding
    backend.no_truncation()  # settings baked into the file; model_inputs sets its own
    backend.no_padding()
    # transformers v5's AutoTokenizer maps model_type "siglip2" to Siglip2Tokenizer whatever the
    # hub's tokenizer_class says; that class prepends a Lowercase normaliser.
    files = _TokenizerFiles.read(directory, "Siglip2Tokenizer" if _model_type(directory) == "siglip2" else None)
    files.check_sides()
    if files.loaded_class == "Siglip2Tokenizer":
        lower = tokenizers.normalizers.Lowercase()
        backend.normalizer = lower if backend.normalizer is None else tokenizers.normalizers.Sequence(
            [lower, backend.normalizer])
    if files.bool_option("split_special_tokens", False):
        backend.encode_special_tokens = True

    # transformers (TokenizersBackend._post_init) registers the configured special tokens as
    # special added tokens of the backend, so that e.g. a literal "<eos>" in a text stays whole.
    present = {t.content for t in backend.get_added_tokens_decoder().values()}
    to_add = []
    for value in [*(files.specials[n] for n in _SPECIAL_NAMES if n in files.specials), *files.extra_specials]:
        content = _content(value, str(files.config_path))
        if content is None or content in present:
            continue
        flags = {k: value[k] for k in ("single_word", "lstrip", "rstrip") if isinstance(value, dict) and k in value}
        to_add.append(tokenizers.AddedToken(content, special=True, normalized=False, **flags))
        present.add(content)
    if to_add:
        backend.add_special_tokens(to_add)

    def token_id(name: str) -> tuple[str, int]:
        token = files.special(name)
        if token is None and name == "pad_token" and file_padding is not None:
            token = file_padding["pad_token"]  # transformers' fallback: the file's own padding
        if token is None:
            raise ValueError(f"no {name} in {files.config_path} or {directory / SPECIAL_TOKENS_MAP}")
        found = backend.token_to_id(token)
        if found is None:
            raise ValueError(f"{name} {token!r} (from the tokenizer files in {directory}) is not in {path}")
        return token, found

    eos_token, eos_id = token_id("eos_token")
    pad_token, pad_id = token_id("pad_token")

    # Where the post-processor puts the text: encode a probe with and without special tokens.
    plain = backend.encode(_PROBE_TEXT, add_special_tokens=False).ids
    full = backend.encode(_PROBE_TEXT, add_special_tokens=True).ids
    start = next((k for k in range(len(full) - len(plain) + 1) if full[k:k + len(plain)] == plain), None)
    if not plain or start is None:
        raise ValueError(f"cannot locate the text in the post-processor output of {path}: {plain} vs {full}")
    leading, trailing = full[:start], full[start + len(plain):]
    if trailing != [eos_id]:
        what = "appends no token" if not trailing else f"appends {[backend.id_to_token(i) for i in trailing]}"
        raise ValueError(
            f"the post-processor of {path} {what} after the text, but SigLIP needs exactly the end-of-sequence "
            f"token {eos_token!r} (id {eos_id}) there; transformers v5 adds none of its own for a tokenizer.json "
            "(add_eos_token in tokenizer_config.json is ignored), so the ids would not match. Re-save the "
            "tokenizer with a post-processor that appends the eos (e.g. TemplateProcessing '$A <eos>')"
        )
    return _FastText(backend, pad_id, pad_token, str(path)), eos_id, len(leading), leading


# ----------------------------------------------------------------------------- sentencepiece backend


def _import_sentencepiece() -> Any:
    try:
        import sentencepiece
    except ImportError as e:
        raise ImportError(
            f"SigLIP's {SPIECE_MODEL} tokenizer needs the sentencepiece package: {_INSTALL_SENTENCEPIECE}"
        ) from e
    return sentencepiece


class _SentencePieceText:
    """transformers v5's `SiglipTokenizer` (tokenization_siglip.py + its slow base classes)."""

    def __init__(self, processor: Any, files: _TokenizerFiles, source: str) -> None:
        self.sp = processor
        self.source = source
        self.do_lower_case = files.bool_option("do_lower_case", True)
        self.split_special_tokens = files.bool_option("split_special_tokens", False)
        size = processor.get_piece_size()
        self._piece_ids = {processor.id_to_piece(i): i for i in range(size)}
        self._size = size

        def base_id(content: str, what: str) -> int:
            found = self._piece_ids.get(content)
            if found is None:
                raise ValueError(
                    f"{what} {content!r} is not a piece of {source}; tokens added beyond the SentencePiece "
                    "vocabulary are not supported"
                )
            return found

        # Added tokens and their flags: tokenizer_config's added_tokens_decoder first, then the
        # named specials (SiglipTokenizer wraps plain strings with lstrip=rstrip=True), then the
        # extra specials (plain strings get no stripping), as transformers registers them.
        self.added: dict[str, _Added] = {}
        self.added_ids: dict[str, int] = {}
        decoder = files.config.get("added_tokens_decoder", {})
        if not isinstance(decoder, dict):
            raise ValueError(f"malformed {files.config_path}: added_tokens_decoder must be an object")
        for key, entry in decoder.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("content"), str)):
                raise ValueError(f"malformed {files.config_path}: added_tokens_decoder[{key!r}] = {entry!r}")
            content = entry["content"]
            try:
                index = int(key)
            except ValueError as e:
                raise ValueError(f"malformed {files.config_path}: added_tokens_decoder key {key!r}") from e
            if base_id(content, "added token") != index:
                raise ValueError(f"{files.config_path} gives {content!r} id {key}, but {source} has it at "
                                 f"{self._piece_ids[content]}")
            self.added[content] = _Added(content, bool(entry.get("special", False)), bool(entry.get("lstrip", False)),
                                         bool(entry.get("rstrip", False)), bool(entry.get("single_word", False)))
            self.added_ids[content] = index

        def register(value: Any, strip_default: bool, what: str) -> str | None:
            content = _content(value, str(files.config_path))
            if content is None:
                return None
            if content in self.added:
                if not self.added[content].special:
                    self.added[content] = dataclasses.replace(self.added[content], special=True)
                return content
            if isinstance(value, dict):
                token = _Added(content, True, bool(value.get("lstrip", False)), bool(value.get("rstrip", False)),
                               bool(value.get("single_word", False)))
            else:
                token = _Added(content, True, strip_default, strip_default)
            self.added[content] = token
            self.added_ids[content] = base_id(content, what)
            return content

        named = {}
        wrapped = ("eos_token", "unk_token", "pad_token")  # the ones SiglipTokenizer.__init__ wraps
        for name in (*wrapped, *[n for n in _SPECIAL_NAMES if n not in wrapped]):
            if name in files.specials:
                named[name] = register(files.specials[name], name in wrapped, name)
        for value in files.extra_specials:
            register(value, False, "additional special token")
        if named.get("eos_token") is None:
            raise ValueError(f"SigLIP needs an eos_token; {files.config_path} sets none")
        if named.get("unk_token") is None:
            raise ValueError(f"SiglipTokenizer needs an unk_token; {files.config_path} sets none")
        if named.get("pad_token") is None:
            raise ValueError(f"padding needs a pad_token; {files.config_path} sets none")
        self.eos_id = self.added_ids[named["eos_token"]]
        self.pad_id = self.added_ids[named["pad_token"]]
        self.unk_token: str = named["unk_token"]
        self.specials = {t for t, a in self.added.items() if a.special}
        self.special_ids = {self.added_ids[t] for t in self.specials}
        self._token_ids = {**self._piece_ids, **self.added_ids}
        self._piece_unk_id = processor.unk_id()  # what piece_to_id gives for an unknown piece
        self._unk_length = len(processor.encode(self.unk_token, out_type=str))
        # Leftmost, then longest match, like transformers' Trie.split.
        ordered = sorted(self.added, key=len, reverse=True)
        self._pattern = re.compile("(" + "|".join(map(re.escape, ordered)) + ")") if ordered else None

    @property
    def vocab_size(self) -> int:
        return self._size

    def _split(self, text: str) -> list[str]:
        """PreTrainedTokenizer.tokenize's split around added tokens, with lstrip/rstrip/single_word."""
        if self.split_special_tokens or self._pattern is None:
            return [text]
        tokens = [t for t in self._pattern.split(text) if t]  # Trie.cut_text drops empty pieces
        for i, token in enumerate(tokens):
            added = self.added.get(token)
            if added is None:
                continue
            left = tokens[i - 1] if i > 0 else None
            right = tokens[i + 1] if i < len(tokens) - 1 else None
            if added.rstrip and right:
                tokens[i + 1] = right.lstrip()
            if added.lstrip and left:
                tokens[i - 1] = left.rstrip()
            if added.single_word:
                if left and left[-1] != " ":
                    tokens[i - 1] += token
                    tokens[i] = ""
                elif right and right[0] != " ":
                    tokens[i + 1] = token + tokens[i + 1]
                    tokens[i] = ""
        return tokens

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # SiglipTokenizer.tokenize prefixes "▁" (after turning any "▁" into a space), splits
        # around added tokens, and runs _tokenize on the rest; the SentencePiece calls of all
        # texts are batched into one.
        plans: list[list[str | int]] = []  # per text: added-token strings, or an index into `chunks`
        chunks: list[str] = []
        for text in texts:
            plan: list[str | int] = []
            for token in self._split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")):
                if not token:
                    continue
                if token in self.added:
                    plan.append(token)
                else:
                    plan.append(len(chunks))
                    chunks.append(self.unk_token + canonicalize_text(token, self.do_lower_case))
            plans.append(plan)
        encoded = self.sp.encode(chunks, out_type=str) if chunks else []
        n = self._unk_length
        get, unk = self._token_ids.get, self._piece_unk_id
        out: list[list[int]] = []
        for plan in plans:
            pieces: list[str] = []
            for step in plan:
                if isinstance(step, str):
                    pieces.append(step)
                else:
                    chunk = encoded[step]
                    pieces.extend(chunk[n:] if len(chunk) >= n else chunk)
            if len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self.specials:
                pieces = pieces[1:]
            # convert_tokens_to_ids: added tokens first, then SentencePiece's piece_to_id
            # (which gives the unk id for a piece outside the vocabulary).
            out.append([get(p, unk) for p in pieces])
        return out

    def model_inputs(self, texts: list[str], context_length: int) -> list[list[int]]:
        """prepare_for_model: truncate to leave room for one eos, append it unless already last, pad."""
        rows = []
        for ids in self.encode_batch(texts):
            if len(ids) + 1 > context_length:
                ids = ids[: context_length - 1]
            if not ids or ids[-1] != self.eos_id:
                ids = ids + [self.eos_id]
            rows.append(ids + [self.pad_id] * (context_length - len(ids)))
        return rows

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([i for i in ids if i not in self.special_ids]).strip()


def _load_spiece(directory: pathlib.Path) -> _SentencePieceText:
    path = directory / SPIECE_MODEL
    files = _TokenizerFiles.read(directory, "SiglipTokenizer")
    if files.tokenizer_class not in (None, "SiglipTokenizer"):
        raise ValueError(
            f"{files.config_path} names tokenizer_class {files.tokenizer_class!r}; only transformers' "
            f"SiglipTokenizer is reproduced for {path}"
        )
    files.check_sides()
    if files.config.get("legacy") is False:
        raise ValueError(f"{files.config_path} sets legacy=false, which SigLIP's tokenizer never uses; not supported")
    kwargs = files.config.get("sp_model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"malformed {files.config_path}: sp_model_kwargs must be an object")
    spm = _import_sentencepiece()
    processor = spm.SentencePieceProcessor(**kwargs)
    try:
        data = path.read_bytes()
        processor.LoadFromSerializedProto(data)
    except Exception as e:  # sentencepiece raises RuntimeError / OSError on a corrupt model
        raise ValueError(f"malformed {path}: not a SentencePiece model ({e})") from e
    return _SentencePieceText(processor, files, str(path))


# ----------------------------------------------------------------------------- public class


class SiglipTokenizer:
    """SigLIP / SigLIP 2 tokenizer with the interface of `aape_jax.clip.tokenizer.Tokenizer`.

    Gives the ids of transformers'
    `tokenizer(texts, padding="max_length", max_length=context_length, truncation=True)`.

    Attributes:
      vocab_size: number of ids (the text model's embedding rows: 32000 for SigLIP v1,
        256000 for SigLIP 2).
      context_length: length of every row returned by `__call__` (64 for these checkpoints).
      eot_id: the end-of-sequence id appended to every text (`</s>` / `<eos>`).
      pad_id: the padding id (`</s>` for SigLIP v1, the same id as `eot_id`; `<pad>` = 0 for
        SigLIP 2).
      text_start: number of special tokens before the text in every row (0 for SigLIP).
      sot_id: the first of those leading tokens, or None when there are none.
      source: the file the vocabulary was read from.
      files: the tokenizer files read (fingerprinted by the feature stores), `source` and
        the tokenizer_config.json / special_tokens_map.json next to it that exist.
    """

    def __init__(self, backend: _FastText | _SentencePieceText, context_length: int, eot_id: int,
                 text_start: int = 0, sot_id: int | None = None) -> None:
        if context_length < text_start + 1:
            raise ValueError(f"context_length must be >= {text_start + 1} (the special tokens), got {context_length}")
        self._backend = backend
        self.vocab_size: int = backend.vocab_size
        self.context_length: int = int(context_length)
        self.eot_id: int = int(eot_id)
        self.pad_id: int = int(backend.pad_id)
        self.text_start: int = int(text_start)
        self.sot_id: int | None = sot_id
        self.source: str = backend.source
        folder = pathlib.Path(self.source).parent
        self.files: tuple[str, ...] = (self.source, *(str(folder / name) for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)
                                                     if (folder / name).is_file()))

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], context_length: int, vocab_size: int | None = None
                 ) -> SiglipTokenizer:
        """Loads the tokenizer of a SigLIP checkpoint directory.

        `tokenizer.json` is used when present (unless tokenizer_config.json names
        `SiglipTokenizer` and `spiece.model` exists, which is what transformers would load),
        else `spiece.model`; special tokens come from tokenizer_config.json /
        special_tokens_map.json with transformers v5's precedence.

        Args:
          path: checkpoint (or tokenizer) directory.
          context_length: row length of `__call__` (64 for the hub checkpoints).
          vocab_size: expected number of ids (the text model's embedding rows).

        Raises:
          FileNotFoundError: the directory, or both tokenizer files, are missing.
          ImportError: `spiece.model` is to be read but sentencepiece is not installed.
          ValueError: a file is malformed, the size differs from `vocab_size`, or the files
            describe a tokenization that does not end texts with the eos.
        """
        directory = pathlib.Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory not found: {directory}")
        fast_path, spiece_path = directory / TOKENIZER_JSON, directory / SPIECE_MODEL
        config = _read_json_object(directory / TOKENIZER_CONFIG) or {}
        wants_spiece = str(config.get("tokenizer_class", "")).removesuffix("Fast") == "SiglipTokenizer"
        if spiece_path.is_file() and (wants_spiece or not fast_path.is_file()):
            backend: _FastText | _SentencePieceText = _load_spiece(directory)
            tokenizer = cls(backend, context_length, backend.eos_id)
        elif fast_path.is_file():
            backend, eos_id, text_start, leading = _load_fast(directory)
            tokenizer = cls(backend, context_length, eos_id, text_start, leading[0] if leading else None)
        else:
            raise FileNotFoundError(
                f"no SigLIP tokenizer in {directory}: expected {TOKENIZER_JSON} (SigLIP 2, read with the "
                f"tokenizers library) or {SPIECE_MODEL} (SigLIP v1, read with sentencepiece)"
            )
        if vocab_size is not None and tokenizer.vocab_size != vocab_size:
            raise ValueError(
                f"{tokenizer.source} has {tokenizer.vocab_size} token ids but the model expects "
                f"vocab_size={vocab_size}; the tokenizer and the weights are from different models"
            )
        return tokenizer

    @staticmethod
    def _texts(texts: str | Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            return [texts]
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str")
        return texts

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without special tokens and without truncation (add_special_tokens=False)."""
        return self._backend.encode_batch(self._texts(text))[0]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens (eos, pad, unk, ...) dropped; a row of `__call__` can be passed."""
        return self._backend.decode([int(i) for i in ids])

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Tokenizes like `tokenizer(texts, padding="max_length", max_length=L, truncation=True)`.

        Returns:
          int32 array [N, context_length]: the leading specials (if any), the text's ids, the
          eos, then pad ids; too long texts are cut so that the eos stays last.
        """
        texts = self._texts(texts)
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int32)
        if texts:
            rows = self._backend.model_inputs(texts, self.context_length)
            out[:] = np.asarray(rows, dtype=np.int32)
        return out

    def eot_positions(self, ids: np.ndarray) -> np.ndarray:
        """Index of the first eos in every row of `ids` ([N, L]) as int32 [N].

        The first one matters: SigLIP v1 pads with the eos id itself.

        Raises:
          ValueError: `ids` is not 2-D or a row contains no eos.
        """
        return first_positions(ids, self.eot_id, "end-of-sequence token")


# ----------------------------------------------------------------------------- tiny vocabularies

_GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # ids 0..4, as in Gemma
_BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))


def _added_token_entry(content: str, strip: bool) -> dict[str, Any]:
    return {"content": content, "lstrip": strip, "normalized": False, "rstrip": strip, "single_word": False,
            "special": True}


def _write_json(path: pathlib.Path, value: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _write_tokenizer_json(out: pathlib.Path, corpus: list[str], vocab_size: int) -> None:
    """A Gemma-style BPE (as SigLIP 2 ships): byte fallback, "▁" for spaces, eos appended."""
    base = len(_GEMMA_SPECIALS) + len(_BYTE_TOKENS)
    if vocab_size <= base:
        raise ValueError(f"vocab_size must be > {base} (5 specials + 256 byte tokens), got {vocab_size}")
    models, normalizers, pre_tokenizers = tokenizers.models, tokenizers.normalizers, tokenizers.pre_tokenizers
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", SPIECE_UNDERLINE)
    # Words start at "▁", so no merge crosses a word boundary. Gemma's own file has no
    # pre-tokeniser (BPE runs on the whole text, as transformers' GemmaTokenizer rebuilds it),
    # which gives the same ids with such merges; splitting lets BPE cache words (much faster).
    tok.pre_tokenizer = pre_tokenizers.Split(SPIECE_UNDERLINE, behavior="merged_with_next")
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[*_GEMMA_SPECIALS, *_BYTE_TOKENS], show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the corpus supports only {tok.get_vocab_size()} tokens, vocab_size={vocab_size} requested; "
            "use a larger corpus or a smaller vocab_size"
        )
    eos_id = tok.token_to_id("<eos>")
    tok.decoder = tokenizers.decoders.Sequence(
        [tokenizers.decoders.Replace(SPIECE_UNDERLINE, " "), tokenizers.decoders.ByteFallback(),
         tokenizers.decoders.Fuse()])
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="$A:0 <eos>:0", pair="$A:0 <eos>:0 $B:1 <eos>:1", special_tokens=[("<eos>", eos_id)])
    data = json.loads(tok.to_str())
    # The byte tokens were passed as "special" only to reserve their ids; like Gemma's file,
    # keep them out of the added tokens (which would match "<0x41>" typed in a text).
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in _GEMMA_SPECIALS]
    with open(out / TOKENIZER_JSON, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
                "mask_token": "<mask>"}
    _write_json(out / SPECIAL_TOKENS_MAP, specials)
    _write_json(out / TOKENIZER_CONFIG, {
        # What transformers' SigLIP 2 conversion saves: Gemma's tokenizer, no bos, eos, right padding.
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": False,
        "add_eos_token": True,
        "padding_side": "right",
        "model_max_length": 64,
        "model_input_names": ["input_ids"],
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(i): _added_token_entry(t, False) for i, t in enumerate(_GEMMA_SPECIALS)},
        **specials,
    })


def _write_spiece(out: pathlib.Path, corpus: list[str], vocab_size: int) -> None:
    """A T5-style unigram SentencePiece model with SigLIP v1's ids: <pad> 0, </s> 1, <unk> 2."""
    spm = _import_sentencepiece()
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size, model_type="unigram",
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
            # One thread and no sampling or shuffling: the same corpus gives the same bytes.
            num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(f"cannot train a {vocab_size}-piece SentencePiece model on this corpus: {e}") from e
    (out / SPIECE_MODEL).write_bytes(model.getvalue())
    eos = _added_token_entry("</s>", True)
    unk = _added_token_entry("<unk>", True)
    no_special = {k: v for k, v in eos.items() if k != "special"}
    _write_json(out / SPECIAL_TOKENS_MAP, {
        "eos_token": no_special, "pad_token": no_special, "unk_token": {k: v for k, v in unk.items() if k != "special"},
    })
    # As on the hub for google/siglip-base-patch16-224.
    _write_json(out / TOKENIZER_CONFIG, {
        "added_tokens_decoder": {"1": eos, "2": unk},
        "additional_special_tokens": [],
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": "</s>",
        "model_input_names": ["input_ids"],
        "model_max_length": 64,
        "pad_token": "</s>",
        "processor_class": "SiglipProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "SiglipTokenizer",
        "unk_token": "<unk>",
    })


def write_tiny_siglip_tokenizer(directory: str | os.PathLike[str], corpus: Iterable[str], vocab_size: int,
                                layout: str) -> None:
    """Learns a small SigLIP-style vocabulary on `corpus` and writes it to `directory`.

    Deterministic (the same corpus gives the same files) and fast (well under a second for a
    few thousand sentences). Both layouts load with `SiglipTokenizer.from_dir` and with
    transformers (`AutoTokenizer.from_pretrained`).

    Args:
      directory: created if missing; existing tokenizer files are overwritten.
      corpus: training texts.
      vocab_size: exact number of ids of the result.
      layout: "tokenizer.json" (SigLIP 2 style: Gemma-like byte-fallback BPE, case-sensitive,
        `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, `<mask>` 4, eos appended by the
        post-processor; tokenizer_class GemmaTokenizer) or "spiece.model" (SigLIP v1 style:
        unigram SentencePiece, `<pad>` 0, `</s>` 1 = eos = pad token, `<unk>` 2;
        tokenizer_class SiglipTokenizer, do_lower_case).

    Raises:
      ValueError: unknown layout, or the corpus is too small for `vocab_size`.
      ImportError: layout "spiece.model" without sentencepiece installed.
    """
    if layout not in (TOKENIZER_JSON, SPIECE_MODEL):
        raise ValueError(f"layout must be {TOKENIZER_JSON!r} or {SPIECE_MODEL!r}, got {layout!r}")
    texts = [t for t in corpus if t]
    if not texts:
        raise ValueError("corpus is empty")
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if layout == TOKENIZER_JSON:
        _write_tokenizer_json(out, texts, vocab_size)
    else:
        _write_spiece(out, texts, vocab_size)
