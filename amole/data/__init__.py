"""Framework-free data layer: BIG-bench, Natural Instructions, SNLI, Dolly and synthetic data, Dirichlet
partitions, per-client splits, tokenization and batching."""

from amole.data.bigbench import TaskSource, load_task, load_tasks, parse_task, read_task_file
from amole.data.dirichlet import dirichlet_indices, dirichlet_partition, group_histograms
from amole.data.dolly import load_dolly, parse_dolly
from amole.data.errors import DataSourceError, TaskFormatError, UnknownTaskError
from amole.data.example import ClientSplits, Example
from amole.data.fetch import default_cache_dir, fetch_tasks
from amole.data.natinst import load_natinst_task, parse_natinst_task
from amole.data.prompt import DEFAULT_TEMPLATE, PromptFormat
from amole.data.snli import load_snli, parse_snli
from amole.data.splits import split_client, task_per_client
from amole.data.synthetic import SYNTHETIC_TASKS, synthetic_source, synthetic_task
from amole.data.tokenize import IGNORE_INDEX, batches, collate, encode, pad_id_of

__all__ = [
    "DEFAULT_TEMPLATE",
    "IGNORE_INDEX",
    "SYNTHETIC_TASKS",
    "ClientSplits",
    "DataSourceError",
    "Example",
    "PromptFormat",
    "TaskFormatError",
    "TaskSource",
    "UnknownTaskError",
    "batches",
    "collate",
    "default_cache_dir",
    "dirichlet_indices",
    "dirichlet_partition",
    "encode",
    "fetch_tasks",
    "group_histograms",
    "load_dolly",
    "load_natinst_task",
    "load_snli",
    "load_task",
    "load_tasks",
    "pad_id_of",
    "parse_dolly",
    "parse_natinst_task",
    "parse_snli",
    "parse_task",
    "read_task_file",
    "split_client",
    "synthetic_source",
    "synthetic_task",
    "task_per_client",
]
