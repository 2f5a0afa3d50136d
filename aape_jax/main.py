"""Entry point: `python -m aape_jax.main --config experiments/<exp>.py:<args> --workdir DIR`.

Multi-host: every process runs the same command. On Cloud TPU pods and Slurm
`jax.distributed` is configured automatically; elsewhere pass
`--coordinator_address HOST:PORT --num_processes N --process_id I`.
On SIGTERM a run checkpoints at the next step boundary and exits with code 75
(`aape_jax.distributed.PREEMPTED_EXIT_CODE`); the same command resumes it.
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from aape_jax import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (path:args)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and summaries")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0's coordinator")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-host: index of this process")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
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
    task = config.get("task", "classification")
    if task == "retrieval":
        from aape_jax.retrieval.train import train_and_evaluate as train_retrieval

        metrics = train_retrieval(config, _WORKDIR.value)
        if distributed.is_main_process():
            print(" ".join(f"{k}={v:.2f}" for k, v in metrics.items() if isinstance(v, float)))
        return
    if task != "classification":
        raise app.UsageError(f"config.task is {task!r}; choose 'classification' or 'retrieval'")

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
    if metrics["method"] != "aape" or jax.process_count() > 1:
        return  # the inference API below is AAPE's, single-process (its Orbax restore would wait for the others)
    # The inference API on a few test images: what a user calls after training.
    classifier = AAPEClassifier.load(_WORKDIR.value)
    dataset = load_dataset(config)
    sample = dataset.test[:: max(1, len(dataset.test) // 4)][:4]
    predicted = classifier.predict([e.image for e in sample], dataset.classnames)
    for example, name in zip(sample, predicted):
        print(f"{example.key}: predicted {name!r}, true {dataset.classnames[example.label]!r}")


if __name__ == "__main__":
    app.run(main)
