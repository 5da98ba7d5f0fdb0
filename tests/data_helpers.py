"""Config and build helpers shared by the data tests."""
from configs.common import base_config
from ctt_jax import data


def dataset_config(name, batch_size=None, **data_keys):
  """base_config() with `name`'s dataset defaults, then `data.<key>` = value for each key."""
  config = base_config()
  data.apply_dataset_defaults(config, name)
  if batch_size is not None:
    config.batch_size = batch_size
  for key, value in data_keys.items():
    config.data[key] = value
  return config


def build(config, **kwargs):
  """build_datasets as a single process (unless the test says otherwise)."""
  kwargs.setdefault('process_index', 0)
  kwargs.setdefault('process_count', 1)
  return data.build_datasets(config, **kwargs)
