"""Name -> class registries for models, datasets, preprocessors, trainers and metrics.

Classes register themselves with a decorator; the modules that hold them are imported on the
first lookup, so `import talkingface` stays cheap and a lookup never misses a class because its
module happened not to be imported yet.
"""
import difflib
import importlib

from talkingface.utils.errors import ConfigError

# Modules whose import registers every built-in class.
_BUILTIN_MODULES = (
    "talkingface.model.audio_driven_talkingface.syncnet",
    "talkingface.model.audio_driven_talkingface.hyperlipsbase",
    "talkingface.model.audio_driven_talkingface.hyperlipshr",
    "talkingface.data.dataset.syncnet_dataset",
    "talkingface.data.dataset.hyperlipsbase_dataset",
    "talkingface.data.dataset.hyperlipshr_dataset",
    "talkingface.data.dataprocess.hyperlipsbase_process",
    "talkingface.data.dataprocess.hyperlipshr_process",
    "talkingface.trainer.trainer",
    "talkingface.trainer.syncnet_trainer",
    "talkingface.trainer.hyperlipsbase_trainer",
    "talkingface.trainer.hyperlipshr_trainer",
    "talkingface.evaluator.metrics",
)
_loaded = False


def load_builtins():
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


class Registry:
    def __init__(self, kind):
        self.kind = kind
        self._classes = {}

    def register(self, name=None):
        def decorator(cls):
            key = name or cls.__name__
            if key in self._classes and self._classes[key] is not cls:
                raise ValueError(f"two {self.kind}s registered as '{key}'")
            self._classes[key] = cls
            return cls
        return decorator

    def names(self):
        load_builtins()
        return sorted(self._classes)

    def __contains__(self, name):
        load_builtins()
        return name in self._classes

    def get(self, name, default=None):
        load_builtins()
        if name in self._classes:
            return self._classes[name]
        if default is not None:
            return default
        close = difflib.get_close_matches(str(name), self._classes, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown {self.kind} '{name}'{hint}; available: {', '.join(self.names())}")


MODELS = Registry("model")
DATASETS = Registry("dataset class")
PREPROCESSORS = Registry("preprocessor")
TRAINERS = Registry("trainer")
METRICS = Registry("metric")
