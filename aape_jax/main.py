"""Entry point: `python -m aape_jax.main --config experiments/<exp>.py:<args> --workdir DIR`.

Multi-host: every process runs the same command. On Cloud TPU pods and Slurm
`jax.distributed` is configured automatically; elsewhere pass
`--coordinator_address HOST:PORT --num_processes N --process_id I`.
On SIGTERM a run checkpoints at its next metrics fetch (every `log_every_steps`
steps, and at epoch ends) and exits with code 75
(`aape_jax.distributed.PREEMPTED_EXIT_CODE`); on Ctrl-C (SIGINT) it does the
same and exits with 130 (`INTERRUPTED_EXIT_CODE`); a second Ctrl-C aborts at
once (exit 130, the latest checkpoint kept). The same command resumes it.

Before any work the config is validated and compared with the one the
workdir's checkpoints were made with (`aape_jax.config_check`): a bad value or
a changed training field is a one-line error (exit 2) naming the fields.
`--config.num_epochs=0` evaluates without training; the inference demo at the
end then runs only if the workdir has a checkpoint.

A user mistake (a missing dataset root, a bad prompt file, a damaged
checkpoint, a full disk: `aape_jax.errors`) is printed as a one-line error
and hint, with exit code 2; the traceback is appended to WORKDIR/error.log, or
printed with `--verbose`.

`--workdir` (and `config.feature_store`, `config.init`) may be a Cloud Storage
folder, ``gs://BUCKET/run``: every host reads and writes it there
(`aape_jax.storage`); a missing bucket, missing credentials or a path that
cannot be written is an error before any work.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from aape_jax import distributed, errors, storage

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (path:args)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and summaries")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0's coordinator")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-host: index of this process")
_VERBOSE = flags.DEFINE_bool("verbose", False,
                             "print the traceback of a user error (else it goes to WORKDIR/error.log)")
ERROR_LOG = "error.log"
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    try:
        _main(argv)
    except KeyboardInterrupt:  # a Ctrl-C outside training, or a second one during it
        logging.flush()
        print("interrupted: rerun the same command to resume from the latest checkpoint", file=sys.stderr)
        sys.exit(distributed.INTERRUPTED_EXIT_CODE)
    except Exception as e:  # SystemExit (preemption: 75, Ctrl-C during training: 130) passes through
        code = errors.report(e, verbose=_VERBOSE.value, log_file=_error_log(_WORKDIR.value), prog="error")
        if code is None:
            raise
        logging.flush()
        sys.exit(code)


def _error_log(workdir: str) -> str | None:
    """WORKDIR/error.log (a bucket's too) when the workdir exists; None otherwise."""
    try:
        return os.path.join(workdir, ERROR_LOG) if storage.path(workdir).is_dir() else None
    except Exception:  # noqa: BLE001 - e.g. no credentials for a bucket: report the error without a log
        return None


def _print_captioning(metrics: dict) -> None:
    """The primary scores (AAPE's, then the LiMBeR baseline's), and a few captions or answers."""
    names = ("cider_d", "bleu_4", "meteor", "clip_s", "refclip_s", "vqa_accuracy", "vqa_accuracy_finetuned")
    keys = [f"{prefix}{k}" for prefix in ("", "limber_") for k in names]
    keys += sorted(k for k in metrics if k.endswith("shot"))
    print(" ".join(f"{k}={metrics[k]:.2f}" for k in keys if isinstance(metrics.get(k), float))
          + (" (random CLIP/decoder weights: these scores mean nothing)"
             if metrics["random_weights"] or metrics["random_lm"] else ""))
    for sample in metrics.get("samples", []):
        if "question" in sample:
            print(f"{sample['question']!r}: {sample['answer']!r} (humans: {sample['human_answers'][:3]})")
        else:
            print(f"{sample['key']}: {sample['caption']!r} (reference: {sample['references'][0]!r})")


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    # Orbax logs every save phase at INFO; keep ours readable.
    logging.get_absl_handler().addFilter(lambda record: "/orbax/" not in record.pathname)
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if not distributed.is_main_process():
        logging.set_verbosity(logging.WARNING)  # process 0 alone logs progress

    # Imported after jax.distributed is initialised: nothing may touch a backend before.
    config = _CONFIG.value
    if config.task == "retrieval":
        from aape_jax.retrieval.train import train_and_evaluate as train_retrieval

        metrics = train_retrieval(config, _WORKDIR.value)
        if distributed.is_main_process():
            print(" ".join(f"{k}={v:.2f}" for k, v in metrics.items() if isinstance(v, float)))
        return
    if config.task == "captioning":
        from aape_jax.captioning.train import train_and_evaluate as train_captioning

        metrics = train_captioning(config, _WORKDIR.value)
        if distributed.is_main_process():
            _print_captioning(metrics)
        return
    if config.task == "vqa":
        from aape_jax.captioning.vqa_train import train_and_evaluate as train_vqa

        metrics = train_vqa(config, _WORKDIR.value)
        if distributed.is_main_process():
            _print_captioning(metrics)
        return
    if config.task != "classification":
        raise app.UsageError(f"config.task is {config.task!r}; choose 'classification', 'retrieval', "
                             "'captioning' or 'vqa'")

    from aape_jax.config_check import latest_checkpoint_step
    from aape_jax.inference import AAPEClassifier
    from aape_jax.train import load_dataset, train_and_evaluate

    metrics = train_and_evaluate(config, _WORKDIR.value)
    if not distributed.is_main_process():
        return
    figures = {k: v for k, v in metrics.items() if isinstance(v, float) and k != "train_loss"}
    loss = metrics["train_loss"]
    print(
        f"{metrics['method']}: " + " ".join(f"{k}={v:.2f}" for k, v in figures.items())
        + (f" train_loss={loss:.4f}" if loss is not None else "")
        + (" (random CLIP weights: these accuracies mean nothing)" if metrics["random_weights"] else "")
    )
    if "zeroshot" in metrics:  # config.report_zeroshot: the reference on the same images
        print("zeroshot_clip: " + " ".join(f"{k}={v:.2f}" for k, v in metrics["zeroshot"].items()))
    if metrics["method"] != "aape" or jax.process_count() > 1:
        return  # the inference API below is AAPE's, single-process (its Orbax restore would wait for the others)
    if latest_checkpoint_step(_WORKDIR.value) is None:  # num_epochs=0 on a fresh workdir: nothing was trained
        print(f"inference demo skipped: {_WORKDIR.value} has no checkpoint (num_epochs={config.num_epochs}; "
              "AAPEClassifier.load needs a trained workdir)")
        return
    # The inference API on a few test images: what a user calls after training.
    classifier = AAPEClassifier.load(_WORKDIR.value)
    dataset = load_dataset(config)
    sample = dataset.test[:: max(1, len(dataset.test) // 4)][:4]
    predicted = classifier.predict([e.image for e in sample], dataset.classnames)
    for example, name in zip(sample, predicted):
        print(f"{example.key}: predicted {name!r}, true {dataset.classnames[example.label]!r}")


if __name__ == "__main__":
    app.run(main)
