"""CuPL-style class descriptions from a local causal language model (Hugging Face transformers).

CuPL (Pratt et al., 2023; `generate_image_prompts.py` in sarahpratt/CuPL) asked GPT-3
(text-davinci-002, temperature 0.99, 50 tokens, 10 samples, stop at ".") five questions
per ImageNet class and kept each completion, newlines removed, with a "." appended.
`describe_class` does the same with any `AutoModelForCausalLM`:

  * plain completion of each question (no chat template), sampled with `temperature`
    (default 0.99, as CuPL) and `per_question` samples per question;
  * post-processing (`first_sentence`): control characters are dropped, whitespace runs
    become one space, the text is cut at its first ".", stripped, and ends with ".";
    empty results and repeats within a class are dropped;
  * determinism: before each class the torch RNG is seeded with `seed` and a stable
    hash (CRC-32) of the class name, so a class's sentences depend on neither the other
    classes nor their order, and a resumed run writes what an uninterrupted one would;
  * a class left without any usable sentence (a tiny or random model may emit nothing
    but "." or whitespace) gets `FALLBACK_TEMPLATE` ("A photo of a {}."), with a warning;
  * the article is "an" before a vowel letter, else "a" (CuPL checked only upper-case
    vowels, so its lower-case ImageNet names always got "a");
  * the class name in questions has its underscores replaced by spaces ("car_side" is
    asked as "car side"); the output keys are the class names exactly as given.

`write_descriptions` adds the file handling of `python -m aape_jax.prompts generate`:
resume from an existing output, and an atomic rewrite (`aape_jax.atomic`: temp file +
os.replace, or one upload to a bucket) after every class, so an interrupted run loses
at most the class in progress.

torch and transformers are imported only here, only when generating (they are test
dependencies of the package, not runtime ones).
"""

from __future__ import annotations

import os
import re
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging
from tqdm import tqdm

from aape_jax import atomic, hub, storage
from aape_jax.prompts.cupl import read_class_descriptions

# The five questions of CuPL's generate_image_prompts.py, in its order. "{}" is the class
# name, "{a}" its article ("a"/"an"); CuPL's last prompt ends with ":" (a caption follows).
CUPL_QUESTIONS: tuple[str, ...] = (
    "Describe what {a} {} looks like",
    "How can you identify {a} {}?",
    "What does {a} {} look like?",
    "Describe an image from the internet of {a} {}",
    "A caption of an image of {a} {}:",
)
FALLBACK_TEMPLATE = "A photo of a {}."

_WHITESPACE = re.compile(r"\s+")


def article(name: str) -> str:
    """ "an" if `name` starts with a vowel letter (any case), else "a"."""
    return "an" if name[:1].lower() in ("a", "e", "i", "o", "u") else "a"


def ask(question: str, classname: str) -> str:
    """`question` with "{}" -> the class name (underscores as spaces), "{a}" -> its article."""
    if question.count("{}") != 1:
        raise ValueError(f"question {question!r} must contain exactly one '{{}}' for the class name")
    name = _WHITESPACE.sub(" ", classname.replace("_", " ")).strip()
    # Replace "{a}" first: a class name holding "{a}" must stay literal.
    return question.replace("{a}", article(name)).replace("{}", name)


def first_sentence(text: str) -> str:
    """CuPL's post-processing of one completion (see the module docstring); "" if nothing is left."""
    text = "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) != "Cc")
    text = _WHITESPACE.sub(" ", text).split(".", 1)[0].strip()
    return text + "." if text else ""


def read_questions(path: str | os.PathLike[str]) -> list[str]:
    """Questions from a text file, one per line (blank lines and lines starting "#" skipped).

    Raises:
      ValueError: naming `path` when it holds no question, or a line lacks exactly one "{}".
    """
    with storage.open_text(path) as f:
        questions = [q for q in map(str.strip, f) if q and not q.startswith("#")]
    if not questions:
        raise ValueError(f"{path}: holds no questions")
    for q in questions:
        if q.count("{}") != 1:
            raise ValueError(f"{path}: question {q!r} must contain exactly one '{{}}' for the class name")
    return questions


def resolve_model(path_or_id: str | os.PathLike[str]) -> str:
    """A local model directory for `path_or_id`, downloading a hub id when online."""
    return hub.resolve(path_or_id, "causal LM", "config.json, weights, tokenizer files")


def load_model(path_or_id: str | os.PathLike[str], device: str | None = None, dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer): `AutoModelForCausalLM` and `AutoTokenizer` from a directory or hub id.

    Args:
      device: torch device; default "cuda" when available, else "cpu".
      dtype: "auto" (the checkpoint's), "float32", "bfloat16" or "float16".
    """
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ImportError(f"generating descriptions needs torch and transformers ({e}); "
                          "install them, e.g. `pip install -e .[test]`") from e
    directory = resolve_model(path_or_id)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs: dict[str, Any] = {}
    if dtype != "auto":
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
        kwargs["dtype"] = getattr(torch, dtype)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    except (OSError, ValueError) as e:
        raise ValueError(f"{directory}: cannot load a causal language model and its tokenizer: {e}") from e
    model.to(device).eval()
    logging.info("loaded %s (%s) on %s", directory, type(model).__name__, device)
    return model, tokenizer


def fallback_sentence(classname: str) -> str:
    """`FALLBACK_TEMPLATE` for `classname` (underscores as spaces)."""
    return ask(FALLBACK_TEMPLATE, classname)


def describe_class(
    model: Any,
    tokenizer: Any,
    classname: str,
    questions: Sequence[str] = CUPL_QUESTIONS,
    per_question: int = 5,
    max_new_tokens: int = 40,
    temperature: float = 0.99,
    seed: int = 0,
) -> list[str]:
    """Sentences for one class: `per_question` sampled completions per question, post-processed.

    Returns the unique non-empty first sentences in question-then-sample order, or
    `[FALLBACK_TEMPLATE]` filled (with a warning) when none is usable.
    """
    import torch

    if per_question < 1 or max_new_tokens < 1 or temperature <= 0:
        raise ValueError("per_question and max_new_tokens must be >= 1 and temperature > 0")
    torch.manual_seed((seed * 1_000_003 + zlib.crc32(classname.encode("utf-8"))) % (2**63 - 1))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    sentences: list[str] = []
    for question in questions:
        encoded = tokenizer(ask(question, classname), return_tensors="pt").to(device)
        if encoded["input_ids"].shape[1] == 0:
            raise ValueError(f"the tokenizer turns {ask(question, classname)!r} into no tokens")
        with torch.no_grad():
            out = model.generate(
                **encoded, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                max_new_tokens=max_new_tokens, num_return_sequences=per_question, pad_token_id=pad_id,
            )
        texts = tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        sentences.extend(first_sentence(t) for t in texts)
    unique = list(dict.fromkeys(s for s in sentences if s))
    if not unique:
        fallback = fallback_sentence(classname)
        logging.warning("class %r: no usable sentence in %d completions; using %r",
                        classname, len(sentences), fallback)
        return [fallback]
    return unique


def write_descriptions(
    out: str | os.PathLike[str],
    classnames: Sequence[str],
    describe: Callable[[str], list[str]],
    progress: bool = True,
) -> dict[str, list[str]]:
    """Writes {class: sentences} to `out` in CuPL's format, resuming from an existing `out`.

    Classes already in `out` (exact key) are kept as they are and not generated again;
    keys of `out` that are not among `classnames` are kept too, after the classes. The
    file is rewritten atomically after each generated class. Returns the final contents.

    Raises:
      ValueError: `classnames` is empty, or an existing `out` is not a valid CuPL file.
    """
    out = os.fspath(out)
    classes = list(dict.fromkeys(classnames))
    if not classes:
        raise ValueError("no class names given")
    result = read_class_descriptions(out) if storage.path(out).exists() else {}
    todo = [c for c in classes if c not in result]
    if result:
        logging.info("%s: %d of %d classes already present; generating %d", out,
                     len(classes) - len(todo), len(classes), len(todo))

    def ordered() -> dict[str, list[str]]:
        return {**{c: result[c] for c in classes if c in result},
                **{k: v for k, v in result.items() if k not in classes}}

    for classname in tqdm(todo, desc="classes", unit="class", disable=not progress):
        result[classname] = describe(classname)
        atomic.write_json(out, ordered())
    if not todo:
        atomic.write_json(out, ordered())
    return ordered()
