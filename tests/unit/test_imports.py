"""Dependencies run one way: utils <- config <- model <- data <- inference <- evaluator <- trainer
<- quick_start/api/app. Every module imports in a fresh interpreter, no module imports from a higher
layer (function-level imports included), and the imports (function-level ones included) form no circle."""
import ast
import subprocess
import sys
from paths import REPO_ROOT

PACKAGE = REPO_ROOT / "talkingface"

# Layer of each top-level part of the package; a module may import from its own layer or below.
LAYERS = {"utils": 0, "config": 1, "model": 2, "data": 3, "inference": 4, "evaluator": 5, "trainer": 6,
          "quick_start": 7, "api": 7, "app": 7, "live": 7, "": 8}
# Trainers share code through these, never by importing another trainer.
TRAINER_CORE = {"talkingface.trainer", "talkingface.trainer.trainer", "talkingface.trainer.adversarial",
                "talkingface.trainer.health"}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def part(module):
    """'talkingface.data.dataset.clip' -> 'data'; the package itself -> ''."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def imports(path):
    """(imported module, line) for every `talkingface...` import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):  # function-level imports too
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from talkingface.x import y` may name the submodule y: count it as x.y when it exists
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in MODULES else node.module, node.lineno))
    return [(name, line) for name, line in found if name == "talkingface" or name.startswith("talkingface.")]


def test_every_layer_is_known():
    assert {part(m) for m in MODULES} <= set(LAYERS)


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target, line in imports(path):
            if LAYERS[part(target)] > LAYERS[part(source)]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
            if part(source) == "trainer" and part(target) == "trainer" and target not in TRAINER_CORE | {source}:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports another trainer: {target}")
    assert not wrong, "\n".join(wrong)


def test_imports_form_no_circle():
    """Function-level imports count too: one that breaks a circle at import time still ties the
    two modules to each other."""
    graph = {module_name(p): {t for t, _ in imports(p)} for p in PACKAGE.rglob("*.py")}
    state, circles = {}, []

    def visit(module, trail):
        if state.get(module) == "done":
            return
        if state.get(module) == "open":
            circles.append(" -> ".join(trail[trail.index(module):] + [module]))
            return
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if target != module:
                visit(target, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
    assert not circles, "\n".join(circles)


def test_every_module_imports_in_a_fresh_interpreter():
    """One fresh interpreter per part of the package, importing each of its modules; two at a time."""
    layers = sorted(set(LAYERS), key=lambda name: (LAYERS[name], name))
    commands = {layer: "; ".join(f"import {m}" for m in MODULES if part(m) == layer) for layer in layers}
    failures, running = [], []

    def finish(layer, process):
        _, stderr = process.communicate(timeout=180)
        if process.returncode != 0:
            failures.append(f"{layer or 'talkingface'}: {stderr.strip().splitlines()[-1]}")

    for layer in layers:
        if len(running) == 2:
            finish(*running.pop(0))
        running.append((layer, subprocess.Popen([sys.executable, "-c", commands[layer]], cwd=PACKAGE.parent,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
    for layer, process in running:
        finish(layer, process)
    assert not failures, "\n".join(failures)
