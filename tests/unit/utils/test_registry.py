"""The registries find their classes by themselves: every module under a registry's packages is
imported on its first lookup, so a new model (dataset, preprocessor, trainer) is one new module."""
import subprocess
import sys
import textwrap

from talkingface.utils.registry import MODELS


def test_a_model_module_dropped_into_the_package_is_found(tmp_path, monkeypatch):
    import talkingface.model.audio_driven_talkingface as models_package
    module = f"{models_package.__name__}.dropped_in_net"
    (tmp_path / "dropped_in_net.py").write_text(textwrap.dedent("""
        from torch import nn

        from talkingface.utils.registry import MODELS


        @MODELS.register("DroppedInNet")
        class DroppedInNet(nn.Module):
            pass
    """))
    assert "DroppedInNet" not in MODELS  # the built-ins are loaded, as in a program that looked one up
    # the new file sits in the package (its folder on the package's path), registry.py unchanged
    monkeypatch.setattr(models_package, "__path__", [*models_package.__path__, str(tmp_path)])
    monkeypatch.setattr(MODELS, "_classes", dict(MODELS._classes))
    monkeypatch.setattr(MODELS, "_loaded", False)  # a fresh process: nothing looked up yet
    monkeypatch.delitem(sys.modules, module, raising=False)
    try:
        assert MODELS.get("DroppedInNet").__module__ == module
        assert {"SyncNet", "HyperLipsBase", "HyperLipsHR", "DroppedInNet"} <= set(MODELS.names())
    finally:
        sys.modules.pop(module, None)


def test_a_lookup_imports_only_its_own_packages():
    """Looking a model up imports the model modules, not the trainers, datasets or evaluator."""
    code = ("import sys; from talkingface.utils.registry import MODELS; names = MODELS.names(); "
            "print(names, sorted(m for m in sys.modules if m.startswith(('talkingface.trainer', "
            "'talkingface.data', 'talkingface.evaluator'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['HyperLipsBase', 'HyperLipsHR', 'SyncNet'] []"
