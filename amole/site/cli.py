"""``amole``: use the model a site kept after a federation — generate, evaluate, export — and check own data.

Heavy imports (torch, transformers, datasets) happen inside the commands so ``amole --help`` answers at once.
Every command exits non-zero with one line naming the problem (a folder for another base model, a missing or
corrupted file, an empty data file); outputs are written atomically, so a failed run leaves nothing half done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROMPT_HELP = """\
how a prompt is put to the model. 'auto' (default): the way the kept model was trained, as its
amole_model.json records it. Federated training builds every prompt with the amole.data template
("### Instruction:\\n{input}\\n\\n### Response:\\n", plus a BIG-bench task's own prefixes), not with the
tokenizer's chat template, so the model answers best in that format; 'auto' uses the chat template only
for a model recorded as trained with it. 'template': the recorded amole.data template. 'chat': the base
tokenizer's chat template (an error if it has none). 'raw': the text exactly as given."""


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a kept or exported model folder (or a site folder: its best/)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amole", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="show third-party output and, on an error, the traceback (also AMOLE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate with a site's model", formatter_class=argparse.RawTextHelpFormatter,
                       description="Load the base model (same loader and quantization as in training) with the "
                                   "site's adapters and generate; greedy unless --do-sample.")
    _add_model(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt; the answer streams to the terminal")
    src.add_argument("--input", help="prompts file: JSON Lines with 'prompt' (or 'instruction' [+ 'input' / "
                                     "'context'], or 'question') per row, or plain text, one prompt per line")
    g.add_argument("--output", help="JSON Lines written with --input: each row plus its 'generation'")
    g.add_argument("--prompt-format", choices=("auto", "template", "chat", "raw"), default="auto", help=PROMPT_HELP)
    g.add_argument("--max-new-tokens", type=int, default=None, help="default: the federation's eval budget")
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--seed", type=int, default=0, help="seed for sampling")
    g.add_argument("--batch-size", type=int, default=8, help="prompts per batch with --input")

    e = sub.add_parser("evaluate", help="score a site's model on a data file (the federation's metric)",
                       description="LM-scoring accuracy when every example is multiple choice, else Rouge-L F1 of "
                                   "greedy generations: the score the federation reports. Prints it and writes "
                                   "per-example predictions.")
    _add_model(e)
    e.add_argument("--data", default=None, help="JSON Lines / JSON / CSV in a supported layout, or a BIG-bench "
                                                "task.json (README: Your own data); without it, --split is needed")
    e.add_argument("--split", choices=("train", "embed", "eval", "test"), default=None,
                   help="score this split of the client's data, rebuilt exactly as the federation split it (from "
                        "the scenario and seed the model folder records; with --data: that file, split the same "
                        "way) — `--split test` reproduces the score the run reported for this client")
    e.add_argument("--predictions", default=None,
                   help="also write the per-example predictions to this JSON Lines file (default: none)")
    e.add_argument("--limit", type=int, default=None, help="score only the first N examples")
    e.add_argument("--batch-size", type=int, default=None, help="default: the federation's eval batch size")
    e.add_argument("--max-new-tokens", type=int, default=None, help="default: the federation's eval budget")

    x = sub.add_parser("export", help="write a self-contained folder with a model card",
                       description="Copy the checked adapters and their description to --out with a README.md; "
                                   "load it in Python with amole.load_personalized(path).")
    x.add_argument("--model", required=True, help="a kept model folder (or a site folder: its best/)")
    x.add_argument("--out", required=True, help="folder to write (replaces only an earlier AMoLE model folder)")

    f = sub.add_parser("config", help="print the composed configuration of a run (YAML)",
                       description="Compose conf/ with Hydra overrides, as a run would, and print the result; an "
                                   "unknown preset, group or key, or a key the strategy fixes set otherwise, is one "
                                   "line naming it and what exists (exit code 2).")
    f.add_argument("overrides", nargs="*", help="e.g. budget=cpu_small strategy=fedit train.steps=10")

    c = sub.add_parser("check-data", help="check a site's own data file before joining a federation")
    c.add_argument("--data", required=True, help="file or folder, as the node's data-path")
    return parser


# --------------------------------------------------------------------------------------------------
# generate


def _row_text(row: dict[str, Any], where: str) -> str:
    for key in ("prompt", "question"):
        if isinstance(row.get(key), str) and row[key].strip():
            return row[key].strip()
    if isinstance(row.get("instruction"), str) and row["instruction"].strip():
        text = row["instruction"].strip()
        if isinstance(row.get("context"), str) and row["context"].strip():
            return f"{text}\n\nContext:\n{row['context'].strip()}"
        if isinstance(row.get("input"), str) and row["input"].strip():
            return f"{text}\n\nInput:\n{row['input'].strip()}"
        return text
    raise ValueError(f"{where}: no 'prompt', 'question' or 'instruction' text")


def _read_prompts(path: str) -> list[tuple[dict[str, Any], str]]:
    """(row, prompt text) of every non-empty line of a .jsonl (or .txt) file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts file {p} does not exist")
    from amole.data.records import json_lines

    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".txt":
        out = [({"prompt": line}, line.strip()) for line in text.splitlines() if line.strip()]
    else:
        out = []
        for n, row, why in json_lines(text):
            if row is None:
                raise ValueError(f"{p}:{n}: {why}")
            out.append((row, _row_text(row, f"{p}:{n}")))
    if not out:
        raise ValueError(f"prompts file {p} is empty")
    return out


def format_prompt(text: str, meta: dict[str, Any], tokenizer: Any, style: str = "auto") -> tuple[str, bool]:
    """(model-facing text, add the tokenizer's special tokens?) for ``style`` (see PROMPT_HELP)."""
    from amole.site.personal import prompt_format

    if style == "auto":
        style = "chat" if meta.get("chat_template") else "template"
    if style == "raw":
        return text, True
    if style == "template":
        return prompt_format(meta).render(text), True
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the base model {meta['base']['name']!r} has no chat template; use --prompt-format "
                         "template (the format the federation trains with)")
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)
    return chat, False


def generate_texts(model: Any, tokenizer: Any, prompts: Sequence[tuple[str, bool]], max_len: int,
                   options: dict[str, Any], streamer: Any = None) -> list[str]:
    """Continuations of left-padded prompts (cut from the left to leave room for the new tokens)."""
    import torch

    from amole.backbones.loader import model_device
    from amole.data import pad_id_of
    from amole.evaluation.generation import left_pad

    pad = pad_id_of(tokenizer)
    room = max(max_len - options["max_new_tokens"], 1)
    input_ids, mask = left_pad([list(tokenizer(t, add_special_tokens=special)["input_ids"])[-room:]
                                for t, special in prompts], pad)
    width = input_ids.shape[1]
    dev = model_device(model)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids.to(dev), attention_mask=mask.to(dev), pad_token_id=pad,
                             eos_token_id=tokenizer.eos_token_id, streamer=streamer, **options)
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm
    from transformers import TextStreamer

    from amole.data.records import write_jsonl
    from amole.site.personal import load_personalized, read_meta

    if args.input and not args.output:
        raise ValueError("--input needs --output (the JSON Lines file to write)")
    if args.output and not args.input:
        raise ValueError("--output goes with --input; a single --prompt streams to the terminal")
    meta = read_meta(args.model)
    rows = _read_prompts(args.input) if args.input else [({"prompt": args.prompt}, args.prompt)]
    model, tokenizer = load_personalized(meta["folder"], device=args.device)
    prompts = [format_prompt(text, meta, tokenizer, args.prompt_format) for _, text in rows]
    options: dict[str, Any] = {"max_new_tokens": args.max_new_tokens or meta["eval"]["max_new_tokens"],
                               "do_sample": args.do_sample}
    if args.do_sample:
        options.update(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
        torch.manual_seed(args.seed)
    if args.prompt is not None:
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        generate_texts(model, tokenizer, prompts, meta["max_seq_len"], options, streamer)
        print(flush=True)
        return 0
    outputs: list[str] = []
    for start in tqdm(range(0, len(prompts), args.batch_size), desc="generating", unit="batch", disable=None):
        outputs += generate_texts(model, tokenizer, prompts[start : start + args.batch_size], meta["max_seq_len"],
                                  options)
    write_jsonl(Path(args.output), ({**row, "generation": out.strip()} for (row, _), out in zip(rows, outputs,
                                                                                             strict=True)))
    print(f"wrote {len(outputs)} generations to {args.output}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------
# evaluate / export / check-data


def _split_examples(meta: dict[str, Any], split: str, data_path: str | None) -> list[Any]:
    """One split of the client's data as the federation made it (scenario, seed and client from the folder)."""
    from amole.config import ScenarioConfig, from_dict
    from amole.data.scenario import client_splits

    if not meta.get("scenario"):
        raise ValueError(f"{meta['folder']} records no scenario (kept before --split existed): use --data")
    scenario = from_dict(ScenarioConfig, meta["scenario"])
    return list(getattr(client_splits(scenario, meta["client"], int(meta["seed"]), data_path=data_path), split))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from amole.config import EvalConfig
    from amole.data.own import read_own_data, report_skipped
    from amole.data.records import write_jsonl
    from amole.site.personal import load_personalized, prompt_format, read_meta

    meta = read_meta(args.model)
    if args.split:
        examples = _split_examples(meta, args.split, args.data)
    elif args.data:
        data = read_own_data(args.data, template=prompt_format(meta).template)
        report_skipped(data.skipped)
        examples = data.examples
    else:
        raise ValueError("give --data <file>, --split <name>, or both")
    examples = examples[: args.limit] if args.limit is not None else examples
    if not examples:
        raise ValueError(f"{args.data or args.split}: no examples to score")
    cfg = EvalConfig(**meta["eval"])
    cfg.batch_size = args.batch_size or cfg.batch_size
    cfg.max_new_tokens = args.max_new_tokens or cfg.max_new_tokens
    out = Path(args.predictions) if args.predictions else None
    model, tokenizer = load_personalized(meta["folder"], device=args.device)
    from amole.evaluation.evaluate import evaluate_examples

    result, preds = evaluate_examples(model, tokenizer, examples, meta["max_seq_len"], cfg)
    if out is not None:
        write_jsonl(out, preds)
    print(json.dumps({**result, "data": args.data, "split": args.split, "model": meta["folder"],
                      "predictions": str(out.resolve()) if out is not None else None}))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from amole.site.model_card import export_personalized

    target = export_personalized(args.model, args.out)
    print(f"exported to {target}; load it with amole.load_personalized({str(target)!r})")
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from amole.config import ScenarioConfig
    from amole.data.own import read_own_data, report_skipped
    from amole.data.splits import split_client

    data = read_own_data(args.data)
    report_skipped(data.skipped)
    s = ScenarioConfig()
    splits = split_client(data.examples, seed=0, eval_frac=s.eval_frac, test_frac=s.test_frac,
                          embed_frac=s.embed_frac, eval_cap=s.eval_cap, test_cap=s.test_cap,
                          embed_cap=s.embed_cap, task=Path(args.data).stem)
    kind = "multiple choice (accuracy)" if all(ex.is_choice for ex in data.examples) else "generation (Rouge-L)"
    print(json.dumps({"usable": len(data.examples), "skipped": len(data.skipped), "kind": kind,
                      "splits": {k: len(getattr(splits, k)) for k in ("train", "embed", "eval", "test")}}))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from amole.compose import ConfigError, config_yaml

    try:
        print(config_yaml(args.overrides), end="")
    except ConfigError as err:
        print(f"amole config: error: {err}", file=sys.stderr)
        return 2
    return 0


COMMANDS = {"generate": _cmd_generate, "evaluate": _cmd_evaluate, "export": _cmd_export,
            "check-data": _cmd_check_data, "config": _cmd_config}


USER_ERROR = 2  # what a user can fix (a wrong path, a bad file, a folder for another model): one line, no traceback


def _quiet() -> None:
    """Third-party chatter (weight-loading bars, advisory warnings) off the terminal; ``--verbose`` keeps it."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging  # the weight-loading bars are transformers' own

    hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``amole`` console script; returns the exit status (2: an error the user can fix)."""
    args = _parser().parse_args(argv)
    verbose = args.verbose or bool(os.environ.get("AMOLE_DEBUG"))
    if not verbose and args.command in ("generate", "evaluate"):
        _quiet()
    from amole.data.errors import DataSourceError

    try:
        return COMMANDS[args.command](args)
    except (ValueError, LookupError, OSError, DataSourceError) as err:  # PersonalModelError, TaskFormatError too
        if verbose:
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"amole {args.command}: error: {text}", file=sys.stderr)
        return USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
