"""Captioning and VQA with a frozen CLIP and a frozen language model: LiMBeR's linear map, AAPE on top.

    from aape_jax.captioning import AAPECaptioner, cider_d
    cap = AAPECaptioner.load("runs/aape_captioning")
    cap.caption(images); cap.answer(images, questions)
    cider_d({id: "a caption"}, {id: ["a reference", ...]})
"""

from aape_jax.captioning.captioner import AAPECaptioner
from aape_jax.captioning.metrics import cider_d

__all__ = ["AAPECaptioner", "cider_d"]
