"""The method table: what differs between CTT and the paper's baselines (Table 5), decided
once from the config.

    method = methods.from_config(config)
    method.teachers_of[k]    # which networks' pseudo-labels supervise student k on xu
    method.network_names()   # what evaluation scores

The step, the training loop and evaluation read a `Method`; no other module compares
method names. A row of `TABLE` says, for one method:
- `teaches`: who teaches student k on unlabeled data: nobody, its own teacher, the other
  pairs' networks, or all of them;
- `pseudo_labels_from`: whose predictions those are: the EMA teachers, the students
  themselves (stop-gradient, "direct mutual teaching"), or none;
- `ema_teachers`: the teachers follow the students by EMA (False: self-training's teacher,
  loaded from the stage-1 run, stays fixed; and `supervised` with `supervised_ema=False`,
  which has no teachers at all);
- `eval_ensemble`: evaluation also scores the teachers' averaged softmax;
- `stage1_teacher`: the teachers come from a finished `supervised` run.
The config's `eval_networks='students'` (the authors' code) scores the students only: no
teachers and no ensemble in evaluation.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

ENSEMBLE_NETWORK = 'ensemble'
BANK_PUSH_MODES = ('after_update', 'before_update', 'none')
EVAL_NETWORKS = ('all', 'students')


class _Row(NamedTuple):
  teaches: str  # none | own | others | all
  pseudo_labels_from: str  # none | teachers | students
  ema_teachers: bool
  eval_ensemble: bool
  stage1_teacher: bool


TABLE = {
    'supervised': _Row('none', 'none', True, False, False),
    'mean_teacher': _Row('own', 'teachers', True, False, False),
    'mutual': _Row('others', 'students', True, False, False),
    'dual_teacher': _Row('all', 'teachers', True, False, False),
    'ctt': _Row('others', 'teachers', True, False, False),
    'ensemble': _Row('own', 'teachers', True, True, False),
    'self_training': _Row('own', 'teachers', False, False, True),
}
METHOD_NAMES = tuple(TABLE)


@dataclasses.dataclass(frozen=True)
class Method:
  """One method with the config's switches resolved (hashable, so it can be static)."""
  name: str
  num_pairs: int
  teachers_of: tuple[tuple[int, ...], ...]  # per student: the networks that teach it
  pseudo_labels_from: str  # none | teachers | students
  ema_teachers: bool
  eval_ensemble: bool  # the teachers' averaged softmax is scored
  stage1_teacher: bool
  eval_teachers: bool  # the teachers are scored (they exist and eval_networks is 'all')
  use_ct: bool
  use_hc: bool
  use_lc: bool
  bank_push: str  # after_update | before_update | none (what the step really does)

  @property
  def semi_supervised(self) -> bool:
    return self.pseudo_labels_from != 'none'

  @property
  def has_teachers(self) -> bool:
    """False only for `supervised` without its EMA copy: then nothing but the students
    exists to train, score or predict with."""
    return self.ema_teachers or self.stage1_teacher or self.semi_supervised

  @property
  def input_streams(self) -> int:
    """Batches per step: labeled, plus unlabeled for the semi-supervised methods."""
    return 2 if self.semi_supervised else 1

  def network_names(self) -> list[str]:
    """'student_0'.., 'teacher_0'.., and 'ensemble' where evaluation averages teachers."""
    roles = ('student', 'teacher') if self.eval_teachers else ('student',)
    names = [f'{role}_{k}' for role in roles for k in range(self.num_pairs)]
    return names + ([ENSEMBLE_NETWORK] if self.eval_ensemble else [])

  @property
  def default_network(self) -> str:
    """The network `--mode=predict` uses unless told otherwise."""
    if self.eval_ensemble:
      return ENSEMBLE_NETWORK
    return 'teacher_0' if self.eval_teachers else 'student_0'


def _teachers_of(teaches: str, num_pairs: int) -> tuple[tuple[int, ...], ...]:
  everyone = tuple(range(num_pairs))
  if teaches == 'none':
    return tuple(() for _ in everyone)
  if teaches == 'own':
    return tuple((k,) for k in everyone)
  if teaches == 'all':
    return tuple(everyone for _ in everyone)
  # 'others': with one pair there is no other network, so it falls back to its own
  # (= mean teacher, the paper's Table 6 n=1 row).
  return tuple(tuple(j for j in everyone if j != k) or (k,) for k in everyone)


def from_config(config) -> Method:
  """The `Method` of `config.method` with use_ct/use_hc/use_lc and bank_push applied."""
  if config.method not in TABLE:
    raise ValueError(f'Unknown method {config.method!r}; valid: {", ".join(TABLE)}.')
  if config.bank_push not in BANK_PUSH_MODES:
    raise ValueError(f'Unknown bank_push {config.bank_push!r}; valid: '
                     f'{", ".join(BANK_PUSH_MODES)}.')
  if config.eval_networks not in EVAL_NETWORKS:
    raise ValueError(f'Unknown eval_networks {config.eval_networks!r}; valid: '
                     f'{", ".join(EVAL_NETWORKS)}.')
  row = TABLE[config.method]
  n = int(config.num_pairs)
  semi = row.pseudo_labels_from != 'none'
  # Without teaching, the EMA copy exists only to be scored; `supervised_ema` may drop it.
  ema_teachers = row.ema_teachers and (semi or bool(config.supervised_ema))
  bank_push = config.bank_push
  if bank_push == 'before_update' and row.pseudo_labels_from != 'teachers':
    # The paper's order reuses the teacher pass of the pseudo-labels; without teachers
    # teaching there is none before the update, so the push happens after it.
    bank_push = 'after_update'
  has_teachers = ema_teachers or row.stage1_teacher or semi
  eval_teachers = has_teachers and config.eval_networks == 'all'
  return Method(
      name=config.method, num_pairs=n, teachers_of=_teachers_of(row.teaches, n),
      pseudo_labels_from=row.pseudo_labels_from, ema_teachers=ema_teachers,
      eval_ensemble=row.eval_ensemble and eval_teachers, stage1_teacher=row.stage1_teacher,
      eval_teachers=eval_teachers,
      use_ct=semi and bool(config.use_ct), use_hc=semi and bool(config.use_hc),
      use_lc=semi and bool(config.use_lc) and n > 1, bank_push=bank_push)
