"""User-facing data errors, also when they happen inside a running tf.data pipeline.

A check that needs a decoded file runs inside the pipeline (a `tf.numpy_function` or a
`tf.debugging.Assert`). TensorFlow then wraps our sentence in its own error text and a
traceback, so the sentence travels between two markers and `NumpyStream` (streams.py)
turns the TensorFlow error back into a `DataError` holding only that sentence.
"""
from __future__ import annotations

import re

_START, _END = 'CTT_DATA_ERROR<<', '>>CTT'
_TAGGED = re.compile(re.escape(_START) + '(.*?)' + re.escape(_END), re.DOTALL)


class DataError(ValueError):
  """A problem with the user's data or data config; the message says what to do."""


def tag(message: str) -> str:
  """Wraps `message` so it can be recovered from a TensorFlow error text."""
  return _START + message + _END


def untag(text: str) -> str | None:
  """The first tagged message inside `text`, or None."""
  match = _TAGGED.search(text)
  return match.group(1) if match else None


def tf_tag(parts):
  """In-graph `tag`: joins string scalars/literals into one tagged string tensor."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.strings.join([_START, *parts, _END])


class PipelineError(DataError):
  """Raised inside `tf.numpy_function` bodies; its text carries the markers."""

  def __init__(self, message: str):
    super().__init__(tag(message))
