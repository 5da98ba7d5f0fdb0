"""Where each dataset lives when `data.data_dir` is empty."""
from __future__ import annotations

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_data_dir(data_config, env_var: str, default: str = '') -> str:
  """`data.data_dir`, else the environment variable `env_var`, else `default`."""
  path = data_config.data_dir or os.environ.get(env_var, '') or default
  return os.path.expanduser(path)
