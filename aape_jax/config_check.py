"""Checks a run's config before any work: its values, and the workdir's record of earlier runs.

`validate(config)`: every numeric field in range, every choice a known one; a
`ConfigError` names each bad field and its value (`config.batch_size is -4
(must be an integer >= 1)`). `config.task` picks the rules: the fields every
task shares (`aape_jax/configs/trainer.py`) and the task's own
(`classification.py`, `retrieval.py`, `captioning.py`, `vqa.py`); absent fields
are skipped.

`resume_record(config, workdir, git)`: a workdir records the config its
checkpoints and metrics were made with (`config.json`). A rerun whose config
differs in a field that changes what training means stops with
`ConfigDriftError`, listing the changed fields, unless
`config.resume_with_changes` is true: then the change is appended to the
record's `history` list (with the step resumed from) and the run goes on.
Only the fields in `IGNORED_ON_RESUME` (what is logged or kept, where files
go, what is evaluated, how the same computation is laid out on devices) may
change silently. The record is returned for the caller to write once every
check has passed.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging

from aape_jax import storage
from aape_jax.errors import ConfigError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"

# Fields that do not change what training computes (a prefix covers its sub-fields). Everything
# else, including fields added or removed since the workdir was made, counts as a change.
IGNORED_ON_RESUME: tuple[str, ...] = (
    "resume_with_changes",  # this switch itself
    # output only: logging, checkpoint retention and cadence, where the feature cache lives
    "log_every_steps", "checkpoint_keep", "checkpoint_every_epochs", "feature_store",
    # evaluation only: what is evaluated after training, and in what batches
    "eval_batch_size", "evaluate_split", "report_zeroshot", "transfer_targets",
    "eval", "eval_primary", "eval_block", "eval_ties",  # retrieval's evaluation sets and ranking
    "coco_metrics", "decoding",  # captioning's scores and how its evaluation captions are decoded
    "vqa.shots", "vqa.style", "vqa.max_questions",  # which VQA evaluations run and how they are scored
    # layout only: the same global batch and step on other devices (equal up to float rounding)
    "num_devices", "parallelism", "decode_workers",
    "model.text_memory_gb",  # how the same step is chunked and recomputed, not what it computes
)

TASKS = ("classification", "retrieval", "captioning", "vqa")
PROMPTED_METHODS = ("aape", "cupl")  # methods that read config.prompts.path

_ABSENT = object()
_Rule = Callable[[Any], str | None]  # None when the value is fine, else why not


# ------------------------------------------------------------------ values


def _get(config: Any, path: str) -> Any:
    node = config
    for key in path.split("."):
        try:
            if key not in node:
                return _ABSENT
            node = node[key]
        except TypeError:  # not a mapping
            return _ABSENT
    return node


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _rule(ok: Callable[[Any], bool], why: str) -> _Rule:
    return lambda v: None if ok(v) else why


def _integer(minimum: int) -> _Rule:
    return _rule(lambda v: _is_int(v) and v >= minimum, f"must be an integer >= {minimum}")


def _real(minimum: float, strict: bool = False, below: float | None = None) -> _Rule:
    bound = (f"> {minimum}" if strict else f">= {minimum}") + ("" if below is None else f" and < {below}")

    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > minimum if strict else v >= minimum) and (below is None or v < below)

    return _rule(ok, f"must be a finite number {bound}")


def _choice(choices) -> _Rule:
    choices = tuple(choices)
    return _rule(lambda v: v in choices, "choose one of " + ", ".join(repr(c) for c in choices))


_boolean = _rule(lambda v: isinstance(v, bool), "must be true or false")
_string = _rule(lambda v: isinstance(v, str), "must be a string")
_template = _rule(lambda v: isinstance(v, str) and "{}" in v, "must be a string with '{}' where the class name goes")


def _common_rules() -> list[tuple[str, _Rule]]:
    """Fields of both tasks (optimisation, batches, checkpoints, the AAPE modules)."""
    from aape_jax.clip.tiny import GEOMETRIES
    from aape_jax.models.aggregator import AGGREGATORS

    return [
        ("clip", _string), ("random_clip_geometry", _choice(GEOMETRIES)),
        ("clip_dtype", _choice(("float32", "bfloat16", "float16"))),
        ("dataset.num_views", _integer(1)),
        ("model.aggregator", _choice(AGGREGATORS)), ("model.num_heads", _integer(1)),
        ("model.aggregator_hidden", _integer(1)), ("model.generator_hidden", _integer(1)),
        ("loss.distill_weight", _real(0)), ("loss.aggregator_weight", _real(0)),
        ("optim.name", _choice(("sgd", "adamw"))), ("optim.learning_rate", _real(0, strict=True)),
        ("optim.momentum", _real(0, below=1)), ("optim.weight_decay", _real(0)),
        ("optim.warmup_epochs", _integer(0)), ("optim.warmup_lr", _real(0)), ("optim.grad_clip", _real(0)),
        ("batch_size", _integer(1)), ("num_epochs", _integer(0)), ("seed", _integer(0)),
        ("parallelism", _choice(("jit", "pmap"))), ("num_devices", _integer(0)),
        ("eval_batch_size", _integer(1)), ("feature_store", _string), ("decode_workers", _integer(0)),
        ("checkpoint_keep", _integer(1)), ("checkpoint_every_epochs", _integer(1)),
        ("init", _string), ("log_every_steps", _integer(1)), ("resume_with_changes", _boolean),
    ]


def _classification_rules() -> list[tuple[str, _Rule]]:
    from aape_jax.data.datasets import SOURCES
    from aape_jax.data.pipeline import ON_BAD_IMAGE
    from aape_jax.methods import METHODS
    from aape_jax.models.heads import COMBINE_MODES, TOKEN_POSITIONS

    return [
        ("method", _choice(METHODS)), ("protocol", _choice(("base2new", "fewshot", "transfer"))),
        ("dataset.name", _string), ("dataset.root", _string), ("dataset.source", _choice(SOURCES)),
        ("dataset.shots", _integer(1)), ("dataset.on_bad_image", _choice(ON_BAD_IMAGE)),
        ("dataset.synthetic_classes", _integer(2)), ("dataset.synthetic_train_per_class", _integer(1)),
        ("dataset.synthetic_test_per_class", _integer(1)),
        ("prompts.path", _string), ("prompts.fallback_to_templates", _boolean),
        ("prompts.max_per_class", _integer(0)),
        ("model.combine", _choice(COMBINE_MODES)), ("model.num_tokens", _integer(1)),
        ("model.token_position", _choice(TOKEN_POSITIONS)), ("model.template", _template),
        ("model.text_memory_gb", _real(0, strict=True)),
        ("baseline.templates", _choice(("single", "ensemble"))), ("baseline.meta_ratio", _integer(1)),
        ("baseline.kg_weight", _real(0)),
        ("evaluate_split", _choice(("test", "val"))), ("report_zeroshot", _boolean),
    ]


def _retrieval_rules() -> list[tuple[str, _Rule]]:
    from aape_jax.retrieval.metrics import TIES
    from aape_jax.retrieval.train_step import SCORES

    return [
        ("dataset.max_captions", _integer(0)), ("model.score", _choice(SCORES)), ("model.alpha", _real(0)),
        ("eval_block", _integer(1)), ("eval_ties", _choice(TIES)),
    ]


def _captioning_rules() -> list[tuple[str, _Rule]]:
    from aape_jax.captioning.model import IMAGE_INPUTS, METHODS
    from aape_jax.lm.generate import METHODS as DECODING
    from aape_jax.lm.tiny import FAMILIES

    return [
        ("method", _choice(METHODS)), ("lm", _string), ("random_lm_family", _choice(FAMILIES)),
        ("lm_dtype", _choice(("float32", "bfloat16", "float16"))),
        ("lm_param_dtype", _choice(("float32", "bfloat16", "float16"))),
        ("dataset.max_captions", _integer(0)), ("dataset.augment", _boolean),
        ("model.image_input", _choice(IMAGE_INPUTS)), ("model.num_image_tokens", _integer(0)),
        ("model.num_aape_tokens", _integer(1)), ("compare_limber", _boolean), ("prompt", _string),
        ("max_caption_tokens", _integer(1)), ("coco_metrics", _boolean),
        ("decoding.method", _choice(DECODING)), ("decoding.num_beams", _integer(1)),
        ("decoding.length_penalty", _real(0)), ("decoding.max_new_tokens", _integer(1)),
    ]


def _vqa_rules() -> list[tuple[str, _Rule]]:
    from aape_jax.vqa import STYLES

    shots = _rule(lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(n) and n >= 0 for n in v),
                  "must be a non-empty list of integers >= 0")
    return _captioning_rules() + [
        ("vqa.name", _choice(("synthetic", "vqav2"))), ("vqa.root", _string), ("vqa.annotations_dir", _string),
        ("vqa.check_files", _boolean), ("vqa.max_questions", _integer(0)), ("vqa.max_train_questions", _integer(0)),
        ("vqa.synthetic_train", _integer(1)), ("vqa.synthetic_test", _integer(1)), ("vqa.shots", shots),
        ("vqa.style", _choice(STYLES)), ("vqa.finetune_questions", _integer(0)), ("vqa.finetune_epochs", _integer(1)),
        ("vqa.finetune_batch_size", _integer(1)), ("vqa.finetune_learning_rate", _real(0, strict=True)),
    ]


def _fmt(v: Any) -> str:
    if v is _ABSENT:
        return "<absent>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def problems(config: Any, device_count: int | None = None) -> list[str]:
    """One line per bad field ("config.FIELD is VALUE (why)"); empty when the config can run."""
    task = _get(config, "task")
    task = "classification" if task is _ABSENT else task
    if task not in TASKS:
        return [f"config.task is {_fmt(task)} ({_choice(TASKS)(task)})"]
    task_rules = {"classification": _classification_rules, "retrieval": _retrieval_rules,
                  "captioning": _captioning_rules, "vqa": _vqa_rules}[task]
    rules = _common_rules() + task_rules()
    out = []
    for path, check in rules:
        value = _get(config, path)
        why = None if value is _ABSENT else check(value)
        if why:
            out.append(f"config.{path} is {_fmt(value)} ({why})")
    bad = {line.split()[0] for line in out}  # a field already reported is not checked against others
    return out + _cross_field_problems(config, task, device_count, bad)


def _cross_field_problems(config: Any, task: str, device_count: int | None, bad: set[str]) -> list[str]:
    out = []
    if device_count is None:
        import jax

        device_count = jax.device_count()
    num_devices, batch, init = (_get(config, k) for k in ("num_devices", "batch_size", "init"))
    if "config.num_devices" not in bad and _is_int(num_devices) and num_devices > device_count:
        out.append(f"config.num_devices is {num_devices} (only {device_count} devices are available; 0: all)")
    n = num_devices if _is_int(num_devices) and 0 < num_devices <= device_count else device_count
    if "config.batch_size" not in bad and _is_int(batch) and batch % n:
        out.append(f"config.batch_size is {batch} (must be divisible by the {n} devices of the data axis; "
                   "set config.num_devices to use fewer)")
    if ("config.init" not in bad and isinstance(init, str) and init
            and not storage.path(os.path.join(init, "checkpoints")).is_dir()):
        out.append(f"config.init is {init!r} (no checkpoints/ folder there: it must be the workdir of a run)")
    if task in ("retrieval", "captioning"):
        primary, sets = _get(config, "eval_primary"), _get(config, "eval")
        if primary is not _ABSENT and sets is not _ABSENT and primary not in sets:
            out.append(f"config.eval_primary is {_fmt(primary)} (not one of the sets of config.eval: "
                       f"{sorted(sets)})")
    method, path, dataset = (_get(config, k) for k in ("method", "prompts.path", "dataset.name"))
    if task == "classification" and method in PROMPTED_METHODS and path == "" and isinstance(dataset, str):
        from aape_jax.data import toyworld as toyworld_data

        if dataset != "synthetic" and dataset not in toyworld_data.TASKS:
            out.append(f"config.prompts.path is '' (method {method!r} needs a CuPL-format JSON of class "
                       f"descriptions for dataset {dataset!r}; only 'synthetic' and the toy-world tasks "
                       "generate their own)")
    return out


def backbone_notes(config: Any, clip_config: Any) -> list[str]:
    """What the config means on the loaded backbone (`clip_config`) that it would not on CLIP: one line per
    difference, logged once the backbone is known (not errors: the run computes the same thing, slower)."""
    notes = []
    if (_get(config, "model.token_position") == "suffix" and _get(config, "model.combine") == "token"
            and not clip_config.text.causal):
        notes.append("config.model.token_position is 'suffix' on a SigLIP backbone: its text tower is "
                     "bidirectional, so the class prefixes' keys/values cannot be cached and every (image, class) "
                     "pair runs the whole sequence (the same scores as the cache would give on a causal tower, "
                     "more compute per step)")
    return notes


def validate(config: Any, device_count: int | None = None) -> None:
    """Raises `ConfigError` naming every bad field and its value (see `problems`)."""
    found = problems(config, device_count)
    if found:
        raise ConfigError("; ".join(found),
                          hint="fix the named field(s), e.g. --config.batch_size=32 (aape_jax/configs/ "
                               "documents every field)")


# ------------------------------------------------------------------ resume


class ConfigDriftError(ConfigError):
    """The workdir's checkpoints or metrics were made with a config that differs in `changes`.

    Attributes:
      changes: `(field, recorded value, new value)` of every changed field.
    """

    hint = ("use a new --workdir for the new config, or add --config.resume_with_changes=true to continue "
            "from this workdir's checkpoints with the new values (the change is recorded in its config.json)")

    def __init__(self, message: str, changes: list[tuple[str, Any, Any]]):
        super().__init__(message)
        self.changes = changes


def _leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], tree


def changed_fields(recorded: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """`(field, recorded, current)` of the fields that differ, outside `IGNORED_ON_RESUME`.

    Values are compared after a JSON round trip (as config.json stores them);
    a field on one side only is a change (`_ABSENT` on the other).
    """
    old, new = (dict(_leaves(json.loads(json.dumps(c)))) for c in (recorded, current))
    out = []
    for field in sorted(old.keys() | new.keys()):
        a, b = old.get(field, _ABSENT), new.get(field, _ABSENT)
        # 1 == 1.0 is no change, but True == 1 is
        same = a is not _ABSENT and b is not _ABSENT and a == b and isinstance(a, bool) == isinstance(b, bool)
        if not same and not any(field == f or field.startswith(f + ".") for f in IGNORED_ON_RESUME):
            out.append((field, a, b))
    return out


def latest_checkpoint_step(workdir: str) -> int | None:
    """The highest step under `workdir/checkpoints`; None when there is none."""
    ckpts = storage.path(os.path.join(workdir, "checkpoints"))
    steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
    return max(steps, default=None)


def resume_record(config: Any, workdir: str, git: str) -> dict:
    """The `config.json` payload for this run: `{"config", "git", "history"}`.

    Raises:
      ConfigDriftError: `workdir` holds checkpoints or metrics made with a
        config that differs outside `IGNORED_ON_RESUME` (or whose config.json
        is missing or unreadable), and `config.resume_with_changes` is not
        true. The first line of the message lists the changes.
    """
    current = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    record = {"config": current, "git": git, "history": []}
    results = [name for name, made in (("checkpoints", latest_checkpoint_step(workdir) is not None),
                                       ("metrics", storage.path(os.path.join(workdir, METRICS_FILE)).is_file())) if made]
    if not results:
        return record  # nothing was made with an earlier config (or there was none)
    path, what = os.path.join(workdir, CONFIG_FILE), " and ".join(results)
    try:
        previous = json.loads(storage.read_text(path))
        if not isinstance(previous, dict) or not isinstance(previous.get("config"), dict):
            raise ValueError("no 'config' object in it")
    except (OSError, ValueError) as e:
        previous, changes, shown = None, [], []
        first = (f"{workdir} holds {what}, but {path} is missing or unreadable ({type(e).__name__}: {e}): "
                 "cannot tell which config they were made with")
    else:
        record["history"] = list(previous.get("history") or [])
        changes = changed_fields(previous["config"], current)
        if not changes:
            return record
        shown = [f"config.{f}: {_fmt(a)} -> {_fmt(b)}" for f, a, b in changes]  # one line per change
        more = f"; and {len(changes) - 8} more" if len(changes) > 8 else ""
        first = f"{workdir} holds {what} made with a different config; changed: {'; '.join(shown[:8])}{more}"
    if _get(config, "resume_with_changes") is not True:
        raise ConfigDriftError(first + "".join(f"\n  {line}" for line in shown), changes)
    record["history"].append({
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "resumed_from_step": latest_checkpoint_step(workdir),
        "previous_git": None if previous is None else previous.get("git"), "git": git,
        "changes": None if previous is None else {f: [None if v is _ABSENT else v for v in (a, b)]
                                                   for f, a, b in changes},
    })
    logging.warning("resuming %s with a changed config (config.resume_with_changes): %s", workdir,
                    "; ".join(shown) or "unrecorded")
    return record
