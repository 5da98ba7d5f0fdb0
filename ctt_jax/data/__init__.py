"""Input pipelines (tf.data on the host, numpy batches out; formats in docs/INTERFACES.md).

    datasets = build_datasets(config, start_step=step)
    batch = {'labeled': next(datasets.labeled), 'unlabeled': next(datasets.unlabeled)}
    for eval_batch in datasets.eval_batches(): ...

Streams are pure functions of (config.seed, step): resuming needs only the step.
Modules: pipeline (entry point), streams (index arithmetic, tf.data), augment (weak
view, eval padding), decode (file reading and checks), splits (partitions), sources (a
dataset's random-access example lists), one module per dataset, errors. Per-dataset
settings live with the configs (configs/<dataset>.py; configs/common.py DATASETS for tests
and benchmarks).
"""
from ctt_jax.data.errors import DataError
from ctt_jax.data.pipeline import (DATASET_NAMES, Datasets, build_datasets, class_info,
                                   load_source, write_labeled_ids)

__all__ = ['DATASET_NAMES', 'DataError', 'Datasets', 'build_datasets', 'class_info',
           'load_source', 'write_labeled_ids']
