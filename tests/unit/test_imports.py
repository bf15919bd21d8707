"""Dependencies run one way: utils <- config <- model <- data <- inference <- evaluator <- trainer
<- quick_start/api/app. Every module imports on its own (in a process that has imported nothing of
the package before), no module imports from a higher layer (function-level imports included), and
the imports (function-level ones included) form no circle."""
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


# Run by one fresh interpreter: it imports the third-party modules that the package imports at
# module level (sys.argv[1]; their import is ~all of the cost), then forks one child per module of
# the package (sys.argv[2:]), two at a time; each child imports only that module, so every module
# is checked on its own, in no particular order. A failing child prints "module: the error's last line".
IMPORT_EACH_MODULE = """
import importlib, os, sys, traceback
third_party, modules = sys.argv[1].split(","), sys.argv[2:]
for name in third_party:
    try:
        importlib.import_module(name)
    except Exception:
        pass  # the children that need it fail on it themselves
running = {}
def finish():
    pid, status = os.wait()
    module, code = running.pop(pid), os.waitstatus_to_exitcode(status)
    if code not in (0, 1):  # 1: the child printed its error
        print(f"{module}: the child died with exit code {code}", flush=True)
for module in modules:
    if len(running) == 2:
        finish()
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException as exc:
            line = traceback.format_exception_only(type(exc), exc)[-1].strip()
            os.write(1, f"{module}: {line}\\n".encode())
            os._exit(1)
        os._exit(0)
    running[pid] = module
while running:
    finish()
"""


def module_level_third_party():
    """Third-party modules that some module of the package imports when it is imported (not inside a
    function), e.g. torch, cv2, numpy."""
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
            visit(child)

    for path in PACKAGE.rglob("*.py"):
        visit(ast.parse(path.read_text(encoding="utf-8")))
    return sorted(name for name in found if name.split(".")[0] not in {*sys.stdlib_module_names, "talkingface"})


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module of the package imports on its own (a child forked from a fresh interpreter that
    holds only third-party modules). A module that does not exist is checked too: the check must
    report it, and only it."""
    missing = "talkingface.no_such_module"
    result = subprocess.run([sys.executable, "-c", IMPORT_EACH_MODULE, ",".join(module_level_third_party()),
                             *MODULES, missing], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    failures = sorted(line for line in result.stdout.splitlines() if line.strip())
    assert [f.split(":")[0] for f in failures] == [missing], "\n".join(failures) or f"{missing} was not reported"
