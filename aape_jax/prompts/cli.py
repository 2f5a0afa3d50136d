"""`python -m aape_jax.prompts {check,generate}`: prompt-file coverage and LLM descriptions.

check:
  python -m aape_jax.prompts check --dataset NAME --prompts FILE [--aliases JSON]
  python -m aape_jax.prompts check --classnames FILE --prompts FILE [--dataset NAME] [--aliases JSON]

  Matches every class (of `aape_jax.data.classnames.load(NAME)`, or of a text file with
  one class name a line) to the prompt file as training does (`match_classes`: aliases,
  exact key, normalised key), with the package's alias table for NAME (only aliases
  whose key the file holds; see `aliases_for`) overridden by `--aliases` ({class: key}).
  Prints a summary, each missing class on its own line, and as the LAST line of stdout
  one JSON object:
      {"dataset": NAME, "classes": N, "covered": K, "missing": [class, ...]}
  N and K count classes by label (ImageNet's two repeated names count twice); `missing`
  lists each uncovered name once, in label order. "dataset" is NAME, or the class-name
  file's stem when only --classnames is given.
  Exit status: 0 when every class has prompts, 1 when some miss, 2 when the input is
  unusable (unknown dataset, unreadable or invalid prompt/alias/class-name file, an
  --aliases entry naming a key the file lacks): then the message goes to stderr and the
  last stdout line is {"dataset": NAME, "error": MESSAGE}. Usage errors (argparse) exit 2
  with the usage on stderr and no JSON.

generate:
  python -m aape_jax.prompts generate --model DIR_OR_HUB_ID
      (--classes "a,b" | --classnames FILE | --dataset NAME) --out FILE.json
      [--per-question 5] [--max-new-tokens 40] [--temperature 0.99] [--seed 0]
      [--questions FILE] [--device cuda|cpu] [--dtype auto|float32|bfloat16|float16]

  Writes CuPL-format descriptions {class: [sentence, ...]} with a local causal LM (see
  `aape_jax.prompts.generate`), resuming from an existing --out, and prints as the last
  stdout line {"out": FILE, "classes": N, "generated": G, "kept": K, "fallback": [...]}
  (`fallback`: classes that got "A photo of a {}." because no completion was usable).
  Exit status: 0 on success, 2 on unusable input (message on stderr, and a last stdout
  line {"out": FILE, "error": MESSAGE}).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from aape_jax import errors, storage
from aape_jax.prompts.aliases import aliases_for
from aape_jax.prompts.cupl import read_class_descriptions
from aape_jax.prompts.matching import MissingPromptsError, match_classes


class UsageError(errors.UserError, ValueError):
    """Input the command cannot use: reported on stderr and as {"error": ...}, exit 2."""


def _print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _fail(label: str | None, message: str, key: str = "dataset") -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    _print_json({key: label, "error": message})
    return 2


def read_classname_lines(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a text file, one a line (stripped; blank lines skipped), in order."""
    try:
        with storage.open_text(path) as f:
            names = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read class-name file {path}: {e}") from e
    if not names:
        raise UsageError(f"class-name file {path} holds no class names")
    return names


def _classes(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(label, class names) from --classes "a,b", --classnames FILE or --dataset NAME."""
    if getattr(args, "classes", None) is not None:
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
        if not names:
            raise UsageError("--classes names no class")
        return "classes", names
    if args.classnames is not None:
        label = args.dataset or os.path.splitext(os.path.basename(args.classnames))[0]
        return label, read_classname_lines(args.classnames)
    if args.dataset is None:
        raise UsageError("give --dataset NAME or --classnames FILE")
    from aape_jax.data import classnames

    try:
        return args.dataset, classnames.load(args.dataset)
    except KeyError as e:
        raise UsageError(e.args[0] if e.args else f"unknown dataset {args.dataset!r}") from e


def _read_user_aliases(path: str) -> dict[str, str]:
    try:
        with storage.open_text(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read aliases file {path}: {e}") from e
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UsageError(f"aliases file {path}: expected a JSON object {{class name: key in the prompt file}}")
    return data


def coverage(
    classnames: Sequence[str],
    prompts: dict[str, list[str]],
    aliases: dict[str, str],
    source: str,
) -> tuple[int, list[str]]:
    """(classes covered, counted by label; missing names, each once, in label order).

    Raises:
      ValueError: an alias for one of the classes names a key `prompts` lacks.
    """
    try:
        match_classes(classnames, prompts, aliases=aliases, source=source)
        missing: list[str] = []
    except MissingPromptsError as e:
        missing = e.missing
    gone = set(missing)
    return sum(c not in gone for c in classnames), missing


def run_check(args: argparse.Namespace) -> int:
    label = args.dataset
    try:
        label, names = _classes(args)
        try:
            prompts = read_class_descriptions(args.prompts)
        except OSError as e:
            raise UsageError(f"cannot read prompt file {args.prompts}: {e}") from e
        except ValueError as e:  # invalid JSON or format; the message names the file
            raise UsageError(str(e)) from e
        # The package table only where the file has the key: a file keyed by the class
        # names themselves (e.g. from `generate`) matches them directly.
        package = aliases_for(args.dataset, available=prompts) if args.dataset else {}
        user = _read_user_aliases(args.aliases) if args.aliases else {}
        try:
            covered, missing = coverage(names, prompts, {**package, **user}, source=args.prompts)
        except ValueError as e:  # a user alias naming a key the file lacks
            raise UsageError(str(e)) from e
    except UsageError as e:
        return _fail(label, str(e))
    unique = list(dict.fromkeys(names))
    via_package = sum(c in package and c not in user for c in unique)
    via_user = sum(c in user for c in unique)
    print(f"{label}: {covered} of {len(names)} classes have prompts in {args.prompts} ({len(prompts)} keys; "
          f"{via_package} classes matched via the package alias table, {via_user} via --aliases)")
    if missing:
        print(f"{len(missing)} class(es) without prompts:")
        for c in missing:
            print(f"  {c}")
    _print_json({"dataset": label, "classes": len(names), "covered": covered, "missing": missing})
    return 0 if not missing else 1


def run_generate(args: argparse.Namespace) -> int:
    from aape_jax.prompts import generate as gen

    try:
        _, names = _classes(args)
        questions = gen.read_questions(args.questions) if args.questions else list(gen.CUPL_QUESTIONS)
        if args.per_question < 1 or args.max_new_tokens < 1 or args.temperature <= 0:
            raise UsageError("--per-question and --max-new-tokens must be >= 1 and --temperature > 0")
        existing = read_class_descriptions(args.out) if storage.path(args.out).exists() else {}
        todo = [c for c in dict.fromkeys(names) if c not in existing]
        model = tokenizer = None
        if todo:  # nothing to load when the output already covers every class
            model, tokenizer = gen.load_model(args.model, device=args.device, dtype=args.dtype)
    except (ValueError, OSError, ImportError) as e:  # UsageError is a ValueError
        return _fail(args.out, str(e), key="out")
    fallback: list[str] = []

    def describe(classname: str) -> list[str]:
        sentences = gen.describe_class(
            model, tokenizer, classname, questions=questions, per_question=args.per_question,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
        )
        if sentences == [gen.fallback_sentence(classname)]:
            fallback.append(classname)
        return sentences

    gen.write_descriptions(args.out, names, describe, progress=not args.no_progress)
    unique = list(dict.fromkeys(names))
    print(f"{args.out}: {len(unique)} classes, {len(todo)} generated, {len(unique) - len(todo)} kept"
          + (f"; {len(fallback)} fell back to {gen.FALLBACK_TEMPLATE!r}" if fallback else ""))
    _print_json({"out": args.out, "classes": len(unique), "generated": len(todo),
                 "kept": len(unique) - len(todo), "fallback": fallback})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aape_jax.prompts",
        description="Prompt files: check a file's coverage of a dataset's classes, or generate one with a local LLM.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="report which classes a CuPL-format prompt file covers",
                           description="Exit 0 when every class has prompts, 1 when some miss, 2 on unusable "
                                       "input. The last stdout line is a JSON object.")
    check.add_argument("--dataset", help="dataset name (aape_jax.data.classnames.DATASETS): its classes and "
                                         "the package alias table")
    check.add_argument("--classnames", help="text file with one class name a line, instead of the dataset's")
    check.add_argument("--prompts", required=True, help="CuPL-format JSON {class: [sentence, ...]}")
    check.add_argument("--aliases", help="JSON {class name: key in the prompt file}, over the package table")
    check.add_argument("--verbose", action="store_true", help="print the traceback of an error")
    check.set_defaults(func=run_check)

    gen = sub.add_parser("generate", help="write CuPL-style descriptions with a local causal LM (transformers)")
    gen.add_argument("--model", required=True, help="local Hugging Face model directory (or hub id, when online)")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--classes", help='comma-separated class names, e.g. "cat,dog"')
    source.add_argument("--classnames", help="text file with one class name a line")
    source.add_argument("--dataset", help="dataset name (aape_jax.data.classnames.DATASETS), e.g. eurosat")
    gen.add_argument("--out", required=True, help="output JSON; classes already in it are kept (resume)")
    gen.add_argument("--per-question", type=int, default=5, help="sampled completions per question (default 5)")
    gen.add_argument("--max-new-tokens", type=int, default=40, help="tokens per completion (default 40)")
    gen.add_argument("--temperature", type=float, default=0.99, help="sampling temperature (default 0.99, CuPL's)")
    gen.add_argument("--seed", type=int, default=0, help="seed; each class is seeded from it and its name")
    gen.add_argument("--questions", help='text file, one question a line with "{}" for the class name and '
                                         'optionally "{a}" for its article (default: CuPL\'s five)')
    gen.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.add_argument("--verbose", action="store_true", help="print the traceback of an error")
    gen.set_defaults(func=run_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:  # what the subcommands do not turn into their JSON error line
        code = errors.report(e, verbose=getattr(args, "verbose", False), prog="error")
        if code is None:
            raise
        return code
