"""Framework-free data layer: BIG-bench and synthetic tasks, per-client splits, tokenization and batching."""

from amole.data.bigbench import TaskSource, load_task, load_tasks, parse_task, read_task_file
from amole.data.errors import TaskFormatError, UnknownTaskError
from amole.data.example import ClientSplits, Example
from amole.data.fetch import default_cache_dir, fetch_tasks
from amole.data.prompt import DEFAULT_TEMPLATE, PromptFormat
from amole.data.splits import split_client, task_per_client
from amole.data.synthetic import SYNTHETIC_TASKS, synthetic_source, synthetic_task
from amole.data.tokenize import IGNORE_INDEX, batches, collate, encode, pad_id_of

__all__ = [
    "DEFAULT_TEMPLATE",
    "IGNORE_INDEX",
    "SYNTHETIC_TASKS",
    "ClientSplits",
    "Example",
    "PromptFormat",
    "TaskFormatError",
    "TaskSource",
    "UnknownTaskError",
    "batches",
    "collate",
    "default_cache_dir",
    "encode",
    "fetch_tasks",
    "load_task",
    "load_tasks",
    "pad_id_of",
    "parse_task",
    "read_task_file",
    "split_client",
    "synthetic_source",
    "synthetic_task",
    "task_per_client",
]
