"""Input pipeline throughput: images/s of the labeled, unlabeled and eval streams.

    python benchmarks/data_throughput.py [--batches 30] [--json out.json]
        [--cityscapes_dir DIR [--cityscapes_splits_dir DIR]] [--camvid_dir DIR]

Measures the synthetic set always, CamVid when its folder exists (data.data_dir default:
$CTT_CAMVID_DIR or ../shared/data/camvid), and an extracted Cityscapes tree when
--cityscapes_dir (or $CTT_CITYSCAPES_DIR) points at one. Each dataset uses its
configs/common.py DATASETS settings (crop, scale, batch size). Prints a table and
writes the numbers as JSON (stdout, or --json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from configs import common  # pylint: disable=g-import-not-at-top
from configs.common import base_config  # pylint: disable=g-import-not-at-top
from ctt_jax import data  # pylint: disable=g-import-not-at-top
from ctt_jax.data import camvid  # pylint: disable=g-import-not-at-top


def images_per_second(stream, batches: int, warmup: int = 2) -> tuple[float, int]:
  """(images/s, images timed) over `batches` batches after `warmup` untimed ones."""
  for _ in range(warmup):
    next(stream)
  count, start = 0, time.perf_counter()
  for _ in range(batches):
    try:
      batch = next(stream)
    except StopIteration:
      break
    count += len(batch['image'])
  return count / (time.perf_counter() - start), count


def measure(name: str, config, batches: int) -> dict:
  start = time.perf_counter()
  ds = data.build_datasets(config, process_index=0, process_count=1)
  build_s = time.perf_counter() - start
  crop = tuple(config.data.crop_size)
  row = {'dataset': name, 'build_s': round(build_s, 2), 'batch_size': config.batch_size,
         'crop': crop, 'eval_size': ds.eval_size, 'streams': {}}
  for stream_name, stream in (('labeled', ds.labeled), ('unlabeled', ds.unlabeled),
                              ('eval', ds.eval_batches())):
    rate, count = images_per_second(stream, batches)
    row['streams'][stream_name] = {'images_per_s': round(rate, 1), 'images': count}
  ds.close()
  return row


def configs(args):
  """(name, config) of every dataset present."""
  out = []
  config = base_config()
  common.apply_dataset_defaults(config, 'synthetic')
  out.append(('synthetic', config))

  config = base_config()
  common.apply_dataset_defaults(config, 'camvid')
  config.data.data_dir = args.camvid_dir or ''
  if os.path.isdir(os.path.join(camvid.data_dir_of(config.data), 'train')):
    out.append(('camvid', config))

  cityscapes_dir = args.cityscapes_dir or os.environ.get('CTT_CITYSCAPES_DIR', '')
  if cityscapes_dir and os.path.isdir(os.path.join(cityscapes_dir, 'leftImg8bit')):
    config = base_config()
    common.apply_dataset_defaults(config, 'cityscapes')
    config.data.data_dir = cityscapes_dir
    config.data.source = 'folder'
    config.data.splits_dir = args.cityscapes_splits_dir
    config.data.split = '1_2'  # present in the packaged lists and easy to write for a test tree
    out.append(('cityscapes', config))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batches', type=int, default=30, help='timed batches per stream')
  parser.add_argument('--json', default='', help='write the results here')
  parser.add_argument('--camvid_dir', default='')
  parser.add_argument('--cityscapes_dir', default='')
  parser.add_argument('--cityscapes_splits_dir', default='',
                      help='lists for a partial tree (default: the packaged lists)')
  args = parser.parse_args()

  results = {'cpu_count': os.cpu_count(), 'batches': args.batches,
             'datasets': [measure(name, config, args.batches)
                          for name, config in configs(args)]}
  print(f'{"dataset":<11} {"stream":<10} {"images/s":>9}  {"shape":<16} build')
  for row in results['datasets']:
    for stream, numbers in row['streams'].items():
      size = row['eval_size'] if stream == 'eval' else row['crop']
      print(f'{row["dataset"]:<11} {stream:<10} {numbers["images_per_s"]:>9.1f}  '
            f'{"x".join(map(str, size)):<16} {row["build_s"]:.1f}s')
  text = json.dumps(results, indent=1)
  if args.json:
    with open(args.json, 'w') as f:
      f.write(text + '\n')
  else:
    print(text)


if __name__ == '__main__':
  main()
