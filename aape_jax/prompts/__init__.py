"""Prompt sources and class-name matching.

    from aape_jax import prompts
    descriptions = prompts.read_class_descriptions("cupl/caltech101.json")
    match = prompts.match_classes(classnames, descriptions, aliases={"face": "centered face"},
                                  source="cupl/caltech101.json")
    match.prompts  # [[sentence, ...] per class], in classnames order
"""

from aape_jax.prompts.captions import read_coco_captions, read_jsonl_captions
from aape_jax.prompts.cupl import read_class_descriptions
from aape_jax.prompts.matching import MatchResult, MissingPromptsError, match_classes, normalize_name
from aape_jax.prompts.templates import IMAGENET_TEMPLATES, SINGLE_TEMPLATE, fill

__all__ = [
    "IMAGENET_TEMPLATES",
    "MatchResult",
    "MissingPromptsError",
    "SINGLE_TEMPLATE",
    "fill",
    "match_classes",
    "normalize_name",
    "read_class_descriptions",
    "read_coco_captions",
    "read_jsonl_captions",
]
