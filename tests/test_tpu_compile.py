"""The TPU compile check's arithmetic, HLO reading and table bookkeeping, without libtpu.

The compile itself needs the TPU venv (`.ci/tpu_compile_check` runs it); here: the
collective counter on a real sharded program compiled for 4 fake CPU devices, the roofline
and fits rules, the topology table, XLA's out-of-HBM message, and the table script's
resume and batch-search logic.
"""
import importlib.util
import json
import os

import pytest

from ctt_jax import layout
from ctt_jax import tpu_compile
from tests import fake_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    'tpu_compile_table', os.path.join(ROOT, 'tools', 'tpu_compile_table.py'))
table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table)

# A sum over a sharded axis needs an all-reduce; top_k over a sharded axis gathers it.
_SHARDED_PROGRAM = r'''
import json
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from ctt_jax import sharding, tpu_compile
mesh = sharding.make_mesh(jax.devices())
x = jax.ShapeDtypeStruct((4, 64), jnp.float32, sharding=NamedSharding(mesh, P(None, 'data')))
def f(x):
  return x.sum(), jax.lax.top_k(x, 3)[1]
hlo = jax.jit(f, out_shardings=NamedSharding(mesh, P())).lower(x).compile().as_text()
print(json.dumps({'n': len(jax.devices()), 'logical': tpu_compile.count_collectives(hlo),
                  'raw': tpu_compile.count_collectives(hlo, logical=False)}))
'''


def test_collectives_of_a_program_compiled_for_four_fake_devices():
  out = fake_devices.run_program(_SHARDED_PROGRAM, num_devices=4)
  assert out['n'] == 4
  assert out['logical']['all-reduce'] >= 1
  assert out['logical']['all-gather'] + out['logical']['all-to-all'] >= 1
  assert set(out['logical']) == set(tpu_compile.COLLECTIVES)
  for kind in tpu_compile.COLLECTIVES:
    assert out['raw'][kind] >= out['logical'][kind]


HLO = '''
%async_collective_fusion.1 (p: s32[2,5,512]) -> s32[2,5,2048] {
  %all-gather.11 = s32[2,5,2048]{2,1,0:T(8,128)} all-gather(%p), channel_id=98
}
%async_collective_fusion.2 (p: s32[2,5,512]) -> s32[2,5,2048] {
  %all-gather.13 = s32[2,5,2048]{2,1,0:T(8,128)S(1)} all-gather(%p), channel_id=98
}
ENTRY %main {
  %ars = (f32[16]{0:T(128)}, /*index=5*/f32[8]{0}) all-reduce-start(%a, %b), channel_id=3
  %ard = (f32[16]{0:T(128)}, f32[8]{0}) all-reduce-done(%ars)
  %ag = f32[2,5,2048]{2,1,0} all-gather(%q), channel_id=97, dimensions={2}
  %cp = f32[4]{0} collective-permute(%r), channel_id=5, source_target_pairs={{0,1}}
  %rs = f32[4]{0} reduce-scatter(%s), channel_id=6, dimensions={0}
  %ata = s32[4,1,128]{2,1,0} all-to-all(%t), channel_id=7, dimensions={0}
  %ar = f32[] all-reduce(%u), replica_groups={}, to_apply=%add
}
'''


def test_count_collectives_counts_operations_and_instructions():
  assert tpu_compile.count_collectives(HLO) == {
      'all-reduce': 2, 'all-gather': 2, 'reduce-scatter': 1, 'all-to-all': 1,
      'collective-permute': 1}
  raw = tpu_compile.count_collectives(HLO, logical=False)
  assert raw['all-gather'] == 3 and raw['all-reduce'] == 2  # -done is not counted
  top = tpu_compile.repeated_collectives(HLO, top=1)[0]
  assert top == {'kind': 'all-gather', 'shape': 's32[2,5,2048]', 'instructions': 2,
                 'operations': 1}


def test_roofline_names_the_slower_bound():
  chip = tpu_compile.CHIPS['v5e']
  hbm = tpu_compile.roofline(flops=1e12, bytes_accessed=819e9, chip=chip, dtype='bfloat16')
  assert hbm['bound'] == 'HBM' and hbm['roofline_s'] == pytest.approx(1.0)
  assert hbm['compute_s'] == pytest.approx(1e12 / 197e12)
  compute = tpu_compile.roofline(flops=394e12, bytes_accessed=1e9, chip=chip, dtype='float32')
  assert compute['bound'] == 'compute' and compute['roofline_s'] == pytest.approx(2.0)


def test_fits_keeps_the_margin():
  assert tpu_compile.fits(14.3, 16) and not tpu_compile.fits(14.5, 16)
  assert tpu_compile.fits(15.9, 16, margin=0.0)


def test_chip_table_holds_the_published_figures():
  assert {g: (c.hbm_gib, c.peak_bf16_flops / 1e12, c.hbm_bytes_per_s / 1e9)
          for g, c in tpu_compile.CHIPS.items()} == {
      'v4': (32, 275, 1200), 'v5e': (16, 197, 819), 'v5p': (95, 459, 2765),
      'v6e': (32, 918, 1638)}


@pytest.mark.parametrize('name,canonical,chips,options', [
    ('v5e:2x2', 'v5e:2x2', 4, {'chips_per_host_bounds': (2, 2, 1)}),
    ('v5e-8', 'v5e:2x4', 8, {'chips_per_host_bounds': (2, 4, 1)}),
    ('v6e:2x4', 'v6e:2x4', 8, {'chips_per_host_bounds': (2, 4, 1)}),
    ('v5e:4x4', 'v5e:4x4', 16, {'chips_per_host_bounds': (2, 2, 1)}),
    ('v4-8', 'v4:2x2x1', 4, {'chip_config_name': 'megacore',
                             'chips_per_host_bounds': (2, 2, 1)}),
    ('v4:2x2x2', 'v4:2x2x2', 8, {'chip_config_name': 'megacore',
                                 'chips_per_host_bounds': (2, 2, 1)}),
    ('v5p-8', 'v5p:2x2x1', 4, {'chip_config_name': 'megacore',
                               'chips_per_host_bounds': (2, 2, 1)}),
])
def test_parse_topology(name, canonical, chips, options):
  topo = tpu_compile.parse_topology(name)
  assert (topo.name, topo.num_chips, dict(topo.options)) == (canonical, chips, options)


@pytest.mark.parametrize('name', ['v3-8', 'v5e', 'v5e:2x2x1', 'v4:2x2', 'tpu'])
def test_unknown_topology_is_one_sentence(name):
  with pytest.raises(tpu_compile.CompileCheckError,
                     match=r'^(Unknown TPU topology|TPU topology).*\.$'):
    tpu_compile.parse_topology(name)


@pytest.mark.skipif(importlib.util.find_spec('libtpu') is not None,
                    reason='libtpu is installed here')
def test_missing_libtpu_is_one_sentence():
  with pytest.raises(tpu_compile.CompileCheckError,
                     match='needs libtpu.*setup_tpu_compile_env.sh'):
    tpu_compile.topology_devices(tpu_compile.parse_topology('v5e:2x2'))


def test_the_paper_batch_is_laid_out_over_the_slice_or_refused_in_one_sentence():
  from configs import cityscapes  # pylint: disable=g-import-not-at-top
  config = cityscapes.get_config('1_30')
  assert tpu_compile.plan_layout(config, 8) == layout.Layout(2, 4)  # v5e-8
  assert tpu_compile.plan_layout(config, 4) == layout.Layout(2, 2)  # v4-8, v5p-8
  assert tpu_compile.plan_layout(cityscapes.get_config('1_30,batch_size=16'), 8) == (
      layout.Layout(8, 1))
  with pytest.raises(tpu_compile.CompileCheckError,
                     match='128 devices cannot be laid out .* use batch_size=4'):
    tpu_compile.plan_layout(config, 128)


def test_out_of_hbm_message_becomes_a_row():
  message = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for '
             'HLO temporaries (32.00G) exceeds available HBM (15.75G).')
  refused = tpu_compile.out_of_hbm(message)
  assert refused['fits'] is False
  assert refused['total_gib'] == pytest.approx(32.0)
  assert refused['available_gib'] == pytest.approx(15.75)
  assert tpu_compile.out_of_hbm('INVALID_ARGUMENT: something else') is None


def test_a_failed_compile_process_is_named():
  assert 'OOM killer' in table.how_it_ended(-9)
  assert table.how_it_ended(-11) == 'was killed by SIGSEGV'
  assert table.how_it_ended(1) == 'exited with status 1'
  assert table.how_it_ended(0) == 'printed no result line'


def test_table_appends_rows_and_resumes(tmp_path):
  path = str(tmp_path / 'results' / 'tpu_compile.json')
  rows = table.main_rows()
  assert len({table.row_key(r) for r in rows}) == len(rows)
  assert list(table.pending(rows, [])) == rows
  table.append_row(path, {**rows[0], 'fits': True})
  table.append_row(path, {**rows[2], 'fits': False})
  done = table.load_rows(path)
  assert [table.row_key(r) for r in done] == [table.row_key(rows[0]), table.row_key(rows[2])]
  left = list(table.pending(rows + rows, done))  # duplicates asked twice run once
  assert left == [r for i, r in enumerate(rows) if i not in (0, 2)]
  assert not os.path.exists(path + '.tmp')
  with open(path) as f:
    assert set(json.load(f)) == {'rows'}


def test_batch_search_doubles_then_bisects():
  assert table.next_batch_to_try({}) == 1
  assert table.next_batch_to_try({1: True}) == 2
  assert table.next_batch_to_try({1: True, 2: True, 4: True}) == 8
  assert table.next_batch_to_try({1: True, 2: True, 4: True, 8: False}) == 6
  assert table.next_batch_to_try({1: True, 2: True, 4: True, 8: False, 6: True}) == 7
  assert table.next_batch_to_try({1: True, 2: True, 4: True, 8: False, 6: True,
                                   7: False}) is None
  assert table.next_batch_to_try({1: False}) is None
  assert table.next_batch_to_try({1: True}, limit=1) is None


def test_batch_search_starts_from_the_linear_estimate():
  # HBM 2 + 3 p GiB on a 16 GiB chip: batch 4 fits (14), 5 does not (17).
  assert table.linear_estimate({1: 5.0, 2: 8.0}, 16.0) == 4
  assert table.linear_estimate({1: 5.0}, 16.0) is None  # one point: no line
  assert table.linear_estimate({1: 5.0, 2: 5.0}, 16.0) is None  # flat: no extrapolation
  assert table.next_batch_to_try({1: True, 2: True}, estimate=4) == 4
  assert table.next_batch_to_try({1: True, 2: True, 4: True}, estimate=4) == 5
  assert table.next_batch_to_try({1: True, 2: True, 4: True, 5: False}, estimate=4) is None
  # An estimate outside what is known is pulled inside the bracket.
  assert table.next_batch_to_try({1: True, 2: True, 8: False}, estimate=12) == 7
  # A line that missed by one batch: the next batch is the edge.
  assert table.next_batch_to_try({2: True, 29: True, 30: True}, estimate=29) == 31
  # A line that proved too low is dropped: double, then bisect.
  assert table.next_batch_to_try({1: True, 4: True}, estimate=2) == 8
  assert table.next_batch_to_try({1: True, 4: True, 8: False}, estimate=2) == 6
  # A line beyond the limit tries the limit, and a fitting limit ends the search.
  assert table.next_batch_to_try({2: True}, estimate=462) == 64
  assert table.next_batch_to_try({2: True, 64: True}, estimate=462) is None
  rows = [{**table.row(table.CITYSCAPES, 'v5e:2x4', per_chip_batch=p), 'fits': p < 5,
           'hbm_gib': 2.0 + 3 * p, 'hbm_capacity_gib': 16} for p in (1, 2, 4, 5)]
  rows.append({**table.row(table.CITYSCAPES, 'v4:2x2x1', per_chip_batch=2), 'fits': True,
               'hbm_gib': 9.0, 'hbm_capacity_gib': 32})
  # The search's limit fits on v5p; v5e 4x4 and remat in float32 are not searched.
  rows.append({**table.row(table.CITYSCAPES, 'v5p:2x2x1', per_chip_batch=table.SEARCH_LIMIT),
               'fits': True, 'hbm_gib': 80.0, 'hbm_capacity_gib': 95})
  rows.append({**table.row(table.CITYSCAPES, 'v5e:4x4', per_chip_batch=2), 'fits': True,
               'hbm_gib': 8.0, 'hbm_capacity_gib': 16})
  rows.append({**table.row(table.CITYSCAPES, 'v4:2x2x1', per_chip_batch=2, remat='blocks'),
               'fits': True, 'hbm_gib': 7.0, 'hbm_capacity_gib': 32})
  found = {(b['topology'], b['remat']): b for b in table.largest_batches(rows)}
  assert {k: (b['largest_fitting'], b['status']) for k, b in found.items()} == {
      ('v5e:2x4', ''): (4, 'settled'), ('v4:2x2x1', ''): (2, 'not settled'),
      ('v5p:2x2x1', ''): (table.SEARCH_LIMIT, 'search limit'),
      ('v5e:4x4', ''): (2, 'not searched'), ('v4:2x2x1', 'blocks'): (2, 'not searched')}
  assert found[('v5e:2x4', '')]['linear_estimate'] == 4
  markdown = table.largest_batch_markdown(rows)
  assert '| 4 |' in markdown and '>= 2 (not settled)' in markdown
  assert f'>= {table.SEARCH_LIMIT} (search limit)' in markdown
  assert markdown.count('(not searched)') == 2


def test_batch_search_borrows_the_line_of_the_same_program_on_another_slice():
  def compiled(topology, p, hbm, capacity, **kw):
    return {**table.row(table.CITYSCAPES, topology, per_chip_batch=p, **kw),
            'fits': hbm <= capacity, 'hbm_gib': hbm, 'hbm_capacity_gib': capacity}
  # v5e: HBM 2 + 3 p GiB; v5p (95 GiB, of which 85.5 may be used and still fit) has one
  # batch compiled, so it takes v5e's slope: 2 + (85.5 - 8.2) / 3 = 27.8.
  rows = [compiled('v5e:2x4', 1, 5.0, 16), compiled('v5e:2x4', 2, 8.0, 16),
          compiled('v5p:2x2x1', 2, 8.2, 95)]
  assert tpu_compile.HBM_MARGIN == 0.10
  assert table.search_estimate(table.row(table.CITYSCAPES, 'v5p:2x2x1'), rows) == 27
  assert table.search_estimate(table.row(table.CITYSCAPES, 'v5e:2x4'), rows) == 4
  # Nothing of the base compiled yet: no capacity to aim at.
  assert table.search_estimate(table.row(table.CITYSCAPES, 'v4:2x2x1'), rows) is None
  # Another program (dtype) lends nothing.
  rows.append(compiled('v4:2x2x1', 2, 6.0, 32, dtype='bfloat16'))
  assert table.search_estimate(table.row(table.CITYSCAPES, 'v4:2x2x1', dtype='bfloat16'),
                               rows) is None
  # Its own two batches win over another slice's: 4 + (85.5 - 12.2) / 2 = 40.7.
  rows += [compiled('v5p:2x2x1', 4, 12.2, 95)]
  assert table.search_estimate(table.row(table.CITYSCAPES, 'v5p:2x2x1'), rows) == 40
  found = {b['topology']: b for b in table.largest_batches(rows) if b['dtype'] == 'float32'}
  assert found['v5p:2x2x1']['linear_estimate'] == 40


def test_batch_search_line_ignores_the_batches_near_capacity():
  def compiled(topology, p, hbm, capacity, fits=None):
    return {**table.row(table.CITYSCAPES, topology, per_chip_batch=p),
            'fits': hbm <= 0.9 * capacity if fits is None else fits, 'hbm_gib': hbm,
            'hbm_capacity_gib': capacity}
  # v4 as compiled on 2026-11-30 (bf16): affine at first, then the compiler squeezes the
  # program under the chip's HBM, and a refused compile reports only its temporaries.
  v4 = [compiled('v4:2x2x1', p, h, 32) for p, h in
        ((2, 6.83), (12, 23.52), (15, 27.89), (16, 26.18), (24, 29.57))]
  v4.append(compiled('v4:2x2x1', 32, 30.94, 32, fits=False))
  # Its line is 2 -> 12 (1.67 GiB per image pair; 12 + (28.8 - 23.52) / 1.67 = 15.2),
  # not 16 -> 24 or 24 -> 32.
  assert table.search_estimate(table.row(table.CITYSCAPES, 'v4:2x2x1'), v4) == 15
  # v5p borrows that line through its own batch: 2 + (85.5 - 6.81) / 1.67 = 49.1.
  v5p = [compiled('v5p:2x2x1', 2, 6.81, 95)]
  assert table.search_estimate(table.row(table.CITYSCAPES, 'v5p:2x2x1'), v4 + v5p) == 49
  # A slice of the same chip lends its line first, though it has fewer batches: v5e 4x4
  # takes v5e 2x4's 2.16 GiB per image pair, 2 + (14.4 - 6.93) / 2.16 = 5.5.
  v5e = [compiled('v5e:2x4', 2, 6.86, 16), compiled('v5e:2x4', 4, 11.17, 16)]
  v5e_16 = [compiled('v5e:4x4', 2, 6.93, 16)]
  assert table.search_estimate(table.row(table.CITYSCAPES, 'v5e:4x4'), v4 + v5e + v5e_16) == 5
  assert table.search_estimate(table.row(table.CITYSCAPES, 'v5e:4x4'), v4 + v5e_16) == 6


def test_slope_rows_give_every_slice_of_their_programs_a_line():
  once = table.main_rows() + table.v6e_rows()
  slopes = table.slope_rows()
  assert not {table.row_key(r) for r in slopes} & {table.row_key(r) for r in once}
  def compiled(r):
    return {**r, 'fits': True, 'hbm_gib': 1.0 + r['per_chip_batch'], 'hbm_capacity_gib': 100}
  rows = [compiled(r) for r in once]
  for s in slopes:
    program = [r for r in once if table.program_key(r) == table.program_key(s)]
    # The program was compiled once on this slice, at a smaller batch ...
    (batch,) = [r['per_chip_batch'] for r in program if r['topology'] == s['topology']]
    assert batch < s['per_chip_batch']
    # ... and has no line anywhere before the slope row, one on every slice after it.
    assert all(table.search_estimate(r, rows) is None for r in program)
    assert all(table.search_estimate(r, rows + [compiled(s)]) is not None for r in program)
  # With them, only float32 with remat (bfloat16 fits more without it) has no estimate.
  rows += [compiled(s) for s in slopes]
  no_line = [r for r in once if r['step'] == 'train' and table.search_estimate(r, rows) is None]
  assert no_line and all((r['remat'], r['dtype']) == ('blocks', 'float32') for r in no_line)


def test_configs_and_topologies_select_rows_and_search_bases():
  wanted = table.selection('cityscapes', 'v5e:2x4,v4:2x2x1')
  bases = list(filter(wanted, table.search_rows()))
  assert {(b['config'], b['topology']) for b in bases} == {
      (table.CITYSCAPES, 'v5e:2x4'), (table.CITYSCAPES, 'v4:2x2x1')}
  assert {b['dtype'] for b in bases} == {'bfloat16', 'float32'}
  # The supervised baseline is searched too, first (its compiles are the cheapest), then
  # bf16 with remat on v5e-8.
  assert [(b['method'], b['topology'], b['remat']) for b in bases[:3]] == [
      ('supervised', 'v5e:2x4', ''), ('supervised', 'v4:2x2x1', ''),
      ('ctt', 'v5e:2x4', 'blocks')]
  assert {(b['method'], b['remat']) for b in bases[3:]} == {('ctt', '')}
  voc = [r for r in table.main_rows() if table.selection('voc_aug,voc_classic', '')(r)]
  assert voc and all('voc' in r['config'] for r in voc)
  assert list(filter(table.selection('', ''), table.main_rows())) == table.main_rows()


def test_scaling_rows_compile_the_configs_own_values_once():
  rows = table.scaling_rows()  # 3 pairs + 4 banks + 3 crops, one of each the config's
  assert len(rows) == 10 and len(list(table.pending(rows, []))) == 8
  own = [r for r in rows if not r['overrides']]
  assert own == 3 * [table.row(table.CITYSCAPES, 'v5e:2x4', dtype='bfloat16')]
  assert own[0] in table.main_rows()
  assert {r['overrides'] for r in rows} >= {'num_pairs=3', 'bank_size=1024',
                                            'data.crop_size=512x1024'}


def test_row_config_argument_is_the_global_batch():
  r = table.row(table.CITYSCAPES, 'v5e:2x4', method='supervised', dtype='bfloat16',
                per_chip_batch=2, remat='blocks', overrides='bank_size=256')
  path, arg = table.config_arg(r, num_chips=8)
  assert path == 'configs/cityscapes.py'
  assert arg == ('1_30,method=supervised,num_pairs=1,model.dtype=bfloat16,'
                 'model.remat=blocks,model.conv_impl=xla,batch_size=16,bank_size=256')


def test_rows_compiled_with_the_cpu_graph_compile_again():
  # Rows from before conv_impl was recorded were traced with the compiling CPU's graph.
  rows = table.main_rows()
  old = {k: v for k, v in rows[0].items() if k != 'conv_impl'}
  assert list(table.pending(rows, [{**old, 'fits': True}])) == rows
  assert list(table.pending(rows, [{**rows[0], 'fits': True}])) == rows[1:]


def test_auto_convolutions_compile_as_on_the_tpu():
  from configs import cityscapes  # pylint: disable=g-import-not-at-top
  config = cityscapes.get_config('1_30')
  assert config.model.conv_impl == 'auto'
  assert tpu_compile.as_on_tpu(config).model.conv_impl == 'xla'
  assert config.model.conv_impl == 'auto'  # the caller's config is not changed
  explicit = cityscapes.get_config('1_30,model.conv_impl=im2col')
  assert tpu_compile.as_on_tpu(explicit).model.conv_impl == 'im2col'


def test_markdown_table_has_one_line_per_row():
  done = {**table.row(table.CITYSCAPES, 'v5e:2x4', dtype='bfloat16', per_chip_batch=2),
          'hbm_gib': 9.5, 'hbm_capacity_gib': 16, 'fits': True, 'tflop_per_chip_step': 4.2,
          'gib_accessed_per_chip_step': 80.0, 'roofline_s': 0.1, 'bound': 'HBM',
          'hbm_argument_gib': 1.5, 'hbm_temp_gib': 6.25,
          'collectives': {'all-gather': 2, 'all-reduce': 13, 'reduce-scatter': 0,
                          'collective-permute': 37}}
  refused = {**done, 'fits': False, 'tflop_per_chip_step': None, 'roofline_s': None,
             'bound': None, 'collectives': None, 'gib_accessed_per_chip_step': None,
             'hbm_argument_gib': None}
  supervised_eval = {**done, 'method': 'supervised', 'step': 'eval', 'per_chip_batch': 1}
  lines = table.markdown([done, refused, supervised_eval]).splitlines()
  assert len(lines) == 5 and lines[0].count('|') == lines[2].count('|')
  assert '| 2 + 2 | - | train |' in lines[2]
  assert ('| 9.50 (1.50 + 6.25) of 16 | yes | 4.20 | 80.0 | 0.100 | HBM '
          '| 2 ag, 13 ar, 37 cp |') in lines[2]
  assert '| 9.50 of 16 | NO | - | - | - | - | - |' in lines[3]
  assert '| 1 image | - | eval |' in lines[4]


def test_settings_are_checked_before_anything_compiles():
  from configs import demo  # pylint: disable=g-import-not-at-top
  with pytest.raises(tpu_compile.CompileCheckError,
                     match='does not split over 4 devices; use mesh.data=2'):
    tpu_compile.compile_report(demo.get_config('batch_size=2,mesh.data=4'), 'v5e:2x2')
  with pytest.raises(tpu_compile.CompileCheckError, match="model.remat='blocks' has no effect"):
    tpu_compile.compile_report(demo.get_config('model.remat=blocks'), 'v5e:2x2')


def test_scaling_rows_have_a_table_of_their_own():
  points = table.scaling_points()
  assert [(axis, value) for axis, value, _ in points] == [
      ('num_pairs', '1'), ('num_pairs', '2'), ('num_pairs', '3'),
      ('bank_size', '128'), ('bank_size', '256'), ('bank_size', '512'),
      ('bank_size', '1024'), ('data.crop_size', '256x512'), ('data.crop_size', '384x768'),
      ('data.crop_size', '512x1024')]
  # The config's own value is one row (no overrides), shared by the three axes.
  own = [overrides for _, _, overrides in points if not overrides]
  assert len(own) == 3 and len({table.row_key(r) for r in table.scaling_rows()}) == 8
  compiled = {**table.scaling_rows()[0], 'fits': True, 'hbm_gib': 2.43,
              'hbm_argument_gib': 0.73, 'hbm_temp_gib': 1.5, 'hbm_capacity_gib': 16,
              'tflop_per_chip_step': 2.05, 'gib_accessed_per_chip_step': 32.4,
              'roofline_s': 0.043, 'bound': 'HBM', 'collectives': {'all-gather': 1}}
  lines = table.scaling_markdown([compiled]).split('\n')
  assert len(lines) == 2 + len(points)
  assert lines[2] == '| num_pairs | 1 | 2.43 (0.73 + 1.50) | 2.05 | 32.4 | 0.043 | 1 ag |'
  assert lines[3] == '| num_pairs | 2 | not compiled yet | - | - | - | - |'
  # The scaling rows are one batch each by design: not lines of the largest-batch table.
  assert table.largest_batches([compiled]) == []
  shipped = {**compiled, **table.row(table.CITYSCAPES, 'v5e:2x4', dtype='bfloat16')}
  assert len(table.largest_batches([compiled, shipped])) == 1


def test_scaling_rows_are_found_by_the_values_they_recorded():
  # Compiled when the config's bank_size was 128; the config's own value may differ now.
  def compiled(overrides, num_pairs=2, bank_size=128, crop_size=(256, 512), hbm=4.81):
    return {**table.scaling_row(overrides), 'fits': True, 'hbm_gib': hbm,
            'hbm_capacity_gib': 16, 'tflop_per_chip_step': 4.15,
            'gib_accessed_per_chip_step': 74.7, 'roofline_s': 0.098, 'bound': 'HBM',
            'num_pairs': num_pairs, 'bank_size': bank_size, 'crop_size': list(crop_size)}
  rows = [compiled(''), compiled('bank_size=256', bank_size=256, hbm=5.07),
          compiled('num_pairs=3', num_pairs=3, hbm=6.21)]
  assert table.scaling_base(rows) == {'num_pairs': '2', 'bank_size': '128',
                                      'data.crop_size': '256x512'}
  assert table.find_scaling(rows, 'bank_size', '128', 'whatever')['hbm_gib'] == 4.81
  assert table.find_scaling(rows, 'bank_size', '256', '')['hbm_gib'] == 5.07
  assert table.find_scaling(rows, 'num_pairs', '3', '')['hbm_gib'] == 6.21
  assert table.find_scaling(rows, 'bank_size', '512', '') is None


def test_mesh_rows_come_with_the_data_parallel_rows_they_are_compared_with():
  rows = table.mesh_rows()
  as_written = [r for r in rows if r['per_chip_batch'] == 0]
  assert [(r['topology'], r['step']) for r in as_written] == [
      ('v5e:2x4', 'train'), ('v4:2x2x1', 'train'), ('v5p:2x2x1', 'train'),
      ('v5e:2x4', 'eval'), ('v6e:2x4', 'train')]
  assert rows[-2:] == [as_written[-1], table.data_parallel_row(as_written[-1])]  # v6e last
  partners = {(r['topology'], r['step']): r['per_chip_batch'] for r in rows
              if r['per_chip_batch']}
  # batch_size=16: 2 + 2 per chip on 8 chips, 4 + 4 on 4; eval: one image per chip.
  assert partners == {('v5e:2x4', 'train'): 2, ('v4:2x2x1', 'train'): 4,
                      ('v5p:2x2x1', 'train'): 4, ('v5e:2x4', 'eval'): 1,
                      ('v6e:2x4', 'train'): 2}
  path, arg = table.config_arg(table.data_parallel_row(as_written[1]), num_chips=4)
  assert arg.endswith('batch_size=16')
  # The eval step reads data.eval_batch_size: one image per chip is set there.
  path, arg = table.config_arg(table.data_parallel_row(as_written[3]), num_chips=8)
  assert arg.endswith('data.eval_batch_size=8')


def test_an_eval_row_records_the_eval_batch_it_compiled(monkeypatch):
  def fake_report(config, topology, steps):
    step = {'total_gib': 0.85, 'fits': True, 'compile_s': 1.0, 'flops': 1.25e12,
            'bytes_accessed': 2**30, 'global_batch': int(config.data.eval_batch_size)}
    return {'hbm_capacity_gib': 16, 'num_chips': 8, 'num_hosts': 1,
            'global_batch': int(config.batch_size), 'num_pairs': 2, 'bank_size': 256,
            'crop_size': [256, 512], 'mesh': {'data': 2, 'space': 4}, steps[0]: step}
  monkeypatch.setattr(tpu_compile, 'compile_report', fake_report)
  as_written = table.row(table.CITYSCAPES, 'v5e:2x4', per_chip_batch=0, step='eval')
  compiled = table.compile_row(as_written)
  assert compiled['global_batch'] == 1  # the config's eval_batch_size; its batch_size is 2
  assert table.images_cell(compiled) == '1'
  assert table.compile_row(table.data_parallel_row(as_written))['global_batch'] == 8


def test_the_page_is_generated_from_the_rows(tmp_path):
  def compiled(r, hbm, **extra):
    return {**r, 'fits': True, 'hbm_gib': hbm, 'hbm_capacity_gib': 16,
            'tflop_per_chip_step': 1.33, 'gib_accessed_per_chip_step': 45.7,
            'roofline_s': 0.06, 'bound': 'HBM', 'collectives': {'collective-permute': 9},
            'num_chips': 8, 'measured': '2026-12-07', **extra}
  mesh = table.row(table.CITYSCAPES, 'v5e:2x4', per_chip_batch=0)
  rows = [compiled(mesh, 3.47, mesh={'data': 2, 'space': 4}, global_batch=2),
          compiled(table.data_parallel_row(mesh), 8.43, mesh=None, global_batch=16)]
  rows += [compiled(table.row(table.CITYSCAPES, 'v5e:2x4', per_chip_batch=p), 2.0 + 3 * p,
                    global_batch=8 * p, fits=p < 5) for p in (1, 4, 5)]
  output = tmp_path / 'rows.json'
  output.write_text(json.dumps({'rows': rows}))
  page = tmp_path / 'docs' / 'tpu.md'
  table.main([f'--output={output}', '--render', f'--page={page}'])
  text = page.read_text()
  assert text.startswith('# TPU compile table\n\nGenerated by `python tools/tpu_compile_table.py '
                         '--render --output=')
  assert '(5 rows, compiled 2026-12-07 to 2026-12-07)' in text
  assert '| config | method | dtype | remat | v5e:2x4 |' in text
  assert '| cityscapes.py:1_30 | ctt | float32 | - | 4 |' in text
  lines = text.splitlines()
  written = next(i for i, line in enumerate(lines) if 'as written: data 2 x space 4' in line)
  assert lines[written].startswith('| v5e:2x4 | train | as written: data 2 x space 4 | paper '
                                   '| 2 + 2 '
                                   '| 2/8 + 2/8 (2x4) | 3.47 of 16 | 1.33 | 45.7 | 9 cp |')
  assert lines[written + 1].startswith('| v5e:2x4 | train | data parallel: data 8 | paper '
                                       '| 16 + 16 '
                                       '| 2 + 2 | 8.43 of 16 |')
  assert ('| v4:2x2x1 | train | data parallel, 4 + 4 per chip | - | - | - | not compiled yet |'
          in text)
  assert table.DEFAULT_PAGE == os.path.join(ROOT, 'docs', 'results', 'tpu.md')
  assert table.DEFAULT_OUTPUT == os.path.join(ROOT, 'tools', 'results', 'tpu_compile.json')
