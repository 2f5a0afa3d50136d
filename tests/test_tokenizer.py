"""Tests for aape_jax.clip.tokenizer: ids must equal OpenAI's clip.tokenize(truncate=True)."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from aape_jax.clip.tokenizer import (
    Tokenizer,
    clean_text,
    read_vocab_and_merges,
    write_byte_level_vocab,
    write_tokenizer_json,
)

try:  # run as `python -m pytest` from the repo root (tests is then a namespace package)
    from tests.reference import openai_simple_tokenizer as openai_ref
except ImportError:  # plain `pytest`: rootdir-relative test dir is on sys.path instead
    from reference import openai_simple_tokenizer as openai_ref  # type: ignore[no-redef]

CONTEXT = 77
OPENAI_VOCAB_SIZE = 49408

# A small self-contained corpus so that the vocabulary-learning and error tests run
# without ../shared/data.
TINY_CORPUS = [
    "a photo of a dog.",
    "a photo of a cat.",
    "a photo of the small bird sitting on a branch.",
    "a photo of a large brown bear in the forest.",
    "a blurry photo of a red car parked on the street.",
    "a close-up photo of a yellow flower with green leaves.",
    "the dog is running across the grass in the park.",
    "the cat is sleeping on the warm windowsill.",
    "there are three birds flying over the lake at sunset.",
    "a painting of a mountain covered with snow and ice.",
    "an aircraft is parked at the airport near the terminal.",
    "a texture that is striped, dotted, woven or cracked.",
    "a bowl of pasta with tomato sauce and fresh basil.",
    "the flowers of this plant are purple and white petals.",
    "it's a photo of the pet's favourite toy; they're playing.",
    "scene of a crowded market with fruit and vegetables.",
] * 3


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clip_dir(shared_data: pathlib.Path) -> pathlib.Path:
    path = shared_data / "clip_tokenizer"
    if not (path / "merges.txt").is_file():
        pytest.skip(f"CLIP tokenizer files not found in {path}")
    return path


@pytest.fixture(scope="module")
def tok(clip_dir: pathlib.Path) -> Tokenizer:
    return Tokenizer.from_dir(clip_dir, CONTEXT, OPENAI_VOCAB_SIZE)


@pytest.fixture(scope="module")
def ref(clip_dir: pathlib.Path) -> openai_ref.SimpleTokenizer:
    return openai_ref.SimpleTokenizer(str(clip_dir / "merges.txt"))


def ref_tokenize(ref: openai_ref.SimpleTokenizer, texts: list[str] | str) -> np.ndarray:
    return openai_ref.tokenize(texts, context_length=CONTEXT, truncate=True, tokenizer=ref)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("tiny_vocab")
    write_byte_level_vocab(path, TINY_CORPUS, 700)
    return path


# ------------------------------------------------------------- equality with OpenAI


def test_matches_openai_on_all_cupl_sentences(
    tok: Tokenizer, ref: openai_ref.SimpleTokenizer, cupl_texts: list[str]
) -> None:
    texts = cupl_texts
    ours = tok(texts)
    expected = ref_tokenize(ref, texts)
    assert ours.dtype == np.int32 and ours.shape == (len(texts), CONTEXT)
    mismatched = np.flatnonzero((ours != expected).any(axis=1))
    assert mismatched.size == 0, [texts[i] for i in mismatched[:5]]


HAND_CASES = [
    "a photo of a dog.",
    "Fish &amp; chips",
    "Fish &amp;amp; chips",  # doubly escaped: ftfy unescapes once when there is no '<'
    "<b>Fish &amp;amp; chips</b>",  # with '<' ftfy leaves entities: both unescapes needed
    "&lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;single&#39;",
    "cafÃ© crÃ¨me",  # UTF-8 read as Latin-1; ftfy repairs it
    "Ã©tÃ© Ã  la plage",
    "café, crème brûlée, naïve, Ångström, straße, İstanbul, ØÆÅ",
    "日本語のテキスト and 中文 and русский текст",
    "emoji 😀🐶🏳️‍🌈 and symbols ™ © ° ±",
    "   lots \t of\n\n  extra   whitespace   ",
    "A PHOTO OF A BIG DOG",
    "It's the dog's toy; they're here, we've been, I'm sure, you'll see, he'd go, don't",
    "ＦＵＬＬＷＩＤＴＨ ﬁne “curly quotes” — dashes",
    "in 1999 there were 42 cats and 3.14159 pies; 100,000 or 1e-5",
    "",
    "   ",
    "<|endoftext|> inside <|startoftext|> the TEXT <|ENDOFTEXT|>",
    "a" * 300,
    "a very long caption " * 40,
    "x",
    "!!!???...",
]


def test_hand_cases_match_openai(tok: Tokenizer, ref: openai_ref.SimpleTokenizer) -> None:
    ours = tok(HAND_CASES)
    expected = ref_tokenize(ref, HAND_CASES)
    for text, a, b in zip(HAND_CASES, ours, expected):
        np.testing.assert_array_equal(a, b, err_msg=repr(text))
    for text in HAND_CASES:
        assert tok.encode(text) == ref.encode(text), repr(text)


def test_known_ids(tok: Tokenizer) -> None:
    # Well-known ids of OpenAI CLIP's vocabulary.
    assert (tok.vocab_size, tok.sot_id, tok.eot_id, tok.pad_id) == (49408, 49406, 49407, 0)
    row = tok("a photo of a dog.")[0]
    np.testing.assert_array_equal(row[:8], [49406, 320, 1125, 539, 320, 1929, 269, 49407])
    assert not row[8:].any()


def test_text_cleaning(tok: Tokenizer, ref: openai_ref.SimpleTokenizer) -> None:
    enc = tok.encode
    assert enc("Fish &amp; chips") == enc("fish & chips")
    assert enc("Fish &amp;amp; chips") == enc("fish & chips")
    assert enc("<b>Fish &amp;amp; chips</b>") == enc("<b>fish & chips</b>")
    assert enc("cafÃ© crÃ¨me") == enc("café crème")
    assert enc("   lots \t of\n\n  extra   whitespace   ") == enc("lots of extra whitespace")
    assert enc("A PHOTO OF A BIG DOG") == enc("a photo of a big dog")
    # Apostrophe suffixes are separate pre-tokens.
    assert enc("the dog's toy") == enc("the dog") + [ref.encoder["'s</w>"]] + enc("toy")
    assert ref.encoder["'re</w>"] in enc("they're")
    # Numbers are split into single digits.
    assert enc("2024") == [ref.encoder[d + "</w>"] for d in "2024"]
    # Accents and emoji survive as byte-level tokens (and decode back).
    assert tok.decode(enc("crème brûlée 😀")) == "crème brûlée 😀"
    # Specials written in the text become the special ids (OpenAI's BPE cache does that).
    assert enc("<|endoftext|>") == [tok.eot_id]


def test_empty_and_padding(tok: Tokenizer) -> None:
    assert tok.encode("") == []
    out = tok(["", "dog"])
    np.testing.assert_array_equal(out[0, :2], [tok.sot_id, tok.eot_id])
    assert not out[0, 2:].any()
    np.testing.assert_array_equal(out[1, :3], [tok.sot_id, *tok.encode("dog"), tok.eot_id][:3])
    assert tok("dog").shape == (1, CONTEXT)
    assert tok([]).shape == (0, CONTEXT)


def test_truncation_keeps_eot_last(tok: Tokenizer) -> None:
    text = " ".join(f"word{i}" for i in range(100))
    ids = tok.encode(text)
    assert len(ids) > CONTEXT
    row = tok(text)[0]
    assert row[0] == tok.sot_id and row[-1] == tok.eot_id
    np.testing.assert_array_equal(row[1:-1], ids[: CONTEXT - 2])
    assert (row == tok.eot_id).sum() == 1
    # Exactly fitting: CONTEXT - 2 ids need no truncation.
    fit = " ".join(["dog"] * (CONTEXT - 2))
    dog = tok.encode("dog")[0]
    np.testing.assert_array_equal(tok(fit)[0], [tok.sot_id] + [dog] * (CONTEXT - 2) + [tok.eot_id])


def test_eot_positions(tok: Tokenizer) -> None:
    texts = ["", "a photo of a dog.", "word " * 200]
    ids = tok(texts)
    pos = tok.eot_positions(ids)
    assert pos.dtype == np.int32
    np.testing.assert_array_equal(pos, [1, 1 + len(tok.encode(texts[1])), CONTEXT - 1])
    # Also for jax-like / list inputs.
    np.testing.assert_array_equal(tok.eot_positions(ids.tolist()), pos)
    with pytest.raises(ValueError, match="no EOT"):
        tok.eot_positions(np.zeros((2, CONTEXT), np.int32))
    with pytest.raises(ValueError, match="shape"):
        tok.eot_positions(ids[0])


def test_shared_vocab_json_matches_merges(
    clip_dir: pathlib.Path, ref: openai_ref.SimpleTokenizer
) -> None:
    with open(clip_dir / "vocab.json", encoding="utf-8") as f:
        vocab = json.load(f)
    assert len(vocab) == OPENAI_VOCAB_SIZE
    assert vocab == ref.encoder


# --------------------------------------------------------------------------- errors


def _copy_tiny(tiny_dir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    dst = tmp_path / "tok"
    shutil.copytree(tiny_dir, dst)
    return dst


def test_missing_directory_and_files(tiny_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        Tokenizer.from_dir(missing, CONTEXT)
    for name in ("vocab.json", "merges.txt"):
        d = _copy_tiny(tiny_dir, tmp_path / name)
        (d / name).unlink()
        (d / "tokenizer.json").unlink()
        with pytest.raises(FileNotFoundError, match=rf"missing: {name}\b"):
            Tokenizer.from_dir(d, CONTEXT)


def test_neither_layout_names_both_options(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "empty_ckpt"
    d.mkdir()
    (d / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileNotFoundError) as err:
        Tokenizer.from_dir(d, CONTEXT)
    message = str(err.value)
    for part in (str(d), "vocab.json + merges.txt", "or tokenizer.json", "missing: vocab.json, merges.txt"):
        assert part in message, message


def test_incomplete_pair_falls_back_to_tokenizer_json(tiny_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    full = Tokenizer.from_dir(tiny_dir, CONTEXT, 700)
    for name in ("vocab.json", "merges.txt"):
        d = _copy_tiny(tiny_dir, tmp_path / name)
        (d / name).unlink()
        tok = Tokenizer.from_dir(d, CONTEXT, 700)
        np.testing.assert_array_equal(tok(TINY_CORPUS[:16]), full(TINY_CORPUS[:16]))


def test_vocab_size_mismatch_names_both_sizes(tiny_dir: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"vocab\.json.*700.*49408"):
        Tokenizer.from_dir(tiny_dir, CONTEXT, vocab_size=OPENAI_VOCAB_SIZE)
    assert Tokenizer.from_dir(tiny_dir, CONTEXT, vocab_size=700).vocab_size == 700


def test_malformed_files(tiny_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    d = _copy_tiny(tiny_dir, tmp_path / "badline")
    lines = (d / "merges.txt").read_text(encoding="utf-8").splitlines()
    lines[5] = "a b c"
    (d / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt line 6"):
        Tokenizer.from_dir(d, CONTEXT)

    d = _copy_tiny(tiny_dir, tmp_path / "noheader")
    text = (d / "merges.txt").read_text(encoding="utf-8")
    (d / "merges.txt").write_text(text.split("\n", 1)[1], encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt.*#version"):
        Tokenizer.from_dir(d, CONTEXT)

    d = _copy_tiny(tiny_dir, tmp_path / "badjson")
    (d / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json"):
        Tokenizer.from_dir(d, CONTEXT)

    d = _copy_tiny(tiny_dir, tmp_path / "nospecial")
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    del vocab["<|startoftext|>"]
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(ValueError, match=r"startoftext"):
        Tokenizer.from_dir(d, CONTEXT)

    d = _copy_tiny(tiny_dir, tmp_path / "extramerge")
    with open(d / "merges.txt", "a", encoding="utf-8") as f:
        f.write("q z\n")  # "qz" is not in vocab.json
    with pytest.raises(ValueError, match=r"'qz'.*missing"):
        Tokenizer.from_dir(d, CONTEXT)

    with pytest.raises(ValueError, match="context_length"):
        Tokenizer.from_dir(tiny_dir, 1)


# --------------------------------------------------------------- vocabulary learning


def test_write_byte_level_vocab_layout(tiny_dir: pathlib.Path) -> None:
    vocab = json.loads((tiny_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = (tiny_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 700
    assert merges[0] == "#version: 0.2" and len(merges) - 1 == 700 - 514
    # OpenAI's layout: bytes, bytes + '</w>', merges, then the two specials.
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == 698 and vocab["<|endoftext|>"] == 699
    first, second = merges[1].split()
    assert vocab[first + second] == 512
    for name in ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        assert (tiny_dir / name).is_file()
    # tokenizer.json holds the same vocabulary and merges, in the same order.
    model = json.loads((tiny_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    assert model["type"] == "BPE" and model["end_of_word_suffix"] == "</w>"
    assert model["vocab"] == vocab
    assert [" ".join(m) for m in model["merges"]] == merges[1:]
    # The independent OpenAI reference builds the same encoder from merges.txt alone.
    assert openai_ref.SimpleTokenizer(str(tiny_dir / "merges.txt")).encoder == vocab


def test_write_byte_level_vocab_rejects_bad_sizes(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="514"):
        write_byte_level_vocab(tmp_path / "small", TINY_CORPUS, 513)
    with pytest.raises(ValueError, match="corpus"):
        write_byte_level_vocab(tmp_path / "big", ["ab ab ab"], 600)
    write_byte_level_vocab(tmp_path / "min", TINY_CORPUS, 514)
    assert Tokenizer.from_dir(tmp_path / "min", CONTEXT, 514).encode("ab") == [
        json.loads((tmp_path / "min" / "vocab.json").read_text())[s] for s in ("a", "b</w>")
    ]


def test_tiny_vocab_agrees_with_transformers(tiny_dir: pathlib.Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.CLIPTokenizer.from_pretrained(str(tiny_dir))
    assert len(hf) == 700  # guards the v5 "2-token vocabulary" failure mode
    tok = Tokenizer.from_dir(tiny_dir, CONTEXT, 700)
    sentences = [s for s in TINY_CORPUS[:16]] + [
        "a photo of a zebra standing near the river.",
        "unseen words like quixotic jazz and xylophones",
        "dogs cats birds 123 and 4567",
    ]
    for text in sentences:
        ours = tok.encode(text)
        theirs = hf(text)["input_ids"]
        assert theirs[0] == tok.sot_id and theirs[-1] == tok.eot_id
        assert ours == theirs[1:-1], text


def test_tiny_vocab_compresses_and_round_trips(tiny_dir: pathlib.Path) -> None:
    tok = Tokenizer.from_dir(tiny_dir, CONTEXT, 700)
    words = sorted({w for s in TINY_CORPUS for w in s.replace(".", " ").replace(",", " ").split()})
    n_tokens = sum(len(tok.encode(w)) for w in words)
    n_chars = sum(len(w) for w in words)
    assert n_tokens < n_chars
    assert len(tok.encode("a photo of a dog.")) < len("a photo of a dog.")
    # Decoding puts a space after every pre-token ("dog ."), so compare without spaces.
    for sentence in TINY_CORPUS[:16]:
        assert tok.decode(tok(sentence)[0]).replace(" ", "") == sentence.replace(" ", "")


# ------------------------------------------------- tokenizer.json (today's transformers)


def _json_only(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    """A tokenizer.json-only directory (what CLIPTokenizer.save_pretrained writes) from `src`."""
    vocab, merges = read_vocab_and_merges(src)
    write_tokenizer_json(dst, vocab, merges)
    assert not (dst / "vocab.json").exists() and not (dst / "merges.txt").exists()
    return dst


@pytest.fixture(scope="module")
def real_json_dir(clip_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return _json_only(clip_dir, tmp_path_factory.mktemp("real_tokenizer_json"))


@pytest.fixture(scope="module")
def tok_json(real_json_dir: pathlib.Path) -> Tokenizer:
    return Tokenizer.from_dir(real_json_dir, CONTEXT, OPENAI_VOCAB_SIZE)


def test_tokenizer_json_reads_the_same_vocabulary(
    clip_dir: pathlib.Path, real_json_dir: pathlib.Path, ref: openai_ref.SimpleTokenizer
) -> None:
    vocab, merges = read_vocab_and_merges(real_json_dir)
    assert (vocab, merges) == read_vocab_and_merges(clip_dir)
    assert vocab == ref.encoder
    assert merges[:3] == sorted(ref.bpe_ranks, key=ref.bpe_ranks.get)[:3]
    assert {p: r for r, p in enumerate(merges)} == ref.bpe_ranks


def test_tokenizer_json_matches_vocab_json_on_all_cupl_sentences(
    tok: Tokenizer, tok_json: Tokenizer, cupl_texts: list[str]
) -> None:
    ours, expected = tok_json(cupl_texts), tok(cupl_texts)
    mismatched = np.flatnonzero((ours != expected).any(axis=1))
    assert mismatched.size == 0, [cupl_texts[i] for i in mismatched[:5]]


def test_tokenizer_json_hand_cases_and_known_ids(
    tok: Tokenizer, tok_json: Tokenizer, ref: openai_ref.SimpleTokenizer
) -> None:
    assert (tok_json.vocab_size, tok_json.sot_id, tok_json.eot_id) == (49408, 49406, 49407)
    np.testing.assert_array_equal(tok_json(HAND_CASES), ref_tokenize(ref, HAND_CASES))
    for text in HAND_CASES:
        assert tok_json.encode(text) == tok.encode(text), repr(text)
    assert tok_json.decode(tok_json.encode("crème brûlée 😀")) == "crème brûlée 😀"


def test_tokenizer_json_legacy_string_merges(real_json_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """tokenizers < 0.20 stores merges as "a b" strings; both forms give the same merges."""
    data = json.loads((real_json_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert isinstance(data["model"]["merges"][0], list)  # what today's tokenizers writes
    data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    d = tmp_path / "legacy"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    assert read_vocab_and_merges(d) == read_vocab_and_merges(real_json_dir)
    assert Tokenizer.from_dir(d, CONTEXT, OPENAI_VOCAB_SIZE)("a photo of a dog.")[0, 6] == 269


def test_tokenizer_json_added_tokens(tiny_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    data = json.loads((tiny_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert [t["content"] for t in data["added_tokens"]] == ["<|startoftext|>", "<|endoftext|>"]
    # Specials only in added_tokens (not in model.vocab) still count.
    for special in ("<|startoftext|>", "<|endoftext|>"):
        del data["model"]["vocab"][special]
    d = tmp_path / "added"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    tok = Tokenizer.from_dir(d, CONTEXT, 700)
    assert (tok.sot_id, tok.eot_id) == (698, 699)
    np.testing.assert_array_equal(tok(TINY_CORPUS[:16]), Tokenizer.from_dir(tiny_dir, CONTEXT, 700)(TINY_CORPUS[:16]))


def _write_json_variant(tiny_dir: pathlib.Path, dst: pathlib.Path, edit) -> pathlib.Path:
    data = json.loads((tiny_dir / "tokenizer.json").read_text(encoding="utf-8"))
    edit(data)
    dst.mkdir(parents=True)
    (dst / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return dst


def test_malformed_tokenizer_json(tiny_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    d = tmp_path / "notjson"
    d.mkdir()
    (d / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"malformed .*tokenizer\.json: not valid UTF-8 JSON"):
        Tokenizer.from_dir(d, CONTEXT)
    (d / "tokenizer.json").write_bytes(b'{"model": "\xff"}')
    with pytest.raises(ValueError, match=r"tokenizer\.json: not valid UTF-8"):
        Tokenizer.from_dir(d, CONTEXT)
    (d / "tokenizer.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json: expected a JSON object with a 'model'"):
        Tokenizer.from_dir(d, CONTEXT)

    def set_model(key, value):
        def edit(data):
            data["model"][key] = value
        return edit

    cases = [
        ("nomodel", lambda data: data.pop("model"), r"tokenizer\.json: expected a JSON object with a 'model'"),
        ("wordpiece", set_model("type", "WordPiece"), r"tokenizer\.json: model type is 'WordPiece', CLIP needs 'BPE'"),
        ("unigram", lambda data: data.update(model={"type": "Unigram", "vocab": [["a", 0.0]]}),
         r"tokenizer\.json: model type is 'Unigram'"),
        ("nosuffix", set_model("end_of_word_suffix", None), r"tokenizer\.json: not CLIP's BPE.*end_of_word_suffix=None"),
        ("prefix", set_model("continuing_subword_prefix", "##"), r"tokenizer\.json: not CLIP's BPE.*'##'"),
        ("vocablist", set_model("vocab", [["a", 0]]), r"tokenizer\.json: model\.vocab must be"),
        ("vocabstr", lambda data: data["model"]["vocab"].update(a="0"), r"tokenizer\.json: model\.vocab must be"),
        ("mergesdict", set_model("merges", {"a": "b"}), r"tokenizer\.json: model\.merges must be a list"),
        ("triple", lambda data: data["model"]["merges"].__setitem__(4, "a b c"),
         r"tokenizer\.json: model\.merges\[4\] must be .*'a b c'"),
        ("single", lambda data: data["model"]["merges"].__setitem__(4, ["ab"]),
         r"tokenizer\.json: model\.merges\[4\] must be .*\['ab'\]"),
        ("ints", lambda data: data["model"]["merges"].__setitem__(4, [1, 2]), r"tokenizer\.json: model\.merges\[4\]"),
        ("emptypart", lambda data: data["model"]["merges"].__setitem__(4, "a "), r"tokenizer\.json: model\.merges\[4\]"),
        ("addedid", lambda data: data["added_tokens"][1].update(id=5),
         r"tokenizer\.json: added token '<\|endoftext\|>' has id 5 but model\.vocab gives 699"),
        ("addedbad", lambda data: data["added_tokens"].append({"id": 700}), r"tokenizer\.json: added_tokens\[2\]"),
    ]
    for name, edit, pattern in cases:
        d = _write_json_variant(tiny_dir, tmp_path / name, edit)
        with pytest.raises(ValueError, match=pattern):
            Tokenizer.from_dir(d, CONTEXT)

    # The consistency checks and the size check apply as for vocab.json + merges.txt.
    d = _write_json_variant(tiny_dir, tmp_path / "extramerge", lambda data: data["model"]["merges"].append(["q", "z"]))
    with pytest.raises(ValueError, match=r"inconsistent .*'qz'.*missing"):
        Tokenizer.from_dir(d, CONTEXT)
    d = _write_json_variant(tiny_dir, tmp_path / "nobyte", lambda data: data["model"]["vocab"].pop("a</w>"))
    with pytest.raises(ValueError, match=r"ids must be exactly|'a</w>' is missing"):
        Tokenizer.from_dir(d, CONTEXT)
    d = _json_only(tiny_dir, tmp_path / "size")
    with pytest.raises(ValueError, match=r"tokenizer\.json has 700 entries.*49408"):
        Tokenizer.from_dir(d, CONTEXT, vocab_size=OPENAI_VOCAB_SIZE)


def test_tiny_writer_tokenizer_json_equals_transformers(tiny_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Our tokenizer.json is the one transformers' CLIPTokenizer saves for the same vocabulary."""
    transformers = pytest.importorskip("transformers")
    src = tmp_path / "slow"
    src.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(tiny_dir / name, src / name)
    transformers.CLIPTokenizer.from_pretrained(str(src)).save_pretrained(str(tmp_path / "saved"))
    theirs = json.loads((tmp_path / "saved" / "tokenizer.json").read_text(encoding="utf-8"))
    ours = json.loads((tiny_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert ours == theirs
    # And we read what transformers wrote like our own files.
    assert read_vocab_and_merges(tmp_path / "saved") == read_vocab_and_merges(tiny_dir)


def test_tiny_writer_both_layouts_load_identically(tiny_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    pair = _copy_tiny(tiny_dir, tmp_path / "pair")
    (pair / "tokenizer.json").unlink()
    only_json = _copy_tiny(tiny_dir, tmp_path / "json")
    (only_json / "vocab.json").unlink()
    (only_json / "merges.txt").unlink()
    a, b = Tokenizer.from_dir(pair, CONTEXT, 700), Tokenizer.from_dir(only_json, CONTEXT, 700)
    texts = TINY_CORPUS[:16] + HAND_CASES
    np.testing.assert_array_equal(a(texts), b(texts))
    assert (a.sot_id, a.eot_id, a.vocab_size) == (b.sot_id, b.eot_id, b.vocab_size)


def _hf_normalize(text: str) -> str:
    """transformers' CLIP normaliser (NFC, whitespace, lower case), for choosing texts."""
    import unicodedata

    return " ".join(unicodedata.normalize("NFC", text).split()).lower()


def test_transformers_on_tokenizer_json_only_dir_gives_our_ids(
    real_json_dir: pathlib.Path, tok_json: Tokenizer, cupl_texts: list[str]
) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.CLIPTokenizer.from_pretrained(str(real_json_dir))
    assert len(hf) == OPENAI_VOCAB_SIZE  # not v5's silent 2-token vocabulary
    assert (hf.bos_token_id, hf.eos_token_id) == (tok_json.sot_id, tok_json.eot_id)
    # Left out: empty texts, and specials written in a text, which transformers matches before
    # lower-casing ("<|ENDOFTEXT|>" stays text) and OpenAI after.
    texts = cupl_texts + [t for t in HAND_CASES if t.strip() and "<|" not in t]
    # transformers replaces OpenAI's ftfy + HTML clean-up by NFC (see the tokenizer module's
    # docstring): texts those change (curly quotes, entities) are compared after our cleaning.
    same = [clean_text(t) == _hf_normalize(t) for t in texts]
    assert sum(same) > 0.99 * len(texts)
    inputs = [t if s else clean_text(t) for t, s in zip(texts, same)]
    for text, ids in zip(texts, hf(inputs)["input_ids"]):
        assert ids == [tok_json.sot_id, *tok_json.encode(text), tok_json.eot_id], repr(text)


def test_clip_load_tokenizer_json_only_checkpoint(tmp_path: pathlib.Path) -> None:
    from aape_jax import clip
    from aape_jax.clip import tiny

    directory = pathlib.Path(tiny.write_checkpoint(tmp_path / "tiny"))
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        assert (directory / name).is_file(), name
    texts = ["a photo of a dog.", "a sculpture of the large origami", *TINY_CORPUS[:16], *HAND_CASES]
    expected = Tokenizer.from_dir(directory, 32, 1024)(texts)
    (directory / "vocab.json").unlink()
    (directory / "merges.txt").unlink()
    model = clip.load(directory)
    assert model.tokenizer.vocab_size == 1024 and model.tokenizer.eot_id == model.config.text.eot_token_id
    ids = model.tokenize(texts)
    np.testing.assert_array_equal(ids, expected)
    assert np.isfinite(model.encode_text(ids[:2])).all()


def test_tiny_checkpoint_from_tokenizer_json_only_vocabulary(
    real_json_dir: pathlib.Path, clip_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """`tiny.write_checkpoint(tokenizer_dir=...)` takes the real vocabulary from tokenizer.json too."""
    from aape_jax.clip import tiny

    directory = pathlib.Path(tiny.write_checkpoint(tmp_path / "real_vocab", "tiny", tokenizer_dir=real_json_dir))
    assert read_vocab_and_merges(directory) == read_vocab_and_merges(clip_dir)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    assert config["text_config"]["vocab_size"] == OPENAI_VOCAB_SIZE
    # From a vocab.json + merges.txt source those two are copied byte for byte.
    directory = pathlib.Path(tiny.write_checkpoint(tmp_path / "copied", "tiny", tokenizer_dir=clip_dir))
    for name in ("vocab.json", "merges.txt"):
        assert (directory / name).read_bytes() == (clip_dir / name).read_bytes()
    assert read_vocab_and_merges(_json_only(directory, tmp_path / "j")) == read_vocab_and_merges(clip_dir)
