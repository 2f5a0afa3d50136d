"""Tests for aape_jax.clip.siglip_tokenizer: ids must equal transformers' for SigLIP checkpoints.

The reference is what SigLIP users run, `tokenizer(texts, padding="max_length", max_length=64,
truncation=True)["input_ids"]`, with the tokenizer transformers v5 loads from the same files:
`SiglipTokenizer` (slow, sentencepiece) for spiece.model, `AutoTokenizer` (here
GemmaTokenizer, as for SigLIP 2) and `PreTrainedTokenizerFast` for tokenizer.json.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import numpy as np
import pytest

from aape_jax.clip.siglip_tokenizer import (
    SPIECE_MODEL,
    TOKENIZER_JSON,
    SiglipTokenizer,
    canonicalize_text,
    write_tiny_siglip_tokenizer,
)

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

CONTEXT = 64
VOCAB = 1000
LAYOUTS = (SPIECE_MODEL, TOKENIZER_JSON)

# Self-contained corpus (no ../shared/data needed) for the API and error tests.
_ADJ = ["small", "large", "red", "blue", "green", "old", "young", "bright", "dark", "furry", "striped", "wooden",
        "shiny", "tiny", "huge", "yellow", "purple", "spotted", "fluffy", "rusty", "golden", "silver", "quiet", "noisy"]
_NOUN = ["dog", "cat", "bird", "car", "flower", "house", "tree", "boat", "horse", "chair", "lamp", "river",
         "mountain", "bicycle", "guitar", "kitchen", "bridge", "castle", "rabbit", "turtle", "pizza", "window",
         "garden", "train"]
_TEMPLATE = ["a photo of a {} {}.", "A blurry photo of the {} {}!", "there is a {} {} in the picture",
             "Itap of my {} {}, taken yesterday.", "a close-up photo of a {} {}?"]
SYNTHETIC_CORPUS = [t.format(a, n) for t in _TEMPLATE for a in _ADJ for n in _NOUN]
SYNTHETIC_VOCAB = {SPIECE_MODEL: 90, TOKENIZER_JSON: 500}  # near what this corpus supports

HAND_CASES = [
    "a photo of a dog.",
    "A Photo Of A DOG!",
    "Hello,   World!!  ",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n here",
    "",
    " ",
    "!!!",
    "punctuation: !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ end",
    "don't stop-believing (1990s) #1 @home",
    "café, crème brûlée, naïve, Ångström, straße, İstanbul, ØÆÅ",
    "日本語のテキスト and 中文 and русский текст",
    "emoji 🐶🐱, ½ cup, ﬁne ligature, ＦＵＬＬＷＩＤＴＨ",
    "non\u00a0breaking\u2003em space\u200bzero width",
    "▁underline▁marker ▁ ▁▁",
    "</s>",
    "a dog</s>",
    "</s> hello",
    "a </s> b </s>",
    "x <eos> y <pad> z <bos>",
    "<unk> token and <UNK>",
    "</S> upper-case eos",
    "12345 3.14159 2026-12-02",
    "a photo of a dog. " * 40,
    "x" * 500,
    " ".join("abcdefghijklmnopqrstuvwxyz") * 4,
]


def _reference(directory: pathlib.Path, kind: str = "auto"):
    if kind == "fast":
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(directory))
    if kind == "slow":
        return transformers.SiglipTokenizer.from_pretrained(str(directory))
    return transformers.AutoTokenizer.from_pretrained(str(directory))


def _ref_ids(ref, texts: list[str]) -> np.ndarray:
    return np.asarray(ref(texts, padding="max_length", max_length=CONTEXT, truncation=True)["input_ids"])


def _assert_same(ours: np.ndarray, expected: np.ndarray, texts: list[str]) -> None:
    assert ours.dtype == np.int32 and ours.shape == (len(texts), CONTEXT)
    bad = np.flatnonzero((ours != expected).any(axis=1))
    assert bad.size == 0, [(texts[i][:60], ours[i].tolist(), expected[i].tolist()) for i in bad[:3]]


@pytest.fixture(scope="session")
def cupl_dirs(cupl_texts: list[str], tmp_path_factory) -> dict[str, pathlib.Path]:
    """A 1000-id vocabulary per layout, learned on the first 3000 CuPL texts (so the rest has rare pieces)."""
    dirs = {}
    for layout in LAYOUTS:
        d = tmp_path_factory.mktemp("cupl_" + layout.replace(".", "_"))
        write_tiny_siglip_tokenizer(d, cupl_texts[:3000], VOCAB, layout)
        dirs[layout] = d
    return dirs


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, pathlib.Path]:
    dirs = {}
    for layout in LAYOUTS:
        d = tmp_path_factory.mktemp("tiny_" + layout.replace(".", "_"))
        write_tiny_siglip_tokenizer(d, SYNTHETIC_CORPUS, SYNTHETIC_VOCAB[layout], layout)
        dirs[layout] = d
    return dirs


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: pathlib.Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


# ------------------------------------------------------------- equality with transformers


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_transformers_on_all_cupl_sentences(layout, cupl_dirs, cupl_texts) -> None:
    d = cupl_dirs[layout]
    tok = SiglipTokenizer.from_dir(d, CONTEXT, vocab_size=VOCAB)
    # For tokenizer.json the file as is (fast: BPE per word); AutoTokenizer's GemmaTokenizer,
    # which runs BPE on whole texts (several times slower), is compared on the hand cases.
    ref = _reference(d, "slow" if layout == SPIECE_MODEL else "fast")
    _assert_same(tok(cupl_texts), _ref_ids(ref, cupl_texts), cupl_texts)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_transformers_on_hand_cases(layout, cupl_dirs) -> None:
    d = cupl_dirs[layout]
    tok = SiglipTokenizer.from_dir(d, CONTEXT)
    refs = [_reference(d)] + ([_reference(d, "fast")] if layout == TOKENIZER_JSON else [])
    # The classes transformers v5 picks for SigLIP v1 and (FixRes) SigLIP 2 checkpoints.
    assert type(refs[0]).__name__ == {SPIECE_MODEL: "SiglipTokenizer", TOKENIZER_JSON: "GemmaTokenizer"}[layout]
    ours = tok(HAND_CASES)
    for ref in refs:
        _assert_same(ours, _ref_ids(ref, HAND_CASES), HAND_CASES)
        for text in HAND_CASES:  # encode(): no special tokens, no truncation
            assert tok.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text


def test_spiece_canonicalizes_like_siglip(cupl_dirs) -> None:
    tok = SiglipTokenizer.from_dir(cupl_dirs[SPIECE_MODEL], CONTEXT)
    assert canonicalize_text("  A Photo,\tof   a DOG!! ") == "a photo of a dog"
    np.testing.assert_array_equal(tok("  A Photo,\tof   a DOG!! "), tok("a photo of a dog"))


def test_tokenizer_json_is_case_sensitive_like_gemma(cupl_dirs) -> None:
    # transformers' GemmaTokenizer (FixRes SigLIP 2 checkpoints) does not lower-case.
    tok = SiglipTokenizer.from_dir(cupl_dirs[TOKENIZER_JSON], CONTEXT)
    assert tok.encode("A Dog") != tok.encode("a dog")


@pytest.mark.parametrize("how", ["tokenizer_class", "model_type"])
def test_siglip2_tokenizer_lower_cases_like_transformers(how, cupl_dirs, tmp_path) -> None:
    d = _copy(cupl_dirs[TOKENIZER_JSON], tmp_path / "s2")
    if how == "tokenizer_class":
        _edit_json(d / "tokenizer_config.json", tokenizer_class="Siglip2Tokenizer")
    else:  # transformers maps model_type siglip2 to Siglip2Tokenizer whatever the hub class says
        (d / "config.json").write_text(json.dumps({"model_type": "siglip2"}), encoding="utf-8")
    ref = _reference(d)
    assert type(ref).__name__ == "Siglip2Tokenizer"
    tok = SiglipTokenizer.from_dir(d, CONTEXT)
    _assert_same(tok(HAND_CASES), _ref_ids(ref, HAND_CASES), HAND_CASES)
    assert tok.encode("A Dog") == tok.encode("a dog")


def test_model_type_siglip_keeps_gemma_case(cupl_dirs, tmp_path) -> None:
    d = _copy(cupl_dirs[TOKENIZER_JSON], tmp_path / "s1")
    (d / "config.json").write_text(json.dumps({"model_type": "siglip"}), encoding="utf-8")
    ref = _reference(d)
    assert type(ref).__name__ == "GemmaTokenizer"
    tok = SiglipTokenizer.from_dir(d, CONTEXT)
    _assert_same(tok(HAND_CASES), _ref_ids(ref, HAND_CASES), HAND_CASES)


def test_leading_special_token_sets_text_start(tiny_dirs, tmp_path) -> None:
    import tokenizers

    d = _copy(tiny_dirs[TOKENIZER_JSON], tmp_path / "bos")
    backend = tokenizers.Tokenizer.from_file(str(d / TOKENIZER_JSON))
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)])
    backend.save(str(d / TOKENIZER_JSON))
    tok = SiglipTokenizer.from_dir(d, CONTEXT)
    assert (tok.text_start, tok.sot_id, tok.eot_id) == (1, 2, 1)
    ids = tok(HAND_CASES)
    assert (ids[:, 0] == 2).all()
    _assert_same(ids, _ref_ids(_reference(d, "fast"), HAND_CASES), HAND_CASES)


def test_legacy_special_tokens_map_strings(tiny_dirs, tmp_path) -> None:
    # A config without added_tokens_decoder: transformers v5 takes special_tokens_map.json's
    # values (plain strings here), which SiglipTokenizer wraps with lstrip/rstrip.
    d = _copy(tiny_dirs[SPIECE_MODEL], tmp_path / "legacy")
    _edit_json(d / "tokenizer_config.json", added_tokens_decoder=None)
    (d / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}), encoding="utf-8")
    tok = SiglipTokenizer.from_dir(d, CONTEXT)
    _assert_same(tok(HAND_CASES), _ref_ids(_reference(d, "slow"), HAND_CASES), HAND_CASES)


def test_do_lower_case_false(tiny_dirs, tmp_path) -> None:
    d = _copy(tiny_dirs[SPIECE_MODEL], tmp_path / "cased")
    _edit_json(d / "tokenizer_config.json", do_lower_case=False)
    tok = SiglipTokenizer.from_dir(d, CONTEXT)
    _assert_same(tok(HAND_CASES), _ref_ids(_reference(d, "slow"), HAND_CASES), HAND_CASES)
    assert tok.encode("A DOG") != tok.encode("a dog")


def test_spiece_preferred_when_config_names_siglip_tokenizer(tiny_dirs, tmp_path) -> None:
    d = _copy(tiny_dirs[SPIECE_MODEL], tmp_path / "both")
    shutil.copy(tiny_dirs[TOKENIZER_JSON] / TOKENIZER_JSON, d / TOKENIZER_JSON)
    tok = SiglipTokenizer.from_dir(d, CONTEXT)
    assert tok.source.endswith(SPIECE_MODEL)
    _assert_same(tok(HAND_CASES), _ref_ids(_reference(d), HAND_CASES), HAND_CASES)


# ------------------------------------------------------------- API


@pytest.mark.parametrize("layout", LAYOUTS)
def test_attributes(layout, tiny_dirs) -> None:
    tok = SiglipTokenizer.from_dir(tiny_dirs[layout], CONTEXT, vocab_size=SYNTHETIC_VOCAB[layout])
    assert tok.vocab_size == SYNTHETIC_VOCAB[layout]
    assert tok.context_length == CONTEXT
    assert (tok.text_start, tok.sot_id) == (0, None)
    if layout == SPIECE_MODEL:  # SigLIP v1: </s> 1 is both eos and pad
        assert (tok.eot_id, tok.pad_id) == (1, 1)
    else:  # SigLIP 2 (Gemma): <eos> 1, <pad> 0
        assert (tok.eot_id, tok.pad_id) == (1, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rows_truncation_and_eot_positions(layout, tiny_dirs) -> None:
    tok = SiglipTokenizer.from_dir(tiny_dirs[layout], CONTEXT)
    texts = ["a photo of a dog", "", "a photo of a red dog. " * 30]
    ids = tok(texts)
    assert ids.dtype == np.int32 and ids.shape == (3, CONTEXT)
    n = len(tok.encode(texts[0]))
    assert ids[0, :n].tolist() == tok.encode(texts[0])
    assert ids[0, n] == tok.eot_id and (ids[0, n + 1:] == tok.pad_id).all()
    assert ids[1, 0] == tok.eot_id and (ids[1, 1:] == tok.pad_id).all()
    long = tok.encode(texts[2])
    assert len(long) > CONTEXT
    assert ids[2, :-1].tolist() == long[: CONTEXT - 1] and ids[2, -1] == tok.eot_id
    # The first eos, although SigLIP v1 pads with the same id.
    np.testing.assert_array_equal(tok.eot_positions(ids), [n, 0, CONTEXT - 1])
    assert tok.eot_positions(ids).dtype == np.int32
    assert tok("a photo of a dog").shape == (1, CONTEXT)
    assert tok([]).shape == (0, CONTEXT)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eot_positions_errors(layout, tiny_dirs) -> None:
    tok = SiglipTokenizer.from_dir(tiny_dirs[layout], CONTEXT)
    ids = tok(["a dog", "a cat", "a bird"])
    ids[2] = tok.encode("a bird")[0]
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        tok.eot_positions(ids)
    with pytest.raises(ValueError, match="shape"):
        tok.eot_positions(ids[0])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_decode_round_trip(layout, tiny_dirs) -> None:
    tok = SiglipTokenizer.from_dir(tiny_dirs[layout], CONTEXT)
    for text in ["a photo of a dog", "there is a small wooden boat in the picture"]:
        assert tok.decode(tok(text)[0]) == text
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fixture_is_deterministic(layout, tmp_path) -> None:
    for name in ("a", "b"):
        write_tiny_siglip_tokenizer(tmp_path / name, SYNTHETIC_CORPUS, SYNTHETIC_VOCAB[layout], layout)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert layout in files and "tokenizer_config.json" in files and "special_tokens_map.json" in files
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


# ------------------------------------------------------------- errors


def test_no_tokenizer_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*spiece\.model") as e:
        SiglipTokenizer.from_dir(tmp_path, CONTEXT)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        SiglipTokenizer.from_dir(tmp_path / "missing", CONTEXT)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vocab_size_mismatch(layout, tiny_dirs) -> None:
    size = SYNTHETIC_VOCAB[layout]
    with pytest.raises(ValueError, match=rf"{layout.replace('.', r'[.]')}.*{size}.*vocab_size=32000"):
        SiglipTokenizer.from_dir(tiny_dirs[layout], CONTEXT, vocab_size=32000)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_malformed_files(layout, tiny_dirs, tmp_path) -> None:
    d = _copy(tiny_dirs[layout], tmp_path / "bad_model")
    (d / layout).write_bytes(b"\x00 not a tokenizer {")
    with pytest.raises(ValueError, match=layout.replace(".", r"\.")):
        SiglipTokenizer.from_dir(d, CONTEXT)
    d = _copy(tiny_dirs[layout], tmp_path / "bad_config")
    (d / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json"):
        SiglipTokenizer.from_dir(d, CONTEXT)


def test_post_processor_without_eos_is_refused(tiny_dirs, tmp_path) -> None:
    import tokenizers

    d = _copy(tiny_dirs[TOKENIZER_JSON], tmp_path / "no_eos")
    backend = tokenizers.Tokenizer.from_file(str(d / TOKENIZER_JSON))
    backend.post_processor = tokenizers.processors.TemplateProcessing(single="$A", special_tokens=[])
    backend.save(str(d / TOKENIZER_JSON))
    # transformers v5 appends no eos then, add_eos_token=true in tokenizer_config.json notwithstanding.
    assert 1 not in _reference(d, "fast")("a dog", padding="max_length", max_length=8)["input_ids"]
    with pytest.raises(ValueError, match=r"post-processor.*appends no token.*'<eos>'"):
        SiglipTokenizer.from_dir(d, CONTEXT)


def test_eos_token_other_than_the_post_processors(tiny_dirs, tmp_path) -> None:
    d = _copy(tiny_dirs[TOKENIZER_JSON], tmp_path / "eos")
    # transformers would add "<end>" as a new special token (id 500) and still append "<eos>".
    _edit_json(d / "tokenizer_config.json", eos_token="<end>")
    with pytest.raises(ValueError, match=r"appends \['<eos>'\].*'<end>' \(id 500\)"):
        SiglipTokenizer.from_dir(d, CONTEXT)
    d = _copy(tiny_dirs[SPIECE_MODEL], tmp_path / "eos_spiece")
    _edit_json(d / "tokenizer_config.json", eos_token="<end>", added_tokens_decoder=None)
    (d / "special_tokens_map.json").unlink()
    with pytest.raises(ValueError, match=r"'<end>' is not a piece of .*spiece\.model"):
        SiglipTokenizer.from_dir(d, CONTEXT)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_left_padding_is_refused(layout, tiny_dirs, tmp_path) -> None:
    d = _copy(tiny_dirs[layout], tmp_path / "left")
    _edit_json(d / "tokenizer_config.json", padding_side="left")
    with pytest.raises(ValueError, match="padding_side='left'"):
        SiglipTokenizer.from_dir(d, CONTEXT)


def test_missing_sentencepiece(tiny_dirs, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # makes `import sentencepiece` fail
    with pytest.raises(ImportError, match="pip install sentencepiece"):
        SiglipTokenizer.from_dir(tiny_dirs[SPIECE_MODEL], CONTEXT)
    with pytest.raises(ImportError, match="pip install sentencepiece"):
        write_tiny_siglip_tokenizer(tiny_dirs[SPIECE_MODEL].parent / "x", SYNTHETIC_CORPUS, 90, SPIECE_MODEL)


def test_fixture_argument_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="layout"):
        write_tiny_siglip_tokenizer(tmp_path, SYNTHETIC_CORPUS, 300, "vocab.json")
    for layout in LAYOUTS:
        with pytest.raises(ValueError, match="vocab_size|corpus"):
            write_tiny_siglip_tokenizer(tmp_path / layout, SYNTHETIC_CORPUS[:5], 5000, layout)
