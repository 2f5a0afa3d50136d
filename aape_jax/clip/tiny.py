"""Randomly initialised CLIP (and SigLIP) checkpoints in Hugging Face format, made offline.

No pretrained weights can be downloaded on the machines where tests, the
offline default and the benchmarks run, so they make a checkpoint here and load
it through the same `clip.load` path a real checkpoint takes. Geometries:
`tiny` (seconds on a CPU), `vit-b-16` (the real ViT-B/16 shapes) and
`siglip-tiny` (a `SiglipModel` checkpoint of tiny widths, with a SigLIP 2 style
tokenizer.json).

    python -m aape_jax.clip.tiny DIR [--geometry tiny] [--seed 0]
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterable, Mapping

import flax
import numpy as np
from safetensors.numpy import save_file

from aape_jax import hf_weights
from aape_jax.clip import weights
from aape_jax.clip.config import CLIPConfig, TextConfig, VisionConfig
from aape_jax.clip.siglip_tokenizer import TOKENIZER_JSON, write_tiny_siglip_tokenizer
from aape_jax.clip.tokenizer import (
    read_vocab_and_merges,
    write_byte_level_vocab,
    write_tokenizer_files,
)

GEOMETRIES: dict[str, CLIPConfig] = {
    "tiny": CLIPConfig(
        text=TextConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_layers=2,
                        num_heads=4, context_length=32, eot_token_id=1023),
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                            image_size=32, patch_size=8),
        projection_dim=32,
    ),
    "vit-b-16": CLIPConfig(
        text=TextConfig(),
        vision=VisionConfig(patch_size=16),
        projection_dim=512,
    ),
    "siglip-tiny": CLIPConfig(
        text=TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        context_length=32, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, eot_token_id=1,
                        causal=False),
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=32,
                            patch_size=8, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, map_head=True),
        projection_dim=64,
        family="siglip",
    ),
}

# Words the tiny vocabulary learns merges from, so prompts tokenise into words, not bytes.
_DEFAULT_CORPUS = (
    "a photo of a the . , itap of a bad photo of the a origami a photo of the large "
    "a sculpture of a rendering of a graffiti of a tattoo of the embroidered "
    "which has with and is are that it its this can be often looks like"
)


def _preprocessor_config(config: CLIPConfig) -> dict:
    image_size = config.vision.image_size
    if config.family == "siglip":
        return {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor", "resample": 3,
                "rescale_factor": 1 / 255, "size": {"height": image_size, "width": image_size}}
    return {
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "CLIPImageProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": image_size},
    }


def random_params(config: CLIPConfig, seed: int = 0) -> dict:
    """A random Flax parameter tree for `config`, drawn in numpy.

    Initialising through Flax runs (or compiles) the whole forward pass, which
    takes seconds even for the tiny geometry; shapes come from `eval_shape`
    instead. Kernels ~ N(0, 1/fan_in) (LeCun, so random features still vary
    with the input), embeddings ~ N(0, 0.02), biases 0, LayerNorm scales 1;
    the logit scale is CLIP's trained log(100) (SigLIP: its initial log(10), with
    its initial logit bias -10).
    """
    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in weights.expected_shapes(config).items():
        leaf = path[-1]
        if path == ("logit_scale",):
            flat[path] = np.asarray(np.log(10.0 if config.family == "siglip" else 100.0), np.float32)
        elif path == ("logit_bias",):
            flat[path] = np.asarray(-10.0, np.float32)
        elif leaf == "bias":
            flat[path] = np.zeros(shape, np.float32)
        elif leaf == "scale":
            flat[path] = np.ones(shape, np.float32)
        elif leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            flat[path] = rng.normal(0.0, fan_in**-0.5, shape).astype(np.float32)
        else:
            flat[path] = rng.normal(0.0, 0.02, shape).astype(np.float32)
    return flax.traverse_util.unflatten_dict(flat)


def write_checkpoint(
    directory: str | os.PathLike,
    geometry: str | CLIPConfig = "tiny",
    seed: int = 0,
    corpus: Iterable[str] = (),
    tokenizer_dir: str | os.PathLike | None = None,
    params: Mapping | None = None,
) -> str:
    """Writes a CLIP in HF format (config, safetensors, tokenizer, preprocessor): random, or `params`.

    The tokenizer goes in both layouts: `vocab.json` + `merges.txt`, `tokenizer.json`
    (as transformers' CLIPTokenizer writes it), `tokenizer_config.json` and
    `special_tokens_map.json`.

    Args:
      directory: created if needed; existing checkpoint files are replaced.
      geometry: a name in `GEOMETRIES` or a `CLIPConfig`.
      seed: parameter initialisation seed.
      corpus: extra texts the byte-level vocabulary learns merges from.
      tokenizer_dir: take the vocabulary from here (`vocab.json` + `merges.txt`,
        copied as they are, or else `tokenizer.json`) instead of learning one
        (needed for the real 49,408-token geometry).
      params: a trained Flax parameter tree of this geometry (default: random from `seed`).

    Returns:
      The directory, as a string.
    """
    if isinstance(geometry, str):
        if geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {geometry!r}; choose from {', '.join(GEOMETRIES)}")
        config = GEOMETRIES[geometry]
    else:
        config = geometry
    directory = os.fspath(directory)
    if config.family == "siglip" and tokenizer_dir is not None:
        raise ValueError("tokenizer_dir= takes a CLIP vocabulary; a SigLIP geometry learns its own tokenizer.json")
    os.makedirs(directory, exist_ok=True)
    # Real words repeated so their merges come first; every two-letter word once
    # so that any vocabulary size up to ~1,200 can be filled.
    letters = "abcdefghijklmnopqrstuvwxyz"
    texts = [_DEFAULT_CORPUS, *corpus] * 8 + [" ".join(a + b for a in letters for b in letters)]
    if config.family == "siglip":
        write_tiny_siglip_tokenizer(directory, texts, config.text.vocab_size, TOKENIZER_JSON)
    elif tokenizer_dir is not None:
        vocab, merges = read_vocab_and_merges(tokenizer_dir)
        write_tokenizer_files(directory, vocab, merges)
        names = ("vocab.json", "merges.txt")
        if all(os.path.isfile(os.path.join(tokenizer_dir, name)) for name in names):
            # Byte for byte, since file digests (e.g. of text-feature caches) key on them.
            for name in names:
                shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(directory, name))
        vocab_size = len(vocab)
        config = dataclasses.replace(
            config, text=dataclasses.replace(config.text, vocab_size=vocab_size, eot_token_id=vocab_size - 1)
        )
    elif config.text.vocab_size > 8192:
        raise ValueError(
            f"a {config.text.vocab_size}-token vocabulary cannot be learned from a toy corpus; "
            "pass tokenizer_dir= with the real vocab.json/merges.txt (or tokenizer.json)"
        )
    else:
        write_byte_level_vocab(directory, texts, config.text.vocab_size)

    params = random_params(config, seed) if params is None else params
    save_file(weights.to_state_dict(params, config), os.path.join(directory, hf_weights.SAFETENSORS))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config.to_hf_dict(), f, indent=2)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump(_preprocessor_config(config), f, indent=2)
    return directory


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--geometry", default="tiny", choices=sorted(GEOMETRIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer_dir", default=None, help="take vocab.json/merges.txt (or tokenizer.json) from here")
    args = parser.parse_args()
    print(write_checkpoint(args.directory, args.geometry, args.seed, tokenizer_dir=args.tokenizer_dir))


if __name__ == "__main__":
    main()
