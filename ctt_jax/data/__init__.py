"""Input pipelines (tf.data on the host, numpy batches out; formats in docs/INTERFACES.md).

    datasets = build_datasets(config, start_step=step)
    batch = {'labeled': next(datasets.labeled), 'unlabeled': next(datasets.unlabeled)}
    for eval_batch in datasets.eval_batches(): ...

Streams are pure functions of (config.seed, step): resuming needs only the step.
Modules: pipeline (entry point), streams (index arithmetic, tf.data), augment (weak
view, eval padding), decode (file reading and checks), splits (partitions), examples
(random-access lists), one module per dataset, defaults (per-dataset settings), errors.
"""
from ctt_jax.data.defaults import DATASET_DEFAULTS, apply_dataset_defaults
from ctt_jax.data.errors import DataError
from ctt_jax.data.pipeline import DATASET_NAMES, Datasets, build_datasets, write_labeled_ids

__all__ = ['DATASET_DEFAULTS', 'DATASET_NAMES', 'DataError', 'Datasets',
           'apply_dataset_defaults', 'build_datasets', 'write_labeled_ids']
