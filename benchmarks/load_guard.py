"""The load-proof part of the benchmark protocol: raised priority for every thread, and
how much of the benchmark's CPUs other processes used while it measured.

Why: the 1-minute load average cannot tell the benchmark's own threads from anyone
else's, and a rising load slows PyTorch's OpenMP threads far more than XLA's pool, so a
ratio taken under load flatters ctt-jax (1.15 in a section whose load rose 0.95 -> 1.80,
1.20 when re-run at top priority). So:

- `set_priority(n)` puts every thread of this process at nice `n` (Linux nice values are
  per thread; new threads inherit their creator's). The scripts call it at start and
  again after each warm-up step, when XLA's and torch's pools exist, and record how many
  threads had to be fixed.
- `Sample`s of /proc/stat (busy time of the CPUs this process may run on, every process)
  and of this process's own CPU time (all threads, reaped children too) give, between two
  samples, `others_share` = (busy - own) / (wall x CPUs): the fraction of the benchmark's
  CPUs that other processes (and, on a VM, the hypervisor's steal) took.
- An interval is *disturbed* when `others_share - resolution > threshold`. `resolution`
  bounds the error of /proc/stat's 1/USER_HZ (10 ms) counters: a 20 ms step cannot be
  judged (resolution ~1), a 1 s step on 2 CPUs can, to ~1.5%.

Pure standard library: tests feed `busy_seconds` and `parse_nice` strings.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import statistics
import sys
import time

# /proc/stat cpuN fields: user nice system idle iowait irq softirq steal guest guest_nice.
# Busy = all but idle and iowait. Guest time is already inside user and nice; steal is
# CPU time the hypervisor gave another guest, i.e. load we did not get to use.
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
USER_HZ = os.sysconf('SC_CLK_TCK')
DEFAULT_THRESHOLD = 0.05


def busy_seconds(proc_stat: str, cpus, hz: int = USER_HZ) -> float:
  """Busy CPU seconds since boot summed over the CPUs numbered `cpus`, from the text of
  /proc/stat."""
  want = {f'cpu{c}' for c in cpus}
  total, seen = 0, set()
  for line in proc_stat.splitlines():
    fields = line.split()
    if fields and fields[0] in want:
      total += sum(int(fields[1 + i]) for i in BUSY_FIELDS if 1 + i < len(fields))
      seen.add(fields[0])
  if seen != want:
    raise ValueError(f'/proc/stat has no line for {", ".join(sorted(want - seen))}.')
  return total / hz


def own_cpu_seconds() -> float:
  """CPU seconds of this process, every thread (CLOCK_PROCESS_CPUTIME_ID, exact), plus
  its reaped children (the memory probes)."""
  t = os.times()
  return time.process_time() + t.children_user + t.children_system


@dataclasses.dataclass(frozen=True)
class Sample:
  wall: float  # time.perf_counter()
  busy: float  # busy CPU seconds of the benchmark's CPUs, all processes
  own: float  # CPU seconds of this process


def take_sample(cpus) -> Sample:
  with open('/proc/stat') as f:
    text = f.read()
  return Sample(time.perf_counter(), busy_seconds(text, cpus), own_cpu_seconds())


def shares(start: Sample, end: Sample, n_cpus: int, threshold: float,
           hz: int = USER_HZ) -> dict:
  """What happened on the benchmark's `n_cpus` CPUs between two samples (see the module
  docstring). Shares are of wall x n_cpus; others_share can dip below 0 by up to
  `resolution` (counter rounding)."""
  wall = end.wall - start.wall
  capacity = max(wall * n_cpus, 1e-9)
  own = end.own - start.own
  others = (end.busy - start.busy) - own
  # Each per-CPU counter and the children's time are whole ticks: < 1 tick error each.
  resolution = (n_cpus + 1) / hz / capacity
  out = {'span_s': wall, 'others_share': others / capacity, 'own_share': own / capacity,
         'resolution': resolution}
  out['disturbed'] = out['others_share'] - resolution > threshold
  return out


def robust_median(times, disturbed) -> dict:
  """The median over the undisturbed steps when at least half are undisturbed (the rest
  are dropped), else over all steps, flagged: `median_over` says which."""
  quiet = [t for t, d in zip(times, disturbed) if not d]
  n = len(times)
  if 2 * len(quiet) >= n:
    over = ('all' if len(quiet) == n else 'undisturbed')
    return {'median_s': float(statistics.median(quiet)), 'median_over': over,
            'undisturbed': len(quiet), 'steps': n}
  return {'median_s': float(statistics.median(times)), 'median_over': 'all, LOADED',
          'undisturbed': len(quiet), 'steps': n}


def median_note(m: dict) -> str:
  """'7 steps', '5 undisturbed of 7 steps' or '7 steps, only 2 undisturbed (LOADED)'."""
  if m['median_over'] == 'all':
    return f'{m["steps"]} steps'
  if m['median_over'] == 'undisturbed':
    return f'{m["undisturbed"]} undisturbed of {m["steps"]} steps'
  return f'{m["steps"]} steps, only {m["undisturbed"]} undisturbed (LOADED)'


# --- priority -----------------------------------------------------------------------------
def parse_nice(task_stat: str) -> int:
  """Field 19 (nice) of a /proc/<pid>/task/<tid>/stat line. The command name (field 2) is
  in parentheses and may hold spaces or ')', so count from the last ')'."""
  return int(task_stat.rsplit(')', 1)[1].split()[16])


def thread_nices() -> dict[int, int]:
  """{thread id: nice} of every live thread of this process."""
  nices = {}
  for tid in os.listdir('/proc/self/task'):
    try:
      with open(f'/proc/self/task/{tid}/stat') as f:
        nices[int(tid)] = parse_nice(f.read())
    except (OSError, IndexError, ValueError):
      pass  # the thread exited meanwhile
  return nices


AUTOGROUP = '/proc/self/autogroup'


def set_autogroup_nice(nice: int) -> str:
  """With kernel.sched_autogroup_enabled=1 the scheduler first shares the CPUs between
  sessions (autogroups) and only then applies nice within one, so a thread at nice -10
  still gets only its session's share (measured here: ~50% of the CPUs against one busy
  session). So a raised priority raises the session's autogroup too, and puts it back
  when the process exits; a lowered one leaves the session alone. Returns '' or the
  error."""
  before = autogroup_nice()
  if before is None or nice >= before:
    return ''
  try:
    _write_autogroup(nice)
  except OSError as e:
    return f'{AUTOGROUP}: {e.strerror}'
  atexit.register(_write_autogroup, before)
  return ''


def _write_autogroup(nice: int):
  with open(AUTOGROUP, 'w') as f:
    f.write(str(nice))


def autogroup_nice() -> int | None:
  try:
    with open(AUTOGROUP) as f:
      return int(f.read().split()[-1])
  except (OSError, ValueError, IndexError):
    return None


def set_priority(nice: int) -> dict:
  """Puts every thread of this process, and its session's autogroup, at `nice`. Returns
  the record the results keep: threads seen, how many had another nice (`reapplied`),
  `ok`, and the error if the process may not (raising priority needs root or
  CAP_SYS_NICE)."""
  reapplied, error = 0, set_autogroup_nice(nice)
  for tid, current in thread_nices().items():
    if current == nice:
      continue
    try:
      os.setpriority(os.PRIO_PROCESS, tid, nice)
      reapplied += 1
    except ProcessLookupError:
      pass
    except PermissionError as e:
      error = f'{type(e).__name__}: {e.strerror}'
  after = thread_nices()
  group = autogroup_nice()
  return {'requested': nice, 'threads': len(after), 'reapplied': reapplied,
          'ok': all(v == nice for v in after.values()) and (group is None or group <= nice),
          'nices': sorted(set(after.values())), 'autogroup_nice': group, 'error': error}


class LoadGuard:
  """The protocol of one run: the CPUs it may use, its priority, and the threshold of
  others' share above which an interval is disturbed."""

  def __init__(self, threshold: float = DEFAULT_THRESHOLD, priority: int | None = None):
    self.cpus = sorted(os.sched_getaffinity(0))
    self.threshold = threshold
    self.priority = priority
    self.priority_log = []

  def sample(self) -> Sample:
    return take_sample(self.cpus)

  def shares(self, start: Sample, end: Sample) -> dict:
    return shares(start, end, len(self.cpus), self.threshold)

  def enforce_priority(self, where: str) -> dict | None:
    """Re-applies the priority to every thread (pools created since get it too)."""
    if self.priority is None:
      return None
    record = {'where': where, **set_priority(self.priority)}
    self.priority_log.append(record)
    if not record['ok'] and len(self.priority_log) == 1:
      why = record['error'] or f'threads at nice {record["nices"]}'
      print(f'WARNING: could not put every thread at nice {self.priority} ({why}), so the '
            'results are flagged "priority not raised" (run as root, or pass --priority '
            f'{os.getpriority(os.PRIO_PROCESS, 0)}, your current nice).', file=sys.stderr)
    return record

  def priority_ok(self) -> bool:
    return all(r['ok'] for r in self.priority_log)

  def summary(self) -> dict:
    return {'cpus': self.cpus, 'threshold': self.threshold, 'priority': self.priority,
            'priority_ok': self.priority_ok(), 'priority_log': self.priority_log}


def add_protocol_args(parser) -> None:
  """--priority, --others_threshold, --strict, --timing: shared by the benchmark scripts."""
  parser.add_argument('--priority', type=int, default=-10,
                      help='nice value for every thread of the run (default -10; needs '
                           'root to raise; a non-root run warns and is flagged)')
  parser.add_argument('--others_threshold', type=float, default=DEFAULT_THRESHOLD,
                      help='share of the CPUs other processes may use before a step or '
                           'section counts as disturbed (default 0.05)')
  parser.add_argument('--strict', action='store_true',
                      help='exit non-zero if a section was loaded or the priority not set')
  parser.add_argument('--timing', choices=('wall', 'cpu'), default='wall',
                      help='step time: wall clock, or process CPU time (needs --threads 1)')


def check_timing_args(args, threads: int) -> None:
  """--timing=cpu measures one thread: with more, CPU time adds up the threads' time
  (and their spin-waiting), which is not a step time."""
  if args.timing == 'cpu' and threads != 1:
    sys.exit(f'--timing=cpu needs --threads 1 (this run would use {threads} CPUs).')
