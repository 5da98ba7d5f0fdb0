"""How one step is laid over the devices: a 2-D mesh, batch x image rows. No jax here.

    layout = plan(num_devices=8, batch=2, rows=256, feature_rows=32)
    layout.data, layout.space       # 2, 4: the batch over 2 devices, each image's rows over 4

The program (the paper's batch, hyper-parameters and numerics) stays as written; only how
its arrays are split over the chips changes. The rule (`mesh.data = mesh.space = 0`,
auto): the batch axis takes as many devices as the per-step batch allows,
gcd(batch, devices), and the rest split every image's rows. Rows are the one image axis
split, because they are the outer axis of an NHWC image (each shard a contiguous block)
and a convolution then only exchanges a few boundary rows (its halo) with its neighbours.

A layout is refused, with the nearest working choice, when the batch does not split over
`data`, when the crop's rows do not split evenly over `space` (jax places input arrays in
equal blocks), or when `space` exceeds the rows of the network's feature map (shards with
no feature row would only hold padding). Importing this module loads neither jax nor TF,
so config validation can use it.
"""
from __future__ import annotations

import dataclasses
import math


class LayoutError(ValueError):
  """A mesh the config cannot be laid out on: one sentence with the nearest working choice."""


@dataclasses.dataclass(frozen=True)
class Layout:
  data: int  # devices along the batch axis
  space: int  # devices along each image's rows

  @property
  def num_devices(self) -> int:
    return self.data * self.space

  def describe(self, batch: int, rows: int, images_per_example: int = 2) -> str:
    """'8 devices: data 2 x space 4; each chip holds 64 of the 256 rows of 1 labeled + 1
    unlabeled image' (per step)."""
    per_chip = batch // self.data
    images = (f'{per_chip} labeled + {per_chip} unlabeled image{"s" * (per_chip > 1)}'
              if images_per_example == 2 else f'{per_chip} image{"s" * (per_chip > 1)}')
    share = (f'{rows // self.space} of the {rows} rows of ' if self.space > 1 else '')
    return (f'{self.num_devices} device{"s" * (self.num_devices > 1)}: data {self.data} x '
            f'space {self.space}; each chip holds {share}{images} per step')


def feature_rows(crop_rows: int, model_name: str, output_stride: int) -> int:
  """Rows of the network's output (feature) map for a crop of `crop_rows` rows."""
  return int(crop_rows) // (4 if model_name == 'tiny' else int(output_stride))


def _check(num_devices: int, batch: int, rows: int, max_space: int, data: int,
           space: int) -> None:
  """Raises LayoutError if (data, space) does not lay out `batch` images of `rows` rows."""
  where = f'mesh.data={data}, mesh.space={space}'
  if data * space != num_devices:
    raise LayoutError(f'{where} make {data * space} devices but the run has {num_devices}; '
                      f'use mesh.data=0,mesh.space=0 (auto: data {math.gcd(batch, num_devices)}'
                      f' x space {num_devices // math.gcd(batch, num_devices)}).')
  if batch % data:
    fit = math.gcd(batch, num_devices)
    raise LayoutError(f'{where}: batch_size={batch} does not split over {data} devices; use '
                      f'mesh.data={fit} (mesh.space={num_devices // fit}).')
  if space > max_space or rows % space:
    # The nearest working choice: the smallest batch >= this one whose auto layout fits.
    bigger = next((b for b in range(batch, batch + num_devices + 1)
                   if num_devices // math.gcd(b, num_devices) <= max_space
                   and rows % (num_devices // math.gcd(b, num_devices)) == 0), None)
    if space > max_space:
      why = (f'{space} row shards are more than the {max_space} rows of the feature map of a '
             f'{rows}-row crop')
    else:
      why = f'the {rows} rows of a crop do not split into {space} equal shards'
    fix = (f'use batch_size={bigger} (scaling.rule to adapt the recipe) or fewer devices'
           if bigger is not None and bigger != batch else 'use fewer devices')
    raise LayoutError(f'{num_devices} devices cannot be laid out as {where} for batch_size='
                      f'{batch}: {why}; {fix}.')


def plan(num_devices: int, batch: int, rows: int, max_space: int, data: int = 0,
         space: int = 0) -> Layout:
  """The (data, space) mesh of `num_devices` for `batch` images of `rows` rows.

  data, space: the config's mesh.data and mesh.space; 0 is auto (the module's rule), one
  of them set fixes the other. max_space: the most row shards (the feature map's rows).
  """
  if data <= 0 and space <= 0:
    data = math.gcd(batch, num_devices)
  if data <= 0:
    data = max(1, num_devices // space)
  if space <= 0:
    space = max(1, num_devices // data)
  _check(num_devices, batch, rows, max_space, data, space)
  return Layout(data, space)


def plan_for_config(config, num_devices: int) -> Layout:
  """`plan` with the config's batch_size, crop rows and mesh keys."""
  rows = int(config.data.crop_size[0])
  return plan(num_devices, int(config.batch_size), rows,
              feature_rows(rows, config.model.name, config.model.output_stride),
              int(config.mesh.data), int(config.mesh.space))


def summary(config, num_devices: int) -> str:
  """The mesh a run of `config` uses on `num_devices` and each chip's share, one line."""
  from ctt_jax import methods  # pylint: disable=g-import-not-at-top  (plain Python)
  chosen = plan_for_config(config, num_devices)
  return chosen.describe(int(config.batch_size), int(config.data.crop_size[0]),
                         methods.from_config(config).input_streams)


def eval_row_shards(layout: Layout, eval_batch: int) -> int:
  """How many devices split each eval image's rows: `space` when the eval batch splits
  over `data`, else every device (a batch of one 512x1024 image is spread over all)."""
  return layout.space if eval_batch % layout.data == 0 else layout.num_devices


def check_eval(layout: Layout, eval_batch: int, eval_rows: int) -> None:
  """Raises LayoutError if the eval images' rows do not split over their shards."""
  shards = eval_row_shards(layout, eval_batch)
  if eval_rows % shards:
    fit = next(b for b in range(eval_batch, eval_batch + layout.data + 1)
               if b % layout.data == 0)
    raise LayoutError(f'The {eval_rows} rows of an eval image do not split into {shards} '
                      f'equal shards on data {layout.data} x space {layout.space}; use '
                      f'data.eval_batch_size={fit} or data.eval_size with rows divisible '
                      f'by {shards}.')
