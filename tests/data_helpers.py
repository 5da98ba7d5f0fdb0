"""Config and build helpers shared by the data tests."""
from configs import common
from ctt_jax import data


def dataset_config(name, batch_size=None, **data_keys):
  """base_config() with `name`'s dataset defaults, then `data.<key>` = value for each key."""
  config = common.apply_dataset_defaults(common.base_config(), name)
  if batch_size is not None:
    config.batch_size = batch_size
  return common.update(config, {f'data.{k}': v for k, v in data_keys.items()})


def build(config, **kwargs):
  """build_datasets as a single process (unless the test says otherwise)."""
  kwargs.setdefault('process_index', 0)
  kwargs.setdefault('process_count', 1)
  return data.build_datasets(config, **kwargs)
