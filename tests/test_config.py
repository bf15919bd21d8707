"""Config layering, command-line parsing, unknown keys, registries and the entry point."""
import glob
import os
import re
import subprocess
import sys

import pytest

from run_talkingface import main as cli_main
from talkingface.config import Config, parse_value
from talkingface.config.configurator import PROPERTIES_DIR, known_keys, load_yaml
from talkingface.utils.errors import ConfigError
from talkingface.utils.registry import DATASETS, MODELS, PREPROCESSORS, TRAINERS, Registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_value_is_yaml_not_eval():
    assert parse_value("1e-4") == pytest.approx(1e-4)
    assert parse_value("3") == 3 and parse_value("true") is True and parse_value("~") is None
    assert parse_value("[PSNR, SSIM]") == ["PSNR", "SSIM"]
    assert parse_value("__import__('os').getcwd()") == "__import__('os').getcwd()"


def test_layers_in_order(tmp_path):
    base = Config(model="HyperLipsBase", dataset="demo")
    assert base["mode"] == "train" and base["model"] == "HyperLipsBase"
    assert base["checkpoint_dir"] == os.path.join("checkpoints", "demo", "HyperLipsBase")
    extra = tmp_path / "extra.yaml"
    extra.write_text("batch_size: 3\nseed: 7\n")
    config = Config(model="HyperLipsBase", dataset="demo", config_files=[str(extra)],
                    config_dict={"seed": 11})
    assert config["batch_size"] == 3      # config file beats the model yaml
    assert config["seed"] == 11           # command line beats the config file


def test_model_yaml_beats_dataset_yaml_beats_overall():
    overall = load_yaml(os.path.join(PROPERTIES_DIR, "overall.yaml"))
    model = load_yaml(os.path.join(PROPERTIES_DIR, "model", "HyperLipsBase.yaml"))
    config = Config(model="HyperLipsBase", dataset="demo")
    for key, value in model.items():
        assert config[key] == value
    assert config["seed"] == overall["seed"]


@pytest.mark.parametrize("key, hint", [("batch_szie", "batch_size"), ("max_step", "max_steps")])
def test_unknown_key_names_the_closest(key, hint):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'.*'{hint}'"):
        Config(model="HyperLipsBase", dataset="demo", config_dict={key: 1})


def test_unknown_key_in_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rat"):
        Config(model="HyperLipsBase", dataset="demo", config_files=[str(bad)])


def test_unknown_model_dataset_and_mode():
    with pytest.raises(ConfigError, match="available: .*HyperLipsBase"):
        Config(model="HyperLips", dataset="demo")
    with pytest.raises(ConfigError, match="available: .*MEAD"):
        Config(model="HyperLipsBase", dataset="VoxCeleb")
    with pytest.raises(ConfigError, match="unknown mode"):
        Config(model="HyperLipsBase", dataset="demo", config_dict={"mode": "fit"})


def test_registry_error_lists_names_and_suggests():
    registry = Registry("widget")

    @registry.register("RoundWidget")
    class RoundWidget:
        pass

    assert registry.get("RoundWidget") is RoundWidget
    with pytest.raises(ConfigError, match="did you mean 'RoundWidget'.*available: .*RoundWidget"):
        registry.get("RoundWidgt")


def test_builtin_registries_hold_the_models():
    for name in ("SyncNet", "HyperLipsBase", "HyperLipsHR"):
        assert name in MODELS and name in TRAINERS
    assert "HyperLipsBasePreprocessor" in PREPROCESSORS and "HyperLipsHRPreprocessor" in PREPROCESSORS
    for name in ("SyncNetDataset", "HyperLipsBaseDataset", "HyperLipsHRDataset"):
        assert name in DATASETS
    # a model without a trainer of its own falls back to the shared Trainer
    assert TRAINERS.get("NoSuchModel", default=TRAINERS.get("Trainer")).__name__ == "Trainer"


def _python_sources():
    files = glob.glob(os.path.join(REPO, "talkingface", "**", "*.py"), recursive=True)
    return {path: open(path, encoding="utf-8").read() for path in files}


def test_every_yaml_key_is_read_by_the_code():
    sources = "\n".join(_python_sources().values())
    unread = sorted(k for k in known_keys() if not re.search(rf"""["']{re.escape(k)}["']""", sources))
    assert not unread, f"keys defined in YAML but read nowhere: {unread}"


def test_every_key_the_code_reads_is_in_a_yaml_file():
    pattern = re.compile(r"""config(?:\.get\(|\[)\s*["'](\w+)["']""")
    keys = known_keys() | {"checkpoint_dir", "results_dir"}  # derived by Config itself
    missing = sorted({(os.path.relpath(path, REPO), key) for path, text in _python_sources().items()
                      for key in pattern.findall(text) if key not in keys})
    assert not missing, f"keys read by the code but defined in no YAML file: {missing}"


def test_cli_help_lists_models_datasets_and_modes():
    result = subprocess.run([sys.executable, "run_talkingface.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for word in ("HyperLipsBase", "HyperLipsHR", "SyncNet", "MEAD", "demo", "infer", "evaluate", "preprocess"):
        assert word in result.stdout


def test_cli_typo_is_one_line_error(capsys, workdir):
    code = cli_main(["--model=HyperLipsBase", "--dataset=demo", "--batch_szie=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: unknown config key 'batch_szie' in the command line; did you mean 'batch_size'?"]


def test_cli_infer_missing_video_is_one_line_error(capsys, workdir):
    code = cli_main(["--model=HyperLipsBase", "--dataset=demo", "--mode=infer",
                     "--video=nope.mp4", "--audio=nope.wav", "--output=out.mp4"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "nope.mp4" in errors[0] and "Traceback" not in err
