"""Config: the merged YAML layers and command-line overrides of one run.

Precedence, lowest to highest: overall.yaml < dataset yaml < model yaml < config files <
`config_dict` (the command line). Every key a user sets must be defined in some YAML file under
talkingface/properties, so a typo is an error that names the closest known key instead of a
setting that is silently ignored.
"""
import difflib
import glob
import os
import re

import torch
import yaml

from talkingface.utils.errors import ConfigError

PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "properties")

# Keys that name the run itself rather than a setting in a YAML file.
RUN_KEYS = ("model", "dataset", "config_files")


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
    """A command-line value as a YAML scalar or flow list: never eval()."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def load_yaml(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold 'key: value' lines")
    return data


def available(kind):
    """Names of the dataset or model YAML files shipped under properties/."""
    return sorted(os.path.splitext(os.path.basename(p))[0]
                  for p in glob.glob(os.path.join(PROPERTIES_DIR, kind, "*.yaml")))


def known_keys():
    """Every key defined in any YAML file under properties/."""
    keys = set(RUN_KEYS)
    for path in [os.path.join(PROPERTIES_DIR, "overall.yaml")] + \
            glob.glob(os.path.join(PROPERTIES_DIR, "*", "*.yaml")):
        keys.update(load_yaml(path))
    return keys


class Config:
    """Merged settings of one run; read like a dict: `config["batch_size"]`."""

    def __init__(self, model, dataset, config_files=None, config_dict=None):
        if model not in available("model"):
            raise ConfigError(f"unknown model '{model}'; available: {', '.join(available('model'))}")
        if dataset not in available("dataset"):
            raise ConfigError(f"unknown dataset '{dataset}'; available: {', '.join(available('dataset'))} "
                              f"(a new dataset is one file talkingface/properties/dataset/<name>.yaml)")
        if isinstance(config_files, str):
            config_files = config_files.split()
        self.known = known_keys()
        values = load_yaml(os.path.join(PROPERTIES_DIR, "overall.yaml"))
        values.update(load_yaml(os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml")))
        values.update(load_yaml(os.path.join(PROPERTIES_DIR, "model", f"{model}.yaml")))
        for path in config_files or []:
            values.update(self._checked(load_yaml(path), path))
        values.update(self._checked(dict(config_dict or {}), "the command line"))
        values.update(model=model, dataset=dataset, config_files=list(config_files or []))
        self.final_config_dict = values
        self._derive()

    def _checked(self, overrides, source):
        for key, value in overrides.items():
            if key not in self.known:
                close = difflib.get_close_matches(key, self.known, n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"unknown config key '{key}' in {source}{hint}")
        return overrides

    def _derive(self):
        v = self.final_config_dict
        v["checkpoint_dir"] = os.path.join(v["checkpoint_root"], v["dataset"], v["model"])
        v["results_dir"] = os.path.join(v["results_root"], v["dataset"], v["model"])
        v["device"] = resolve_device(v["device"])
        if v["mode"] not in ("train", "evaluate", "preprocess", "infer"):
            raise ConfigError(f"unknown mode '{v['mode']}'; use train, evaluate, preprocess or infer")

    # dict-like access
    def __getitem__(self, key):
        if key not in self.final_config_dict:
            raise KeyError(f"config key '{key}' is read by the code but defined in no YAML file")
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


def resolve_device(name):
    if isinstance(name, torch.device):
        return name
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available; use --device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
