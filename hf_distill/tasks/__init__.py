"""Task adapters: one per domain. Importing this package registers the built-in ones."""

from . import classification, embedding, language, ranking, vision  # noqa: F401  (register the adapters)
from .base import TASKS, TaskAdapter, base_model_of, resolve_task

__all__ = ["TASKS", "TaskAdapter", "base_model_of", "resolve_task"]
