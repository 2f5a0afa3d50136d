"""Prompt sources and class-name matching.

    from aape_jax import prompts
    descriptions = prompts.read_class_descriptions("cupl/caltech101.json")
    match = prompts.match_classes(classnames, descriptions, aliases={"face": "centered face"},
                                  source="cupl/caltech101.json")
    match.prompts  # [[sentence, ...] per class], in classnames order

    # The package's table for CoOp's class names vs CuPL's keys (see prompts.aliases):
    match = prompts.match_classes(classnames, descriptions, aliases=prompts.aliases_for("caltech101"))

Command line (see prompts.cli): `python -m aape_jax.prompts check --dataset NAME --prompts FILE`
reports a file's coverage; `python -m aape_jax.prompts generate --model DIR ...` writes
CuPL-style descriptions with a local causal LM (prompts.generate).
"""

from aape_jax.prompts.aliases import ALIASED_DATASETS, aliases_for
from aape_jax.prompts.captions import read_coco_captions, read_jsonl_captions
from aape_jax.prompts.cupl import read_class_descriptions
from aape_jax.prompts.matching import MatchResult, MissingPromptsError, match_classes, normalize_name
from aape_jax.prompts.templates import DATASET_TEMPLATES, IMAGENET_TEMPLATES, SINGLE_TEMPLATE, fill, fill_classes

__all__ = [
    "ALIASED_DATASETS",
    "DATASET_TEMPLATES",
    "IMAGENET_TEMPLATES",
    "MatchResult",
    "MissingPromptsError",
    "SINGLE_TEMPLATE",
    "aliases_for",
    "fill",
    "fill_classes",
    "match_classes",
    "normalize_name",
    "read_class_descriptions",
    "read_coco_captions",
    "read_jsonl_captions",
]
