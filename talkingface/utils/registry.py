"""Name -> class registries for models, datasets, preprocessors, trainers and metrics.

Classes register themselves with a decorator. Each registry knows the packages its classes live in
and imports every module under them on its first lookup, so `import talkingface` stays cheap, a
lookup never misses a class because its module happened not to be imported yet, and adding a
model, dataset, preprocessor or trainer is one new module in its package: no list to edit here.
"""
import difflib
import importlib
import pkgutil

from talkingface.utils.errors import ConfigError


def modules_under(packages):
    """Names of the packages (or plain modules) in `packages` and of every module below them, sorted.
    Imported by name only: utils/ sits below the layers that hold the classes (tests/unit/test_imports.py)."""
    found = []
    for name in packages:
        found.append(name)
        package = importlib.import_module(name)
        if hasattr(package, "__path__"):  # a package: walk it (walk_packages imports the subpackages)
            found += sorted(info.name for info in pkgutil.walk_packages(package.__path__, name + "."))
    return found


class Registry:
    def __init__(self, kind, packages=()):
        self.kind = kind
        self.packages = tuple(packages)  # where the classes live: every module below is imported on lookup
        self._classes = {}
        self._loading = self._loaded = False

    def load(self):
        """Import every module of the registry's packages once (their decorators register the classes)."""
        if self._loaded or self._loading:  # _loading: a module imported here looks a class up
            return
        self._loading = True
        try:
            for module in modules_under(self.packages):
                importlib.import_module(module)
            self._loaded = True
        finally:
            self._loading = False

    def register(self, name=None):
        def decorator(cls):
            key = name or cls.__name__
            if key in self._classes and self._classes[key] is not cls:
                raise ValueError(f"two {self.kind}s registered as '{key}'")
            self._classes[key] = cls
            return cls
        return decorator

    def names(self):
        self.load()
        return sorted(self._classes)

    def __contains__(self, name):
        self.load()
        return name in self._classes

    def get(self, name, default=None):
        self.load()
        if name in self._classes:
            return self._classes[name]
        if default is not None:
            return default
        close = difflib.get_close_matches(str(name), self._classes, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown {self.kind} '{name}'{hint}; available: {', '.join(self.names())}")


MODELS = Registry("model", ["talkingface.model.audio_driven_talkingface"])
DATASETS = Registry("dataset class", ["talkingface.data.dataset"])
PREPROCESSORS = Registry("preprocessor", ["talkingface.data.dataprocess"])
TRAINERS = Registry("trainer", ["talkingface.trainer"])
METRICS = Registry("metric", ["talkingface.evaluator.metrics"])  # one module: the metrics share its helpers
