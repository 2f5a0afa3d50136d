"""Hand-written class templates: CLIP's single prompt and its 80-prompt ImageNet ensemble."""

from __future__ import annotations

from collections.abc import Sequence

SINGLE_TEMPLATE = "a photo of a {}."

# The 80 templates of CLIP's "Prompt_Engineering_for_ImageNet.ipynb", verbatim and in
# the notebook's order (ungrammatical "a origami {}." included): published zero-shot
# numbers were measured with exactly these strings, so they are not to be tidied.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)


def fill(templates: Sequence[str], classname: str) -> list[str]:
    """Return each template with its single "{}" replaced by `classname`, in order.

    Raises:
      ValueError: if `templates` is empty or a template lacks exactly one "{}".
    """
    if isinstance(templates, str):
        # A bare string is a Sequence[str] too; iterating it would "fill" characters.
        raise TypeError("templates must be a sequence of strings, not a single string")
    if not templates:
        raise ValueError("no templates given")
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain exactly one '{{}}' for the class name")
    # str.replace, not str.format: a class name or template holding other braces stays literal.
    return [t.replace("{}", classname) for t in templates]


def fill_classes(template: str, classnames: Sequence[str]) -> list[str]:
    """`template` filled with each class name, in order (`fill` of one template per class)."""
    return [t for c in classnames for t in fill((template,), c)]


# CoOp's hand-crafted prompt per dataset (its CUSTOM_TEMPLATES), the "hand-crafted"
# prompt of zero-shot CLIP rows and of KgCoOp's regulariser in base-to-new tables.
DATASET_TEMPLATES: dict[str, str] = {
    "imagenet": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "flowers102": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
}
