"""Config: the merged YAML layers and command-line overrides of one run.

Precedence, lowest to highest: overall.yaml < dataset yaml < model yaml < config files <
`config_dict` (the command line). A key the user sets must be defined in overall.yaml, the
dataset's YAML or the model's YAML: a typo is an error naming the closest key, a key of another
model an error naming its owner, instead of a setting that is silently ignored. Every value is
checked against its type and range (schema.py) before any work starts.
"""
import difflib
import glob
import os
import re
import sys

import torch
import yaml
from yaml.reader import ReaderError

from talkingface.config.schema import check, check_fixed, show_path, show_text, show_value
from talkingface.utils.errors import ConfigError

PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "properties")
# More folders of dataset YAML files (os.pathsep-separated), searched after properties/dataset/:
# a dataset of one's own without writing into the installed package.
DATASET_DIRS_ENV = "TALKINGFACE_DATASET_DIRS"

# Keys that name the run itself rather than a setting in a YAML file.
RUN_KEYS = ("model", "dataset", "config_files")
# What every dataset YAML defines: where its raw videos are and where their preprocessed form goes.
DATASET_KEYS = ("data_root", "preprocessed_root")
# Keys Config computes from the others (not settable).
DERIVED_KEYS = ("checkpoint_dir", "results_dir")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 wants `1.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_value(text):
    """A command-line value as a YAML scalar or flow list: never eval(). Text YAML cannot make a
    value of (a number of more than 4300 digits, a date like 2024-02-30, lists nested thousands
    deep) stays text, and the key's check names the key."""
    try:
        return yaml.load(text, Loader=_Loader)
    except (yaml.YAMLError, ValueError, RecursionError):
        return text


def load_yaml(path):
    name = show_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {name}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {name} is a folder, not a YAML file") from None
    except PermissionError:
        raise ConfigError(f"cannot read config file {name} (permission denied)") from None
    except OSError as exc:  # a name too long, a broken link, a read error
        raise ConfigError(f"cannot read config file {name} ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {name} is not a text YAML file (it is binary or not UTF-8)") from None
    except ReaderError as exc:
        what = f"the control character #x{exc.character:04x}" if isinstance(exc.character, int) else "bytes not UTF-8"
        raise ConfigError(f"config file {name} is not a text YAML file (it holds {what})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {name} is not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"config file {name} is nested too deeply (lists or mappings in one another)") from None
    except ValueError as exc:  # a scalar YAML reads as a number or date cannot be one
        raise ConfigError(_unbuildable(name, exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {name} must hold 'key: value' lines")
    return data


def _unbuildable(name, error):
    """The error line for a scalar YAML resolves to a number or date but cannot build."""
    if "integer string conversion" in str(error):
        return f"config file {name}: a number there has more than {sys.get_int_max_str_digits()} digits"
    return f"config file {name} holds a value YAML cannot read ({' '.join(str(error).split())[:120]})"


def _folders(kind):
    folders = [os.path.join(PROPERTIES_DIR, kind)]
    if kind == "dataset":
        folders += [d for d in os.environ.get(DATASET_DIRS_ENV, "").split(os.pathsep) if d]
    return folders


def yaml_path(kind, name):
    """The YAML file of model or dataset `name` (the first found), or None."""
    for folder in _folders(kind):
        path = os.path.join(folder, f"{name}.yaml")
        if os.path.isfile(path):
            return path
    return None


def available(kind):
    """Names of the dataset or model YAML files (properties/ and, for datasets, DATASET_DIRS_ENV)."""
    return sorted({os.path.splitext(os.path.basename(p))[0]
                   for folder in _folders(kind) for p in glob.glob(os.path.join(folder, "*.yaml"))})


def layer(kind, name=None):
    """The keys and defaults of overall.yaml (kind "overall") or of one model or dataset YAML."""
    if kind == "overall":
        return load_yaml(os.path.join(PROPERTIES_DIR, "overall.yaml"))
    return load_yaml(yaml_path(kind, name))


def known_keys():
    """Every key defined in any YAML file (overall, every model, every dataset)."""
    keys = set(RUN_KEYS) | set(layer("overall"))
    for kind in ("model", "dataset"):
        for name in available(kind):
            keys.update(layer(kind, name))
    return keys


def owners(kind, key):
    """The models or datasets whose YAML defines `key`."""
    return [name for name in available(kind) if key in layer(kind, name)]


class Config:
    """Merged settings of one run; read like a dict: `config["batch_size"]`."""

    def __init__(self, model, dataset, config_files=None, config_dict=None):
        if model not in available("model"):
            raise ConfigError(f"unknown model {_name(model)}; available: {', '.join(available('model'))}")
        if dataset not in available("dataset"):
            raise ConfigError(f"unknown dataset {_name(dataset)}; available: {', '.join(available('dataset'))} "
                              f"(a new dataset is one file talkingface/properties/dataset/<name>.yaml, or "
                              f"<name>.yaml in a folder listed in {DATASET_DIRS_ENV})")
        if isinstance(config_files, str):
            config_files = config_files.split()
        self.model, self.dataset = model, dataset
        defaults = layer("overall")
        defaults.update(layer("dataset", dataset))
        defaults.update(layer("model", model))
        missing = [key for key in DATASET_KEYS if key not in defaults]
        if missing:
            raise ConfigError(f"dataset file {show_path(yaml_path('dataset', dataset))} must define "
                              f"{' and '.join(missing)}")
        self.defaults = defaults
        values = dict(defaults)
        for path in config_files or []:
            values.update(self._checked(load_yaml(path), show_path(path)))
        values.update(self._checked(dict(config_dict or {}), "the command line"))
        values = {key: check(key, value, defaults[key], model) for key, value in values.items()}
        values.update(model=model, dataset=dataset, config_files=list(config_files or []))
        self.final_config_dict = values
        self._derive()

    def _checked(self, overrides, source):
        """The overrides, when each key is defined for this model and dataset; a value the networks
        fix (schema.FIXED) is dropped when it is that value, an error with the reason otherwise."""
        fixed = [key for key, value in overrides.items() if isinstance(key, str) and check_fixed(key, value)]
        overrides = {key: value for key, value in overrides.items() if key not in fixed}
        for key in overrides:
            if not isinstance(key, str):  # YAML reads `1: x` with the number 1 as key
                raise ConfigError(f"unknown config key {_name(key)} in {source}: keys are names")
            if key in RUN_KEYS:
                raise ConfigError(f"{key} is chosen with --{key}, not in {source}")
            if key in self.defaults:
                continue
            models, datasets = owners("model", key), owners("dataset", key)
            if models:
                raise ConfigError(f"{key} is a setting of {', '.join(models)}, not of {self.model}: "
                                  f"remove it from {source}")
            if datasets:
                raise ConfigError(f"{key} is a setting of dataset {', '.join(datasets)}, not of {self.dataset}: "
                                  f"remove it from {source}")
            close = difflib.get_close_matches(key, list(self.defaults), n=1, cutoff=0.6) if len(key) < 200 else []
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key {_name(key)} in {source}{hint}")
        return overrides

    def _derive(self):
        config = self.final_config_dict
        config["checkpoint_dir"] = os.path.join(config["checkpoint_root"], config["dataset"], config["model"])
        config["results_dir"] = os.path.join(config["results_root"], config["dataset"], config["model"])
        config["device"] = resolve_device(config["device"])

    # dict-like access
    def __getitem__(self, key):
        if key not in self.final_config_dict:
            raise ConfigError(f"config key '{key}' is read by the code but defined neither in overall.yaml nor in "
                              f"the YAML of model {self.model} or dataset {self.dataset}: define it there")
        return self.final_config_dict[key]

    def __setitem__(self, key, value):
        self.final_config_dict[key] = value

    def __contains__(self, key):
        return key in self.final_config_dict

    def get(self, key, default=None):
        return self.final_config_dict.get(key, default)

    def plain(self):
        """The settings as plain data (for checkpoints and logs)."""
        return {k: (str(v) if isinstance(v, torch.device) else v) for k, v in self.final_config_dict.items()}

    def __str__(self):
        return "\n".join(f"  {k}: {v}" for k, v in sorted(self.plain().items()))


def _name(value):
    """A name the user gave, quoted and cut short for an error line."""
    return show_text(value) if isinstance(value, str) else show_value(value)


def resolve_device(name):
    if isinstance(name, torch.device):
        return name
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {_name(name)} asked for, but CUDA is not available; use --device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {_name(name)}; use auto, cpu, cuda or cuda:N") from None
