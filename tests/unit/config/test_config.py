"""Config layering, scoped and typed keys, command-line parsing, registries and the entry point."""
import glob
import inspect
import os
import re
import subprocess
import sys

import pytest

from run_talkingface import main as cli_main
from run_talkingface import parse_args
from talkingface.config import MODES, Config, parse_value
from talkingface.config.configurator import (DATASET_DIRS_ENV, DATASET_KEYS, DERIVED_KEYS, PROPERTIES_DIR,
                                             RUN_KEYS, available, known_keys, layer, load_yaml)
from talkingface.utils.errors import ConfigError
from talkingface.utils.registry import DATASETS, MODELS, PREPROCESSORS, TRAINERS, Registry
from paths import REPO_ROOT

REPO = str(REPO_ROOT)


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
    with pytest.raises(ConfigError, match="mode must be one of train, evaluate, preprocess, infer.*'fit'"):
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


# A read of a setting: config["key"], self.config.get("key"), settings["key"] (inference overrides).
READ = re.compile(r"""\b(?:config|settings)(?:\.get\(|\[)\s*["'](\w+)["']""")
LOOKUP = re.compile(r"""\b(MODELS|DATASETS|PREPROCESSORS|TRAINERS)\.get\(\s*["'](\w+)["']""")


def _model_files():
    """Source file -> the models whose runs execute it as their own code: each model's registered
    network, trainer, dataset class and preprocessor, their base classes, and the classes these look
    up by name (HR's preprocessor runs the Base one). Files of no model run for every model."""
    registries = {"MODELS": MODELS, "DATASETS": DATASETS, "PREPROCESSORS": PREPROCESSORS, "TRAINERS": TRAINERS}
    files = {}
    for model in available("model"):
        yaml_layer = layer("model", model)
        todo = [MODELS.get(model), TRAINERS.get(model, default=TRAINERS.get("Trainer")),
                DATASETS.get(yaml_layer["dataset_class"]), PREPROCESSORS.get(yaml_layer["preprocessor"])]
        seen = set()
        while todo:
            for cls in todo.pop().__mro__:
                if cls in seen or not cls.__module__.startswith("talkingface."):
                    continue
                seen.add(cls)
                files.setdefault(os.path.realpath(inspect.getsourcefile(cls)), set()).add(model)
                todo += [registries[kind].get(name) for kind, name in LOOKUP.findall(inspect.getsource(cls))]
    return files


def test_every_yaml_key_is_read_by_the_code():
    reads = set().union(*(READ.findall(text) for text in _python_sources().values()))
    unread = sorted(known_keys() - reads - set(RUN_KEYS))
    assert not unread, f"keys defined in YAML but read nowhere: {unread}"


def test_every_key_the_code_reads_is_defined_for_each_model_that_runs_it():
    """A read must find its key for every model whose run executes it, with any dataset (a dataset
    YAML adds only DATASET_KEYS, and demo_* settings where it sets generate_demo: read only by the
    code that reads generate_demo)."""
    overall = set(layer("overall"))
    always = overall | set(DATASET_KEYS) | set(DERIVED_KEYS) | set(RUN_KEYS)
    demo_sets = [set(layer("dataset", d)) for d in available("dataset") if layer("dataset", d).get("generate_demo")]
    demo_keys = {key for key in set.intersection(*demo_sets) if key.startswith("demo_")}
    models = available("model")
    model_keys = {model: set(layer("model", model)) for model in models}
    scope = _model_files()
    missing = set()
    for path, text in _python_sources().items():
        reads = set(READ.findall(text))
        allowed = always | (demo_keys if "generate_demo" in reads else set())
        missing |= {(os.path.relpath(path, REPO), key, model) for key in reads
                    for model in scope.get(os.path.realpath(path), models)
                    if key not in allowed | model_keys[model]}
    missing = sorted(missing)
    assert not missing, f"(file, key, model): keys read by the code but not defined for that model: {missing}"
    assert {"generate_demo"} <= overall and demo_keys, "the demo dataset's settings are found"
    scoped = {os.path.basename(path): owners for path, owners in scope.items()}
    assert scoped["hyperlipsbase_trainer.py"] == {"HyperLipsBase"}
    assert scoped["hyperlipsbase_process.py"] == set(models)  # HR's preprocessor runs the Base one


def test_cli_help_lists_models_datasets_and_modes(capsys):
    with pytest.raises(SystemExit) as exit_status:  # as `python run_talkingface.py --help`, in this process
        cli_main(["--help"])
    assert exit_status.value.code == 0
    stdout = capsys.readouterr().out
    for word in ("HyperLipsBase", "HyperLipsHR", "SyncNet", "MEAD", "demo", "infer", "evaluate", "preprocess"):
        assert word in stdout


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


# --- scoped keys ----------------------------------------------------------------------------------

def test_key_of_another_model_names_the_models_that_own_it(tmp_path):
    with pytest.raises(ConfigError) as error:
        Config(model="SyncNet", dataset="demo", config_dict={"gan_weight": 0})
    assert str(error.value) == ("gan_weight is a setting of HyperLipsBase, HyperLipsHR, not of SyncNet: "
                                "remove it from the command line")
    extra = tmp_path / "hr.yaml"
    extra.write_text("lip_l1_weight: 2.0\n")
    with pytest.raises(ConfigError, match=rf"lip_l1_weight is a setting of HyperLipsHR, not of HyperLipsBase: "
                                          rf"remove it from {re.escape(str(extra))}"):
        Config(model="HyperLipsBase", dataset="demo", config_files=[str(extra)])
    assert Config(model="HyperLipsHR", dataset="demo", config_files=[str(extra)])["lip_l1_weight"] == 2.0


def test_key_of_another_dataset_names_it():
    with pytest.raises(ConfigError, match="demo_num_clips is a setting of dataset demo, not of MEAD"):
        Config(model="HyperLipsBase", dataset="MEAD", config_dict={"demo_num_clips": 3})
    assert Config(model="HyperLipsBase", dataset="demo", config_dict={"demo_num_clips": 3})["demo_num_clips"] == 3


def test_run_keys_and_derived_keys_cannot_be_set(tmp_path):
    extra = tmp_path / "run.yaml"
    extra.write_text("model: SyncNet\n")
    with pytest.raises(ConfigError, match="model is chosen with --model"):
        Config(model="HyperLipsBase", dataset="demo", config_files=[str(extra)])
    with pytest.raises(ConfigError, match="unknown config key 'checkpoint_dir'"):
        Config(model="HyperLipsBase", dataset="demo", config_dict={"checkpoint_dir": "x"})


def test_reading_an_undefined_key_is_a_config_error_not_a_key_error():
    config = Config(model="SyncNet", dataset="MEAD")
    with pytest.raises(ConfigError) as error:
        config["gan_weight"]
    assert not isinstance(error.value, KeyError)
    assert "'gan_weight'" in str(error.value) and "SyncNet" in str(error.value) and "\n" not in str(error.value)
    assert config.get("gan_weight") is None and "gan_weight" not in config


@pytest.fixture
def own_dataset(tmp_path, monkeypatch):
    """A dataset of one's own: a two-key YAML in a folder named by TALKINGFACE_DATASET_DIRS."""
    folder = tmp_path / "datasets"
    folder.mkdir()
    (folder / "mine.yaml").write_text(f"data_root: {tmp_path / 'raw'}\npreprocessed_root: {tmp_path / 'pre'}\n")
    monkeypatch.setenv(DATASET_DIRS_ENV, str(folder))
    return folder


def test_a_two_key_dataset_yaml_works_for_every_model(own_dataset, tmp_path):
    assert "mine" in available("dataset") and "demo" in available("dataset")
    for model in available("model"):
        config = Config(model=model, dataset="mine")
        assert config["data_root"] == str(tmp_path / "raw") and config["generate_demo"] is False
        assert config["checkpoint_dir"] == os.path.join("checkpoints", "mine", model)


def test_a_dataset_yaml_without_its_roots_is_one_line(own_dataset):
    (own_dataset / "half.yaml").write_text("data_root: somewhere\n")
    with pytest.raises(ConfigError, match=r"half.yaml must define preprocessed_root$"):
        Config(model="HyperLipsBase", dataset="half")


def test_cli_preprocess_of_a_two_key_dataset_with_no_videos_is_one_line(own_dataset, tmp_path, capsys, workdir):
    (tmp_path / "raw").mkdir()
    code = cli_main(["--model=HyperLipsBase", "--dataset=mine", "--mode=preprocess"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and str(tmp_path / "raw") in errors[0], err
    assert "Traceback" not in err


def test_every_model_builds_with_every_dataset():
    """The shipped defaults pass their own checks, and come out of them unchanged."""
    import torch

    assert {"HyperLipsBase", "HyperLipsHR", "SyncNet"} <= set(available("model"))
    assert {"MEAD", "demo"} <= set(available("dataset"))
    for model in available("model"):
        for dataset in available("dataset"):
            config = Config(model=model, dataset=dataset)
            assert (config["model"], config["dataset"], config["mode"]) == (model, dataset, "train")
            defaults = {**layer("overall"), **layer("dataset", dataset), **layer("model", model)}
            changed = {key: (value, config[key]) for key, value in defaults.items()
                       if key != "device" and config[key] != value}
            assert changed == {}, f"{model} on {dataset}: the checks changed shipped defaults {changed}"
            assert isinstance(config["device"], torch.device)
            assert config["checkpoint_dir"] == os.path.join(config["checkpoint_root"], dataset, model)
            assert config["results_dir"] == os.path.join(config["results_root"], dataset, model)


# --- typed values ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, message", [
    ("infer_batch_size", "abc", "infer_batch_size must be an integer >= 1 and <= 4096 (got 'abc')"),
    ("max_steps", "abc", "max_steps must be an integer >= 0 and <= 2147483647 (got 'abc')"),
    ("max_steps", 2.5, "max_steps must be an integer >= 0 and <= 2147483647 (got 2.5)"),
    ("batch_size", 0, "batch_size must be an integer >= 1 and <= 4096 (got 0)"),
    ("num_workers", True, "num_workers must be an integer >= 0 and <= 256 (got true)"),
    ("learning_rate", 0, "learning_rate must be a number > 0 (got 0)"),
    ("learning_rate", ".inf", "learning_rate must be a number > 0 (got inf)"),
    ("val_ratio", 1.0, "val_ratio must be a number >= 0 and < 1 (got 1.0)"),
    ("jpeg_quality", 101, "jpeg_quality must be an integer >= 1 and <= 100 (got 101)"),
    ("reproducible", "sometimes", "reproducible must be true or false (got 'sometimes')"),
    ("amp", "maybe", "amp must be one of auto, true, false (got 'maybe')"),
    ("amp_dtype", "fp8", "amp_dtype must be one of bfloat16, float16 (got 'fp8')"),
    ("infer_x264_preset", "quick", "infer_x264_preset must be one of ultrafast, superfast"),
    ("adam_betas", [0.5], "adam_betas must be a list of 2 values, each a number >= 0 and < 1 (got [0.5])"),
    ("metrics", "PSNR", "metrics must be a list of values, each a string (got 'PSNR')"),
    ("checkpoint", [1], "checkpoint must be a path or ~ (got [1])"),
    ("results_root", None, "results_root must be a path (got null)"),
    ("device", 3, "device must be auto, cpu, cuda or cuda:N (got 3)"),
    # checked here, before any work, rather than again by the code that reads them
    ("reference_frame", "middle", "reference_frame must be one of first, same, half_clip (got 'middle')"),
    ("min_clip_frames", 9, "min_clip_frames must be an integer >= 10 and <= 2147483647 (got 9)"),
    ("test_ratio", -0.1, "test_ratio must be a number >= 0 and < 1 (got -0.1)"),
    ("infer_bf16", "sometimes", "infer_bf16 must be one of auto, true, false (got 'sometimes')"),
    ("app_concurrency", 0, "app_concurrency must be an integer >= 1 and <= 256 (got 0)"),
])
def test_bad_values_are_one_line(key, value, message):
    if value == ".inf":
        value = parse_value(".inf")
    with pytest.raises(ConfigError) as error:
        Config(model="HyperLipsBase", dataset="demo", config_dict={key: value})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_bad_value_in_a_config_file_is_found_too(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("eval_interval: often\n")
    with pytest.raises(ConfigError, match="eval_interval must be an integer >= 1 and <= 2147483647 .got 'often'."):
        Config(model="HyperLipsBase", dataset="demo", config_files=[str(extra)])


def test_values_come_back_in_their_type(tmp_path):
    config = Config(model="HyperLipsHR", dataset="demo", config_dict={
        "learning_rate": 1, "max_steps": parse_value("1e3"), "checkpoint_root": 2024,
        "hr_preprocess_workers": 3, "checkpoint": tmp_path / "x.pth", "img_size": 256})
    assert config["learning_rate"] == 1.0 and isinstance(config["learning_rate"], float)
    assert config["max_steps"] == 1000 and isinstance(config["max_steps"], int)
    assert config["checkpoint_root"] == "2024" and config["checkpoint"] == str(tmp_path / "x.pth")
    assert config["hr_preprocess_workers"] == 3 and config["img_size"] == 256
    assert Config(model="HyperLipsHR", dataset="demo")["hr_preprocess_workers"] == "auto"
    for mode in MODES:
        assert Config(model="SyncNet", dataset="demo", config_dict={"mode": mode})["mode"] == mode


@pytest.mark.parametrize("model, key, value, message", [
    ("HyperLipsHR", "img_size", 300, "img_size of HyperLipsHR must be one of 128, 256, 512 (got 300)"),
    ("HyperLipsHR", "img_size", 200, "img_size of HyperLipsHR must be one of 128, 256, 512 (got 200)"),
    ("HyperLipsHR", "hr_preprocess_workers", -1, "hr_preprocess_workers must be auto or an integer >= 0 and <= 256"),
    ("HyperLipsBase", "img_size", 256, "img_size of HyperLipsBase must be 128: the Base generator"),
    ("SyncNet", "img_size", 96, "img_size of SyncNet must be 128: the SyncNet expert is built for 128 px"),
    ("SyncNet", "fps", 30, "fps must be 25: "),
    ("HyperLipsBase", "syncnet_T", 7, "syncnet_T must be 5: the SyncNet expert reads windows of 5 frames"),
    ("HyperLipsBase", "sample_rate", 22050, "sample_rate must be 16000: the HyperLips mel spectrogram"),
])
def test_values_the_networks_fix_are_rejected_with_the_reason(model, key, value, message):
    with pytest.raises(ConfigError) as error:
        Config(model=model, dataset="demo", config_dict={key: value})
    assert str(error.value).startswith(message), str(error.value)


def test_values_the_networks_fix_are_constants_not_settings(tmp_path):
    """fps, sample_rate and syncnet_T are constants of the code (utils/audio.py), not YAML keys: the
    code cannot read them from a config, and a config file that spells out their value still runs."""
    from talkingface.config.schema import FIXED
    from talkingface.utils.audio import FPS, SAMPLE_RATE, SYNCNET_T
    assert {key: spec.value for key, spec in FIXED.items()} == {"fps": FPS, "sample_rate": SAMPLE_RATE,
                                                                  "syncnet_T": SYNCNET_T}
    assert not set(FIXED) & known_keys()
    old = tmp_path / "old.yaml"
    old.write_text("fps: 25\nsample_rate: 16000\nsyncnet_T: 5\nseed: 3\n")
    config = Config(model="HyperLipsBase", dataset="demo", config_files=[str(old)], config_dict={"fps": 25.0})
    assert config["seed"] == 3 and not set(FIXED) & set(config.final_config_dict)
    old.write_text("seed: 3\nsyncnet_T: 7\n")
    with pytest.raises(ConfigError) as error:
        Config(model="SyncNet", dataset="demo", config_files=[str(old)])
    assert str(error.value) == ("syncnet_T must be 5: the SyncNet expert reads windows of 5 frames "
                                "(15 input channels) (got 7)")


@pytest.mark.parametrize("argv, message", [
    (["--model=HyperLipsBase", "--mode=infer", "--infer_batch_size=abc", "--video=v.mp4", "--audio=a.wav"],
     "error: infer_batch_size must be an integer >= 1 and <= 4096 (got 'abc')"),
    (["--model=SyncNet", "--max_steps=abc"], "error: max_steps must be an integer >= 0 and <= 2147483647 (got 'abc')"),
    (["--model=SyncNet", "--gan_weight=0"],
     "error: gan_weight is a setting of HyperLipsBase, HyperLipsHR, not of SyncNet: remove it from the command line"),
    (["--model=HyperLipsHR", "--img_size=300"], "error: img_size of HyperLipsHR must be one of 128, 256, 512 (got 300)"),
    (["--model=SyncNet", "--mode=preprocess", "--fps=30"], "error: fps must be 25: preprocessing, the audio-to-frame "
     "timeline, evaluation and inference are built for 25 fps (got 30)"),
])
def test_cli_bad_values_fail_before_any_work(argv, message, capsys, workdir):
    code = cli_main(argv + ["--dataset=demo"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [message]
    assert not list(workdir.iterdir()), "nothing is generated, preprocessed or logged"


def test_the_entry_point_takes_its_modes_from_the_config():
    import run_talkingface
    assert not hasattr(run_talkingface, "MODES")
    for mode in MODES:
        assert parse_args(["--model=SyncNet", f"--mode={mode}"])[0].mode == mode


# --- values out of reach: huge numbers, unreadable files, long values -----------------------------

@pytest.mark.parametrize("key, text, message", [
    ("infer_batch_size", "1e30", "infer_batch_size must be an integer >= 1 and <= 4096 (got 1e+30)"),
    ("max_steps", "1e30", "max_steps must be an integer >= 0 and <= 2147483647 (got 1e+30)"),
    ("batch_size", "5000", "batch_size must be an integer >= 1 and <= 4096 (got 5000)"),
    ("num_workers", "1000", "num_workers must be an integer >= 0 and <= 256 (got 1000)"),
    ("seed", str(2 ** 32), "seed must be an integer >= 0 and <= 2147483647 (got 4294967296)"),
    ("split_seed", str(2 ** 32), "split_seed must be an integer >= 0 and <= 4294967295 (got 4294967296)"),
    ("avatar_cache_mb", "1e9", "avatar_cache_mb must be an integer >= 1 and <= 1048576 (got 1000000000.0)"),
])
def test_integers_have_a_ceiling(key, text, message):
    with pytest.raises(ConfigError) as error:
        Config(model="HyperLipsHR", dataset="demo", config_dict={key: parse_value(text)})
    assert str(error.value) == message


def test_a_huge_float_in_a_config_file_is_out_of_range(tmp_path):
    extra = tmp_path / "huge.yaml"
    extra.write_text("infer_batch_size: 1.0e+308\n")
    with pytest.raises(ConfigError) as error:
        Config(model="HyperLipsBase", dataset="demo", config_files=[str(extra)])
    assert str(error.value) == "infer_batch_size must be an integer >= 1 and <= 4096 (got 1e+308)"


def test_a_number_of_too_many_digits_is_one_line(tmp_path):
    digits = "1" * 5000
    extra = tmp_path / "digits.yaml"
    extra.write_text(f"log_level: INFO\nseed: {digits}\n")
    with pytest.raises(ConfigError) as error:
        Config(model="HyperLipsBase", dataset="demo", config_files=[str(extra)])
    assert str(error.value) == f"config file {extra}: a number there has more than 4300 digits"
    with pytest.raises(ConfigError) as error:   # the command line: the key is named
        Config(model="HyperLipsBase", dataset="demo", config_dict={"seed": parse_value(digits)})
    message = str(error.value)
    assert message.startswith("seed must be an integer >= 0") and "(5000 characters)" in message
    assert len(message) < 300
    with pytest.raises(ConfigError, match=r"^seed must be .*\(got an integer of about 5000 digits\)$"):
        Config(model="HyperLipsBase", dataset="demo", config_dict={"seed": 10 ** 4999})


def test_values_yaml_cannot_build_are_one_line(tmp_path):
    assert parse_value("2024-02-30") == "2024-02-30"        # not a date: the text itself
    assert parse_value("[" * 5000 + "]" * 5000) == "[" * 5000 + "]" * 5000
    extra = tmp_path / "date.yaml"
    extra.write_text("output_name: 2024-02-30\n")
    with pytest.raises(ConfigError, match=r"date.yaml holds a value YAML cannot read \(day is out of range"):
        load_yaml(str(extra))
    extra.write_text("adam_betas: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"date.yaml is nested too deeply"):
        load_yaml(str(extra))


def test_a_config_file_that_cannot_be_read_is_one_line(tmp_path, monkeypatch):
    from talkingface.config import configurator
    binary = tmp_path / "weights.pth"
    binary.write_bytes(bytes(range(256)) * 4)
    control = tmp_path / "nul.yaml"
    control.write_bytes(b"seed: 1\x00\n")
    cases = [(tmp_path, f"config file {tmp_path} is a folder, not a YAML file"),
             (binary, f"config file {binary} is not a text YAML file (it is binary or not UTF-8)"),
             (control, f"config file {control} is not a text YAML file (it holds the control character #x0000)"),
             (tmp_path / ("x" * 5000), "cannot read config file ")]
    for path, message in cases:
        with pytest.raises(ConfigError) as error:
            Config(model="HyperLipsBase", dataset="demo", config_files=[str(path)])
        assert str(error.value).startswith(message) and "\n" not in str(error.value) and len(str(error.value)) < 400

    def no_permission(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(configurator, "open", no_permission, raising=False)  # root reads a chmod 000 file
    with pytest.raises(ConfigError) as error:
        load_yaml("secret.yaml")
    assert str(error.value) == "cannot read config file secret.yaml (permission denied)"


def test_long_values_are_shortened_in_errors(tmp_path):
    value = ("a" * 999 + "\n") * 2000       # 2 MB, with newlines
    checks = [
        ({"max_steps": value}, "max_steps must be an integer >= 0 and <= 2147483647 (got 'aaaa"),
        ({"amp": value}, "amp must be one of auto, true, false (got 'aaaa"),
        ({"adam_betas": [value, value]}, "adam_betas must be a list of 2 values"),
        ({value: 1}, "unknown config key 'aaaa"),
        ({"device": value}, "unknown device 'aaaa"),
    ]
    for overrides, start in checks:
        with pytest.raises(ConfigError) as error:
            Config(model="HyperLipsBase", dataset="demo", config_dict=overrides)
        message = str(error.value)
        assert message.startswith(start) and len(message) < 300 and "\n" not in message, message[:400]
    with pytest.raises(ConfigError) as error:
        Config(model="HyperLipsBase", dataset="demo", config_dict={"max_steps": value})
    assert str(error.value).endswith("…' (2000000 characters))")
    for model, dataset in ((value, "demo"), ("HyperLipsBase", value)):
        with pytest.raises(ConfigError) as error:
            Config(model=model, dataset=dataset)
        assert "(2000000 characters)" in str(error.value) and "\n" not in str(error.value)
        assert len(str(error.value)) < 600   # the list of names that are available follows
    extra = tmp_path / "long.yaml"
    extra.write_text(f"max_steps: {'b' * 2_000_000}\n? {'c' * 2_000_000}\n: 1\n")   # a long key is written '? key'
    with pytest.raises(ConfigError) as error:
        Config(model="HyperLipsBase", dataset="demo", config_files=[str(extra)])
    assert str(error.value).startswith("unknown config key 'cccc") and len(str(error.value)) < 300 + len(str(extra))
    # a value small in YAML but huge once its aliases are expanded (10**9 leaves) is not expanded
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, n in zip("abcdefgh", "bcdefghi")) + "adam_betas: *i\n")
    with pytest.raises(ConfigError) as error:
        Config(model="HyperLipsBase", dataset="demo", config_dict={"adam_betas": load_yaml(str(bomb))["adam_betas"]})
    assert str(error.value).startswith("adam_betas must be a list of 2 values") and len(str(error.value)) < 300


def _cli(argv, cwd):
    return subprocess.run([sys.executable, os.path.join(REPO, "run_talkingface.py"), "--dataset=demo"] + argv,
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_value_error_is_the_only_line_of_a_fresh_process(tmp_path):
    """As a user runs it: nothing else (import-time warnings, a traceback) reaches stderr."""
    result = _cli(["--model=SyncNet", "--max_steps=1e30"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: max_steps must be an integer >= 0 and <= 2147483647 (got 1e+30)"], result.stderr[-2000:]
    assert not any(tmp_path.iterdir()), "nothing is made before the checks"


@pytest.mark.parametrize("argv, start", [
    (["--model=SyncNet", "--max_steps=1e30"], "error: max_steps must be an integer >= 0 and <= 2147483647 (got 1e+30)"),
    (["--model=SyncNet", "--seed=" + "7" * 5000], "error: seed must be an integer >= 0 and <= 2147483647 (got '777"),
    (["--model=SyncNet", "--config_files=."], "error: config file . is a folder, not a YAML file"),
    (["--model=SyncNet", "--config_files=weights.pth"], "error: config file weights.pth is not a text YAML file"),
    (["--model=SyncNet", "--max_steps=" + "x" * 100_000], "error: max_steps must be an integer"),
])
def test_cli_unreadable_or_huge_values_are_one_line(argv, start, tmp_path, monkeypatch, capsys):
    """run_talkingface.main in this process (a process of its own costs seconds of imports; the test
    above runs one as a process)."""
    (tmp_path / "weights.pth").write_bytes(bytes(range(256)) * 4)
    monkeypatch.chdir(tmp_path)
    code = cli_main(["--dataset=demo"] + argv)
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert code == 2, stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(start) and len(lines[0]) < 300, stderr[-2000:]
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pth"], "nothing is made before the checks"
