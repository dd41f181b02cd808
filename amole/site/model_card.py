"""Export a kept model as a self-contained folder: the checked adapters, their JSON description and a model card.

The exported folder has the kept folder's format, so ``amole.load_personalized(path)`` (or ``amole generate
--model path``) loads it in one call; the README.md says where it comes from and how to use it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amole.site.personal import ADAPTERS_FILE, CARD_FILE, META_FILE, atomic_folder, load_adapter_tensors, read_meta


def _score(meta: Mapping[str, Any]) -> str:
    if meta.get("score") is None:
        return "not scored"
    return f"{meta['score']:.4f} {meta.get('metric') or ''}".strip()


def model_card(meta: Mapping[str, Any]) -> str:
    """A short README.md: origin (run, round, site, task), score, base model, adapters, how to load it."""
    base, adapter = meta["base"], meta["adapter"]
    held = meta["held_experts"]
    counts = [len(ids) for ids in held.values()]
    mean = sum(counts) / max(len(counts), 1)
    prompt = "the tokenizer's chat template" if meta.get("chat_template") else "the amole.data prompt template"
    template = meta.get("prompt", {}).get("template", "")
    lines = [
        f"# AMoLE personalized model: {meta.get('task') or 'site model'}",
        "",
        "A personalized adapter set trained with FedAMoLE (federated, heterogeneous LoRA mixture of experts) on "
        "top of a frozen base model. The base model weights are not in this folder: they are loaded by amole "
        "from the name below.",
        "",
        "| | |",
        "|---|---|",
        f"| run | `{meta.get('run_id') or '-'}` |",
        f"| site (client) | `{meta.get('client') or '-'}` |",
        f"| round | {meta.get('round')} |",
        f"| task | `{meta.get('task') or '-'}` |",
        f"| score on the site's test split | {_score(meta)} |",
        f"| base model | `{base['name']}`" + (f" (GGUF `{base['gguf_file']}`)" if base.get("gguf_file") else "") + " |",
        f"| quantization / dtype | {base['quantization']} / {base['dtype']} |",
        f"| adapters | rank {adapter['r']}, alpha {adapter['alpha']}, top-{adapter['top_k']} of the held experts, "
        f"shared expert: {adapter['shared_expert']}, on {', '.join(adapter['target_modules'])} |",
        f"| routed experts held per module | {mean:.1f} on average ({len(held)} modules) |",
        f"| saved | {meta.get('saved_at', '-')} |",
        "",
        "## Use it",
        "",
        "```python",
        "import amole",
        "",
        'model, tokenizer = amole.load_personalized("path/to/this/folder")',
        "```",
        "",
        "or from the shell:",
        "",
        "```bash",
        'amole generate --model path/to/this/folder --prompt "..."',
        "amole evaluate --model path/to/this/folder --data my_test.jsonl",
        "```",
        "",
        f"Prompts were built with {prompt}; `amole generate` applies it for you. By hand, put your text in "
        f"place of `{{input}}` in:",
        "",
        "```text",
        template,
        "```",
        "",
        f"Files: `{ADAPTERS_FILE}` (adapter tensors by module name), `{META_FILE}` (base model, adapter config, "
        "held experts, prompt format, checksums).",
        "",
    ]
    return "\n".join(lines)


def export_personalized(src: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Copy a kept model (``src``: a model or site folder) to ``out`` with a model card, after checking every file.

    ``out`` may not be ``src``; it is written atomically and may replace only an earlier AMoLE model folder.
    """
    meta = read_meta(src)
    folder = Path(meta["folder"])
    target = Path(os.path.expandvars(os.path.expanduser(str(out))))
    if target.resolve() == folder.resolve():
        raise ValueError(f"--out {target} is the model folder itself; export to another folder")
    load_adapter_tensors(meta)  # missing / corrupted / mixed-up files fail here, before anything is written
    with atomic_folder(target) as tmp:
        for name in (ADAPTERS_FILE, META_FILE):
            shutil.copy2(folder / name, tmp / name)
        (tmp / CARD_FILE).write_text(model_card(meta), encoding="utf-8")
    return target
