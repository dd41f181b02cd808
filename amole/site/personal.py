"""The personalized model a site keeps: its adapters, the experts it holds, and everything needed to rebuild it.

A kept folder holds ``adapters.safetensors`` (``amole.moe.model.export_adapters``: the shared expert, the held
routed experts and the routers, by stable names) and ``amole_model.json``: the base model as the loader names
it (name, GGUF file, quantization, compute dtype) plus a fingerprint of its embedding weights, the adapter
config, the held experts per module, the prompt format it was trained with, and the run, round, score and
metric. :func:`load_personalized` rebuilds exactly that model (same loader, same quantization, AMoLE injected,
adapters imported) and refuses a folder that does not fit: another base model or adapter config than asked,
a missing file, a corrupted tensor file. Every folder is written to a temporary sibling and renamed into
place, so a reader never sees half of one. :func:`keep_round` keeps ``latest/`` and ``best/`` per site.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amole.config import AdapterConfig, EvalConfig, ModelConfig, Settings, from_dict
from amole.data.prompt import DEFAULT_TEMPLATE, PromptFormat
from amole.util import atomic

FORMAT, VERSION = "amole-personalized", 1
META_FILE, ADAPTERS_FILE, CARD_FILE = "amole_model.json", "adapters.safetensors", "README.md"
_IDENTITY = ("name", "gguf_file", "tiny")  # what makes a base model another one (quantization is checked too)
_fingerprints: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


class PersonalModelError(ValueError):
    """A kept / exported model folder that cannot be used as asked; the message names the folder and why."""


@dataclass
class KeptInfo:
    """What a client round knows about the model it keeps (everything in ``amole_model.json`` but the derived
    parts: held experts, fingerprint, checksums)."""

    model: ModelConfig
    adapter: AdapterConfig
    run_id: str = ""
    client: str = ""
    round: int = 0
    score: float | None = None
    metric: str = ""
    task: str = ""
    max_seq_len: int = 1024
    eval: EvalConfig = field(default_factory=EvalConfig)
    # How prompts were built in training: PromptFormat fields, and whether the tokenizer's chat template wrapped
    # them. The federation always trains with the amole.data template (no chat template).
    prompt: dict[str, Any] = field(default_factory=lambda: asdict(PromptFormat()))
    chat_template: bool = False
    # Where the client's data came from, so `amole evaluate --split test` rebuilds exactly its test split.
    scenario: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, **values: Any) -> KeptInfo:
        return cls(model=settings.model, adapter=settings.adapter, max_seq_len=settings.train.max_seq_len,
                   eval=settings.eval, scenario=asdict(settings.scenario), seed=settings.federation.seed, **values)


def prompt_format(meta: Mapping[str, Any]) -> PromptFormat:
    """The PromptFormat a kept model was trained with (the default template where the folder names none)."""
    return PromptFormat(**meta.get("prompt", {"template": DEFAULT_TEMPLATE}))


# --------------------------------------------------------------------------------------------------
# writing


def base_fingerprint(model: nn.Module) -> str:
    """sha256 of the input embedding weights: tells two checkpoints of one architecture apart (cached per model;
    embeddings stay full precision under bitsandbytes and are never trained here)."""
    if model in _fingerprints:
        return _fingerprints[model]
    weight = model.get_input_embeddings().weight.detach().float().cpu().contiguous()
    digest = hashlib.sha256(weight.numpy().tobytes()).hexdigest()
    _fingerprints[model] = digest
    return digest


def _architecture(model: nn.Module) -> dict[str, Any]:
    cfg = model.config
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")
    return {k: getattr(cfg, k, None) for k in keys}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _may_replace(target: Path) -> None:
    if target.exists() and not (target / META_FILE).is_file() and (not target.is_dir() or any(target.iterdir())):
        raise PersonalModelError(f"{target} exists and is not an AMoLE model folder: refusing to overwrite it")


@contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """amole.util.atomic.atomic_folder, refusing to replace anything but an earlier AMoLE model folder."""
    _may_replace(Path(target))
    with atomic.atomic_folder(target) as tmp:
        yield tmp


def _readable(path: Path) -> None:
    """Plain file permissions (safetensors writes 0600): a kept model is meant to be shared and exported."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_personalized(folder: str | os.PathLike[str], model: nn.Module, info: KeptInfo) -> Path:
    """Write the adapters ``model`` holds and their description into ``folder`` (atomically); returns it."""
    from safetensors.torch import save_file

    from amole.moe.model import export_adapters

    tensors = export_adapters(model)
    if not tensors:
        raise PersonalModelError("the model holds no AMoLE adapters (inject and train it first)")
    held = {name: layer.expert_ids for name, layer in _layers(model).items()}
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "base": {**asdict(info.model), "architecture": _architecture(model), "fingerprint": base_fingerprint(model)},
        "adapter": asdict(info.adapter),
        "adapter_dtype": dtypes[0],
        "held_experts": held,
        "prompt": dict(info.prompt),
        "chat_template": info.chat_template,
        "max_seq_len": info.max_seq_len,
        "eval": asdict(info.eval),
        "run_id": info.run_id,
        "client": info.client,
        "round": info.round,
        "score": info.score,
        "metric": info.metric,
        "task": info.task,
        "scenario": dict(info.scenario),
        "seed": info.seed,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    PromptFormat(**meta["prompt"])  # a bad prompt description fails before anything is written
    with atomic_folder(folder) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / ADAPTERS_FILE),
                  metadata={"format": FORMAT})
        _readable(tmp / ADAPTERS_FILE)
        meta["files"] = {ADAPTERS_FILE: {"sha256": _sha256(tmp / ADAPTERS_FILE)}}
        _write_json(tmp / META_FILE, meta)
    return Path(folder)


def _layers(model: nn.Module) -> dict[str, Any]:
    from amole.moe.model import amole_layers

    return amole_layers(model)


def keep_round(site_dir: str | os.PathLike[str], model: nn.Module, info: KeptInfo) -> dict[str, Path]:
    """Save this round as ``<site_dir>/latest`` and, when it scores higher than the kept best (or there is
    none, or the best is unreadable), copy it to ``<site_dir>/best``; returns the folders written."""
    site = Path(site_dir)
    written = {"latest": save_personalized(site / "latest", model, info)}
    if info.score is None:
        return written
    try:
        best = read_meta(site / "best").get("score")
    except PersonalModelError:
        best = None
    if best is None or info.score > best:
        written["best"] = copy_model(site / "latest", site / "best")
    return written


def copy_model(src: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """An atomic copy of the kept model folder ``src`` at ``target`` (which may only be an earlier model)."""
    with atomic_folder(target) as tmp:
        for f in Path(src).iterdir():
            shutil.copy2(f, tmp / f.name)
    return Path(target)


# --------------------------------------------------------------------------------------------------
# reading


def resolve_folder(path: str | os.PathLike[str]) -> Path:
    """A model folder, or a site folder (``keep_round``'s) whose ``best/`` (else ``latest/``) is used."""
    p = Path(os.path.expandvars(os.path.expanduser(str(path))))
    if not p.is_dir():
        raise PersonalModelError(f"model folder {p} does not exist")
    if (p / META_FILE).is_file():
        return p
    for sub in ("best", "latest"):
        if (p / sub / META_FILE).is_file():
            return p / sub
    raise PersonalModelError(f"{p} is not an AMoLE model folder: {META_FILE} is missing")


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked description of a kept / exported model (``path`` as :func:`resolve_folder` takes it)."""
    folder = resolve_folder(path)
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PersonalModelError(f"{folder / META_FILE} is corrupted: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PersonalModelError(f"{folder / META_FILE} is not an AMoLE model description")
    if meta.get("version") != VERSION:
        raise PersonalModelError(f"{folder} has format version {meta.get('version')}; this amole reads {VERSION}")
    for key in ("base", "adapter", "held_experts", "files"):
        if key not in meta:
            raise PersonalModelError(f"{folder / META_FILE} lacks {key!r}")
    meta["folder"] = str(folder)
    return meta


def model_config_of(meta: Mapping[str, Any]) -> ModelConfig:
    base = {k: v for k, v in meta["base"].items() if k not in ("architecture", "fingerprint")}
    return from_dict(ModelConfig, base)


def adapter_config_of(meta: Mapping[str, Any]) -> AdapterConfig:
    return from_dict(AdapterConfig, meta["adapter"])


def _check_expected(meta: Mapping[str, Any], base: ModelConfig | str | None, adapter: AdapterConfig | None) -> None:
    folder = meta["folder"]
    if base is not None:
        want = ModelConfig(name=base) if isinstance(base, str) else base
        keys = ("name",) if isinstance(base, str) else (*_IDENTITY, "quantization", "dtype")
        have = model_config_of(meta)
        diff = {k: (getattr(have, k), getattr(want, k)) for k in keys if getattr(have, k) != getattr(want, k)}
        if diff:
            said = ", ".join(f"{k} {h!r} (asked for {w!r})" for k, (h, w) in diff.items())
            raise PersonalModelError(f"{folder} was trained on another base model: {said}")
    if adapter is not None:
        have_a, want_a = asdict(adapter_config_of(meta)), asdict(adapter)
        diff = {k: (have_a[k], want_a[k]) for k in have_a if have_a[k] != want_a[k]}
        if diff:
            said = ", ".join(f"{k} {h!r} (asked for {w!r})" for k, (h, w) in diff.items())
            raise PersonalModelError(f"{folder} holds another adapter config: {said}")


def load_adapter_tensors(meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The adapter tensors of a checked folder; a missing, altered or unreadable file is named."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from amole.moe import keys

    path = Path(meta["folder"]) / ADAPTERS_FILE
    if not path.is_file():
        raise PersonalModelError(f"{path} is missing")
    expected = meta["files"].get(ADAPTERS_FILE, {}).get("sha256")
    if expected and _sha256(path) != expected:
        raise PersonalModelError(f"{path} is corrupted: its checksum differs from the one in {META_FILE}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise PersonalModelError(f"{path} is corrupted: {err}") from err
    try:
        held = {m: ids for m, ids in keys.held_experts(set(tensors)).items() if ids}
    except ValueError as err:
        raise PersonalModelError(f"{path}: {err}") from err
    recorded = {m: sorted(ids) for m, ids in meta["held_experts"].items() if ids}
    if held != recorded:
        raise PersonalModelError(f"{path} does not hold the experts {META_FILE} lists (a mixed-up folder?)")
    return tensors


def load_personalized(
    path: str | os.PathLike[str],
    base: ModelConfig | str | None = None,
    adapter: AdapterConfig | None = None,
    device: str | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) of a kept or exported folder, ready for ``model.generate``.

    The base model is loaded as in training (:func:`amole.backbones.loader.load_base_model`, same quantization and
    dtype),
    AMoLE is injected and exactly the held experts are imported. ``base`` / ``adapter``, when given, must be
    what the folder was trained with (a bare model name compares the name only; the embedding fingerprint
    still catches other weights behind the same name).
    """
    from amole.backbones.loader import compile_mode, load_base_model, model_device
    from amole.moe.model import import_adapters, inject

    meta = read_meta(path)
    _check_expected(meta, base, adapter)
    tensors = load_adapter_tensors(meta)
    model_cfg = model_config_of(meta)
    model, tokenizer = load_base_model(model_cfg, device)
    fingerprint = meta["base"].get("fingerprint")
    if fingerprint and base_fingerprint(model) != fingerprint:
        raise PersonalModelError(f"{meta['folder']} was trained on other weights than the base model "
                                 f"{model_cfg.name!r} loads here (embedding fingerprints differ)")
    dtype = getattr(torch, meta.get("adapter_dtype", "float32"))
    mode = compile_mode(model_cfg, model_device(model))  # compiling the model whole is for training only
    inject(model, adapter_config_of(meta), dtype, compile="off" if mode == "model" else mode)
    try:
        import_adapters(model, tensors)
    except (KeyError, ValueError) as err:
        raise PersonalModelError(f"{meta['folder']}: the adapters do not fit the model: {err}") from err
    model.eval()
    model.config.use_cache = True  # frozen for training without a KV cache; generation wants one
    return model, tokenizer
