"""The PyTorch side of the benchmarks: transformers' CLIP and decoders on the same weights, and the AAPE step
in PyTorch.

All of the project's PyTorch/transformers benchmarking code lives here, imported only inside the benchmarks
that compare against PyTorch (`towers`, `train_step`, `lm`, `pipeline`, `accelerator`): importing any other module of the package never
loads torch. PyTorch runs fp32 with all cores, on the GPU when there is one; every call handed back for
timing blocks until its result is ready.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
import transformers
from torch import nn

if TYPE_CHECKING:
    from aape_jax.clip.frozen import FrozenCLIP
    from aape_jax.models.heads import ClassText


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def machine_info() -> dict[str, Any]:
    """The PyTorch part of the benchmark's machine line."""
    return {"torch": torch.__version__, "transformers": transformers.__version__, "torch_device": DEVICE,
            "torch_threads": torch.get_num_threads()}


def load_reference(directory: str) -> transformers.CLIPModel:
    """transformers' PyTorch CLIPModel on the same weights, fp32, eval mode."""
    torch.set_num_threads(os.cpu_count() or 1)
    return transformers.CLIPModel.from_pretrained(directory, dtype=torch.float32).eval().to(DEVICE)


def to_device(x: np.ndarray) -> torch.Tensor:
    """A host array (copied: views of JAX arrays are read-only) as a tensor on the reference's device."""
    return torch.from_numpy(np.array(x, order="C", copy=True)).to(DEVICE)


def blocking(fn: Callable[[], Any]) -> Callable[[], None]:
    """`fn` under `torch.inference_mode()`, then a device sync: a call to time."""

    def run() -> None:
        with torch.inference_mode():
            fn()
        sync()

    return run


def matmul_call(size: int) -> Callable[[], None]:
    """One blocking fp32 [size, size] @ [size, size] matmul."""
    a = torch.randn(size, size, device=DEVICE)
    return blocking(lambda: torch.mm(a, a))


class Towers:
    """The reference's image and text towers on fixed inputs.

    Attributes (constructor arguments):
      ref: the reference `CLIPModel`.
      pixels: preprocessed pixels [N, R, R, 3] (ours: NHWC; passed on as NCHW).
      ids: token ids [N, 77] (OpenAI's context length).
      trimmed: positions kept for the trimmed text call (up to the longest prompt's EOT).
    """

    def __init__(self, ref: transformers.CLIPModel, pixels: np.ndarray, ids: np.ndarray, trimmed: int):
        self.ref = ref
        self.pixels = to_device(pixels.transpose(0, 3, 1, 2))  # NCHW
        self.ids = to_device(ids.astype(np.int64))
        self.ids_trimmed = self.ids[:, :trimmed]

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """Projected image [N, D] and text [N, D] features, for the equal-outputs check."""
        with torch.inference_mode():
            img = self.ref.get_image_features(pixel_values=self.pixels).pooler_output.cpu().numpy()
            txt = self.ref.get_text_features(input_ids=self.ids).pooler_output.cpu().numpy()
        return img, txt

    def image_call(self) -> Callable[[], None]:
        return blocking(lambda: self.ref.get_image_features(pixel_values=self.pixels))

    def text_call(self, trimmed: bool = False) -> Callable[[], None]:
        ids = self.ids_trimmed if trimmed else self.ids
        return blocking(lambda: self.ref.get_text_features(input_ids=ids))


class ImageFiles(torch.utils.data.Dataset):
    """JPEG files through transformers' image processor, one image per item: pixels [3, R, R]."""

    def __init__(self, files: Sequence[str], processor: Any):
        self.files, self.processor = list(files), processor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        with PIL.Image.open(self.files[i]) as im:
            return self.processor(images=im, return_tensors="pt")["pixel_values"][0]


class ImageExtraction:
    """transformers' image feature extraction over files: `CLIPImageProcessor.from_pretrained(directory)` (what
    transformers gives by default for it: the torchvision backend when installed, else the PIL one) in a torch
    `DataLoader(num_workers=workers)`, then the reference's `get_image_features` batch by batch.

    Attributes (constructor arguments):
      ref: the reference `CLIPModel`.
      directory: the checkpoint directory (its preprocessor_config.json).
      files: image files, in output order.
      batch_size: images per model call.
      workers: DataLoader worker processes (the platform's default start method: fork on Linux).
    """

    def __init__(self, ref: transformers.CLIPModel, directory: str, files: Sequence[str], batch_size: int,
                 workers: int):
        self.ref, self.files, self.batch_size, self.workers = ref, list(files), batch_size, workers
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fall-back to the PIL backend without torchvision
            self.processor = transformers.CLIPImageProcessor.from_pretrained(directory)

    @property
    def processor_name(self) -> str:
        """The processor's class and backend, e.g. "CLIPImageProcessorPil (pil)"."""
        return f"{type(self.processor).__name__} ({getattr(self.processor, 'backend', 'unknown')} backend)"

    def warm_up(self) -> None:
        """One untimed batch through the model (first-call overheads)."""
        with torch.inference_mode():
            batch = torch.stack([ImageFiles(self.files[: self.batch_size], self.processor)[i]
                                 for i in range(min(self.batch_size, len(self.files)))])
            self.ref.get_image_features(pixel_values=batch.to(DEVICE))
        sync()

    def run(self) -> tuple[np.ndarray, float]:
        """(projected image features [N, D], seconds inside the model's calls, each synchronised)."""
        loader = torch.utils.data.DataLoader(ImageFiles(self.files, self.processor), batch_size=self.batch_size,
                                             shuffle=False, num_workers=self.workers, timeout=600 if self.workers else 0,
                                             pin_memory=DEVICE == "cuda")
        feats, busy = [], 0.0
        with warnings.catch_warnings(), torch.inference_mode():
            # JAX warns on every fork (its threads are not copied); the workers never touch JAX.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
            for pixels in loader:
                t0 = time.perf_counter()
                out = self.ref.get_image_features(pixel_values=pixels.to(DEVICE)).pooler_output
                sync()
                busy += time.perf_counter() - t0
                feats.append(out.cpu().numpy())
        return np.concatenate(feats), busy


class TorchAAPE:
    """The same training step in PyTorch: attention aggregator, generator, token head, CLIP text tower
    through `inputs_embeds` with the AAPE token inserted into every class template (CoCoOp-style, one
    sequence per (image, class) pair), CE + distillation + CLIP-reward loss, SGD with momentum.

    Attributes (constructor arguments):
      ref: the reference `CLIPModel` (frozen here).
      clip: our CLIP on the same weights (its geometry).
      class_text: the classes' template ids and EOT positions (one inserted token).
      token_position: "prefix" (after [SOS]) or "suffix" (before [EOT]).
      heads: attention heads of the aggregator.
      hidden: bottleneck width of the generator.
    """

    def __init__(self, ref: transformers.CLIPModel, clip: FrozenCLIP, class_text: ClassText, token_position: str,
                 heads: int, hidden: int):
        if token_position not in ("prefix", "suffix"):
            raise ValueError(f"token_position is {token_position!r}; choose 'prefix' or 'suffix'")
        self.ref = ref.requires_grad_(False)
        d, w = clip.config.projection_dim, clip.config.text.hidden_size
        self.agg = nn.MultiheadAttention(d, heads, batch_first=True).to(DEVICE)
        self.agg_out = nn.Linear(d, d).to(DEVICE)
        self.gen = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d)).to(DEVICE)
        self.head = nn.Linear(d, w).to(DEVICE)
        params = [*self.agg.parameters(), *self.agg_out.parameters(), *self.gen.parameters(), *self.head.parameters()]
        self.opt = torch.optim.SGD(params, lr=0.002, momentum=0.9)
        self.ids = to_device(np.asarray(class_text.ids).astype(np.int64))  # [C, L]
        self.eot = to_device(np.asarray(class_text.eot).astype(np.int64))  # [C]
        self.position = token_position
        self.logit_scale = ref.logit_scale.detach().exp()

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:  # tokens [B, 1, W] -> [B, C, D]
        tm = self.ref.text_model
        embeds = tm.embeddings.token_embedding(self.ids)  # [C, L, W]
        b, c, length = tokens.shape[0], embeds.shape[0], embeds.shape[1]
        tok = tokens[:, None].expand(b, c, 1, -1)
        tmpl = embeds[None].expand(b, c, length, -1)
        if self.position == "prefix":
            x = torch.cat([tmpl[:, :, :1], tok, tmpl[:, :, 1:]], dim=2)  # [B, C, L+1, W]
        else:  # before each class's EOT
            j = torch.arange(length + 1, device=embeds.device)[None]
            src = torch.where(j < self.eot[:, None], j, j - 1).clamp(0, length - 1)  # [C, L+1]
            moved = torch.gather(embeds, 1, src[..., None].expand(-1, -1, embeds.shape[-1]))
            is_tok = (j == self.eot[:, None])[None, :, :, None]
            x = torch.where(is_tok, tok.expand(b, c, length + 1, -1), moved[None].expand(b, c, -1, -1))
        x = x.reshape(b * c, length + 1, -1)
        h = tm.embeddings(inputs_embeds=x)
        n = h.shape[1]
        mask = torch.full((n, n), float("-inf"), device=h.device).triu(1)[None, None]
        h = tm.final_layer_norm(tm.encoder(inputs_embeds=h, attention_mask=mask).last_hidden_state)
        pos = (self.eot + 1).repeat(b)  # [B*C]
        pooled = h[torch.arange(b * c, device=h.device), pos]
        return self.ref.text_projection(pooled).reshape(b, c, -1)

    def step(self, feats: torch.Tensor, labels: torch.Tensor, prompts: torch.Tensor) -> float:
        """One blocking optimizer step on features [B, D], labels [B], prompt sets [B, M, D]; the loss."""
        f = torch.nn.functional
        q = f.normalize(feats, dim=-1)
        summary, _ = self.agg(q[:, None], prompts, prompts)
        summary = f.normalize(self.agg_out(summary[:, 0]), dim=-1)
        a = self.gen(q)
        w = f.normalize(self.text_features(self.head(a)[:, None]), dim=-1)  # [B, C, D]
        logits = self.logit_scale * torch.einsum("bd,bcd->bc", q, w)
        ce = f.cross_entropy(logits, labels)
        distill = ((f.normalize(a, dim=-1) - summary.detach()) ** 2).sum(-1).mean()
        sim = self.logit_scale * summary @ q.T
        target = torch.arange(len(q), device=q.device)
        agg = 0.5 * (f.cross_entropy(sim, target) + f.cross_entropy(sim.T, target))
        loss = ce + distill + agg
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        sync()
        return float(loss.detach())


class LanguageModelReference:
    """transformers' PyTorch decoder (`AutoModelForCausalLM`, fp32, eval) on a checkpoint, with the calls
    `bench lm` times: the prefill (the prompt's forward with a fresh cache, logits of the last position only)
    and greedy `generate` of exactly `steps` tokens."""

    def __init__(self, directory: str):
        torch.set_num_threads(os.cpu_count() or 1)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        self.model.eval().to(DEVICE)

    def prefill_call(self, ids: np.ndarray) -> Callable[[], None]:
        ids = to_device(ids).long()
        return blocking(lambda: self.model(input_ids=ids, use_cache=True, logits_to_keep=1))

    def generate(self, ids: np.ndarray, steps: int) -> np.ndarray:
        with torch.inference_mode():
            out = self.model.generate(input_ids=to_device(ids).long(), attention_mask=torch.ones_like(
                to_device(ids)).long(), do_sample=False, max_new_tokens=steps, min_new_tokens=steps,
                pad_token_id=0)
        return out[:, ids.shape[1]:].cpu().numpy()

    def generate_call(self, ids: np.ndarray, steps: int) -> Callable[[], None]:
        return blocking(lambda: self.generate(ids, steps))
