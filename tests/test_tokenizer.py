"""Tests for aape_jax.clip.tokenizer: ids must equal OpenAI's clip.tokenize(truncate=True)."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from aape_jax.clip.tokenizer import Tokenizer, write_byte_level_vocab

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
    tok: Tokenizer, ref: openai_ref.SimpleTokenizer, shared_data: pathlib.Path
) -> None:
    files = sorted((shared_data / "cupl").glob("*.json"))
    assert files, f"no CuPL files in {shared_data / 'cupl'}"
    texts: list[str] = []
    for file in files:
        with open(file, encoding="utf-8") as f:
            prompts: dict[str, list[str]] = json.load(f)
        for classname, sentences in prompts.items():
            texts.append(classname)
            texts.extend(sentences)
    assert len(texts) > 1000

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
        with pytest.raises(FileNotFoundError, match=name):
            Tokenizer.from_dir(d, CONTEXT)


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
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        assert (tiny_dir / name).is_file()
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
