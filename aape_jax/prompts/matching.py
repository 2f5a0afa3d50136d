"""Matching a dataset's class names to the keys of a prompt file.

Prompt files spell classes their own way (CuPL: "snoopy (cartoon beagle)",
"St. Bernard"; CoOp folders: "water_lilly", "yin_yang"). Per class, in order:
  1. an explicit alias from the config: `aliases[classname]` is a key of the file;
  2. the class name is itself a key;
  3. the normalised class name equals normalised key(s) (`normalize_name`); where
     several keys normalise alike, their sentences are merged in file order.
A key whose list holds no sentence counts as absent. Classes still unmatched get the
fallback templates when the config provides them (`--config.prompts.fallback_to_templates=true`;
a warning lists them), else `MissingPromptsError` lists every one of them and names that flag.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Mapping, Sequence

from absl import logging

from aape_jax.errors import PromptFileError
from aape_jax.prompts.templates import fill

_SEPARATORS = re.compile(r"[_\-/\s]+")
_PUNCTUATION = re.compile(r"[^\w\s]")  # \w is Unicode-aware: accented letters and digits stay.
_SPACES = re.compile(r"\s+")


def normalize_name(name: str) -> str:
    """Canonical form of a class name for matching.

    NFKC, case-folded; underscores, hyphens, slashes and whitespace runs become one
    space; other punctuation (apostrophes, periods, commas, parentheses, ...) is
    dropped, so "Yorkshire_Terrier", "yorkshire-terrier" and "Yorkshire  terrier" agree,
    as do "colt's foot"/"colts foot" and "St. Bernard"/"st bernard".
    """
    # casefold, not lower: the Unicode caseless-matching form (e.g. "ß" == "ss").
    name = unicodedata.normalize("NFKC", name).casefold()
    name = _SEPARATORS.sub(" ", name)
    name = _PUNCTUATION.sub("", name)
    return _SPACES.sub(" ", name).strip()


FALLBACK_FLAG = "--config.prompts.fallback_to_templates=true"
ALIASES_FLAG = "--config.prompts.aliases"


class MissingPromptsError(PromptFileError):
    """Classes that matched no key (or only an empty list) of a prompt file; `.missing` lists them all."""

    def __init__(self, missing: Sequence[str], source: str):
        self.missing = list(missing)
        self.source = source
        super().__init__(
            f"{len(self.missing)} class(es) have no prompts in {source}: "
            + ", ".join(repr(c) for c in self.missing)
            + f". Add an alias {{class name: key in the file}} ({ALIASES_FLAG}), or give them the ImageNet "
            f"templates with {FALLBACK_FLAG}.",
            hint=f"{FALLBACK_FLAG} gives classes without prompts the 80 ImageNet templates; "
                 f"`python -m aape_jax.prompts check` lists them",
        )


@dataclasses.dataclass(frozen=True)
class MatchResult:
    """Prompts per class, aligned with the class names given to `match_classes`.

    Attributes:
      prompts: per class, its sentences (or its filled fallback templates).
      matched_keys: per class, the file key it matched (the first one in file order
        where several normalised alike and were merged); None for a fallback class.
      fallback_classes: the classes that got templates, in order, each once.
    """

    prompts: list[list[str]]
    matched_keys: list[str | None]
    fallback_classes: list[str]


def match_classes(
    classnames: Sequence[str],
    prompts: Mapping[str, Sequence[str]],
    aliases: Mapping[str, str] | None = None,
    fallback_templates: Sequence[str] | None = None,
    source: str = "prompt file",
) -> MatchResult:
    """Give each class name its prompts from `prompts` ({file key: sentences}).

    Args:
      classnames: the dataset's class names; repeats are allowed and match alike.
      prompts: a prompt file's contents, e.g. from `read_class_descriptions`.
      aliases: {class name: key in `prompts`}, overriding every other rule.
      fallback_templates: if given, unmatched classes get these filled with their
        name (logged as a warning) instead of raising.
      source: what `prompts` came from (its path), for messages.

    Raises:
      ValueError: if `classnames` is empty, `fallback_templates` is empty or malformed,
        or an alias for one of the classes names a key missing from `prompts`.
      MissingPromptsError: if classes stay unmatched and there is no fallback.
    """
    if not classnames:
        raise ValueError("no class names given")
    if fallback_templates is not None:
        # Checked now, not only when a class falls back: a bad config should fail every run.
        fill(fallback_templates, "")
    # A key with no sentences counts as absent: its class is missing (and falls back when asked).
    prompts = {k: v for k, v in prompts.items() if any(s.strip() for s in v)}
    aliases = aliases or {}
    bad = [(c, aliases[c]) for c in dict.fromkeys(classnames) if c in aliases and aliases[c] not in prompts]
    if bad:
        raise PromptFileError(f"config aliases name keys that {source} lacks (or that have no sentences): "
                              + ", ".join(f"{c!r} -> {k!r}" for c, k in bad), hint=f"fix {ALIASES_FLAG}")
    by_normal: dict[str, list[str]] = {}
    for key in prompts:  # file order, so merged sentences keep it too
        by_normal.setdefault(normalize_name(key), []).append(key)

    def lookup(classname: str) -> tuple[str, list[str]] | None:
        """(key recorded for the class, its sentences), or None when unmatched."""
        if classname in aliases:
            return aliases[classname], list(prompts[aliases[classname]])
        if classname in prompts:
            return classname, list(prompts[classname])
        keys = by_normal.get(normalize_name(classname), [])
        if not keys:
            return None
        if len(keys) > 1:
            logging.info("%s: class %r merges the sentences of keys %s", source, classname, keys)
        return keys[0], list(dict.fromkeys(s for k in keys for s in prompts[k]))

    found: dict[str, tuple[str | None, list[str]] | None] = {c: lookup(c) for c in dict.fromkeys(classnames)}
    unmatched = [c for c, hit in found.items() if hit is None]
    if unmatched and fallback_templates is None:
        raise MissingPromptsError(unmatched, source)
    if unmatched:
        logging.warning("%d class(es) have no prompts in %s and fall back to %d template(s): %s",
                        len(unmatched), source, len(fallback_templates), ", ".join(map(repr, unmatched)))
        found.update({c: (None, fill(fallback_templates, c)) for c in unmatched})
    hits = [found[c] for c in classnames]
    return MatchResult(
        prompts=[list(sentences) for _, sentences in hits],  # a fresh list per entry, repeats included
        matched_keys=[key for key, _ in hits],
        fallback_classes=unmatched,
    )
