"""One source of defaults (the structured schema), presets that only override it, pyproject's run config in
agreement, strategies that refuse settings they fix, and `amole config` with one-line errors (exit code 2)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from amole.compose import CONF_DIR, GROUPS, ConfigError, compose, compose_cfg, overrides_from_run_config
from amole.config import CHOICES, AmoleConfig
from amole.site.cli import main as cli
from amole.strategies.registry import METHODS, check_fixed, method_named, names

ROOT = Path(__file__).resolve().parents[1]


def test_config_schema_holds_every_default_and_presets_only_override() -> None:
    """conf/config.yaml selects presets and sets nothing but the seed link; every preset key exists in the schema."""
    top = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    assert set(top) == {"defaults", "seed", "federation"} and top["federation"] == {"seed": "${seed}"}
    schema = OmegaConf.structured(AmoleConfig)
    for group in ("model", "scenario", "budget", "protocol"):
        for preset in (CONF_DIR / group).glob("*.yaml"):
            compose_cfg([f"{group}={preset.stem}"])  # struct mode: a key outside the schema fails here
    assert {f.name for f in fields(AmoleConfig)} == set(schema)
    assert not (CONF_DIR / "strategy").exists() or not list((CONF_DIR / "strategy").glob("*.yaml"))
    # keys that used to exist only in the dataclasses are now visible in the composed config
    cfg = compose_cfg(["scenario=bigbench_cpu"])
    for key in ("min_samples", "alpha", "hub_split"):
        assert key in cfg.scenario


def test_config_pyproject_run_config_agrees_with_the_hydra_defaults() -> None:
    run_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = {k: v for d in yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"] if isinstance(d, dict)
                for k, v in d.items()}
    for group in GROUPS:
        assert run_config[group] == defaults[group], group
    assert compose(overrides_from_run_config(run_config)) == compose()


def test_config_strategy_presets_come_from_the_registry() -> None:
    assert names()[0] == "fedamole" and set(names()) == set(METHODS)
    assert names("ablation") == ["static", "random", "homogeneous", "no_shared"]
    assert set(names("baseline")) == {"fedit", "fedit_ft", "local", "fdlora", "fedsa_lora"}
    for name, method in METHODS.items():
        settings = compose([f"strategy={name}", "budget=cpu_medium"])
        assert settings.federation.strategy == name
        check_fixed(settings)  # the preset sets every key the method fixes
        for key, value in method.fixed.items():
            section, leaf = key.split(".")
            assert getattr(getattr(settings, section), leaf) == value
    assert compose(["strategy=fedit"]).adapter.num_experts == 0
    assert compose(["strategy=no_shared"]).adapter.shared_expert is False
    assert compose(["strategy=static"]).assign.mode == "static"
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        method_named("nope")


@pytest.mark.parametrize(("overrides", "message"), [
    (["strategy=fedamole", "adapter.shared_expert=false"], "adapter.shared_expert=false contradicts strategy=fedamole"),
    (["strategy=fedit", "adapter.num_experts=8"], "adapter.num_experts=8 contradicts strategy=fedit"),
    (["strategy=fedamole", "assign.mode=static"], "assign.mode=static contradicts strategy=fedamole"),
    (["budget=nope"], "unknown budget 'nope'; available: cpu_medium, cpu_small, demo, gpu, paper, smoke"),
    (["strategy=nope"], "unknown strategy 'nope'; available: fdlora, fedamole"),
    (["adapter.rr=3"], "unknown key 'adapter.rr'; adapter has: alpha, dropout"),
    (["nogroup=x"], "unknown key or group 'nogroup'; groups: model, scenario"),
    (["train.steps=abc"], "train.steps=abc: Value 'abc'"),
    (["federation.num_clients"], "write key=value"),
    (["model.compile=maybe"], "unknown model.compile 'maybe'; expected one of: auto, on, off"),
    (["model.compute_dtype=bf16"], "unknown model.compute_dtype 'bf16'; expected one of: null, auto, float32"),
    (["model.quantization=3bit"], "unknown model.quantization '3bit'; expected one of: none, 8bit, 4bit"),
    (["eval.decoding=beam"], "unknown eval.decoding 'beam'"),
])
def test_config_errors_name_the_problem_in_one_line(overrides, message) -> None:
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_every_named_choice_composes() -> None:
    for (section, key), allowed in CHOICES.items():
        for value in allowed:
            got = compose([f"{section}.{key}={'null' if value is None else value}"])
            seen = getattr(getattr(got, section), key)
            assert (seen.lower() if key == "compile" else seen) == value, (section, key, value)
    assert compose(["model.compile=ON"]).model.compile == "ON"  # any case, as the loader reads it


def test_config_a_user_setting_is_never_silently_changed() -> None:
    """The values the user gives are the values the run trains with (no strategy resets them)."""
    settings = compose(["strategy=no_shared", "adapter.shared_expert=false", "adapter.num_experts=12"])
    assert settings.adapter.shared_expert is False and settings.adapter.num_experts == 12


def test_config_cli_prints_yaml_and_exits_2_on_errors(capsys) -> None:
    assert cli(["config", "strategy=local", "train.steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["federation"]["strategy"] == "local" and printed["train"]["steps"] == 7
    assert printed["adapter"]["num_experts"] == 0 and printed["federation"]["seed"] == printed["seed"]
    assert cli(["config", "strategy=fedamole", "adapter.shared_expert=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "adapter.shared_expert" in err and "Traceback" not in err
    assert cli(["config", "budget=nope"]) == 2
    assert "available: cpu_medium, cpu_small, demo, gpu, paper, smoke" in capsys.readouterr().err


def test_config_cli_as_a_user_runs_it() -> None:
    proc = subprocess.run([sys.executable, "-m", "amole.site.cli", "config", "budget=nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "unknown budget" in proc.stderr


def test_config_installing_adds_no_generic_top_level_package() -> None:
    """tools/ runs from a checkout; installed code never imports it."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "tools" not in packages["packages"]
    for folder in ("amole", "server_app", "client_app"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert "from tools" not in text and "import tools" not in text, path


def test_config_choices_are_the_names_the_loader_and_evaluation_map() -> None:
    """CHOICES (checked at compose time) and the maps that turn each name into behaviour list the same names."""
    from amole.backbones import loader
    from amole.evaluation import generation, rouge_l

    assert set(CHOICES[("model", "quantization")]) == set(loader.QUANTIZATIONS)
    assert set(CHOICES[("model", "dtype")]) == set(loader.DTYPES)
    assert set(CHOICES[("model", "compute_dtype")]) == {None, "auto", *loader.DTYPES}
    assert set(CHOICES[("model", "compile")]) == set(loader.COMPILE_CHOICES)
    assert set(CHOICES[("eval", "decoding")]) == set(generation.DECODINGS)
    assert set(CHOICES[("eval", "rouge")]) == set(rouge_l.IMPLEMENTATIONS)
