"""States, step names and relation kinds are spelt through their enums (escalation/records.py), never as bare strings.

A bare "done" or "page" in a comparison, a call, a collection or a function's assignment is a state or step that
a rename of the enum would silently miss. A string that means something else (a Zendesk status, a metric label,
a JSON key) is named at module or class level, where this check does not look, or read by subscript or .get().
"""
from __future__ import annotations

import ast
from pathlib import Path

from emergencyd.escalation.records import EscalationState, RelationKind, StepName, StepOutcome, StepState

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("daemon", "escalation", "parsers", "tests", "bench", "scripts")
ENUMS_FILE = ROOT / "escalation" / "records.py"
SPELT = {member.value for enum in (EscalationState, StepState, StepName, RelationKind, StepOutcome) for member in enum}
KEY_READS = {"get", "pop", "setdefault", "labels"}      # a key or a metric label, not a state


def python_files() -> list[Path]:
    files = []
    for name in SCANNED:
        top = ROOT / name
        files += [p for p in top.rglob("*") if p.is_file() and (p.suffix == ".py" or _is_python_script(p))]
    return sorted(p for p in files if p != ENUMS_FILE)


def _is_python_script(path: Path) -> bool:
    try:
        return path.read_bytes()[:64].startswith(b"#!") and b"python" in path.read_bytes()[:64]
    except OSError:
        return False


def bare_literals(source: str) -> list[tuple[int, str]]:
    """(line, value) of each string constant spelling a state, step or kind where code uses it as a value."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True)
            elif isinstance(child, (ast.Assign, ast.AnnAssign)) and not in_function:
                continue                       # a module or class constant: a name for another meaning
            elif isinstance(child, ast.Expr) and isinstance(child.value, ast.Constant):
                continue                       # a docstring
            elif isinstance(child, ast.Subscript):
                visit(child.value, in_function)   # d["page"] reads a key
            elif isinstance(child, ast.Dict):
                for value in child.values:
                    visit_value(value, in_function)
            elif isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) and child.func.attr in KEY_READS:
                visit(child.func, in_function)
            elif isinstance(child, ast.JoinedStr):
                continue                       # text in an f-string
            else:
                visit_value(child, in_function)

    def visit_value(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Dict):         # a dict inside a value: its keys are keys there too
            for value in node.values:
                visit_value(value, in_function)
            return
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str) and node.value in SPELT:
                found.append((node.lineno, node.value))
            return
        visit(node, in_function)

    visit(ast.parse(source), False)
    return found


def test_the_check_finds_the_uses_that_matter_and_passes_over_keys_and_constants() -> None:
    source = '''
KIND = "incident"                      # a name for another meaning: not looked at
class Status:
    NEW = "new"
def f(record, status):
    if record.state == "done":         # found
        return {"state": "pending"}    # found: a dict value
    record.step("page")                # found
    status.get("ticket")               # a key
    status["comment"]                  # a key
    metrics.labels("failed")           # a label
    state = "stuck"                    # found
    return f"{record} done", ["first"] # the f-string is text; the list element is found
def g():
    return {"doc": {"ticket": 1, "x": "failed"}}   # a nested dict's key is a key; its value is found
'''
    assert bare_literals(source) == [(6, EscalationState.DONE), (7, EscalationState.PENDING), (8, StepName.PAGE),
                                     (12, EscalationState.STUCK), (13, RelationKind.FIRST), (15, StepState.FAILED)]


def test_no_bare_state_step_or_kind_literals_outside_the_enums() -> None:
    offences = [f"{path.relative_to(ROOT)}:{line}: {value!r}"
                for path in python_files() for line, value in bare_literals(path.read_text())]
    assert not offences, "spell these through escalation/records.py's enums:\n" + "\n".join(offences)
