"""Every signal handler of the package only sets a flag (or writes a wakeup byte).

A handler runs between two bytecodes of the main thread, inside whatever that thread was
doing: a lock it takes (threading.Event.set, logging, a queue) may be held by the code it
interrupted or by the handler of the signal before it, and the program deadlocks (the demo did,
on a doubled Ctrl-C, with every program left running). So, read from the source:

- `signal.signal(sig, h)`: `h` is SIG_DFL, SIG_IGN, or an instance of a class whose `__call__`
  only assigns constants to its own attributes or items (or calls `os.write`, a wakeup fd);
  the only other call allowed is StopRequest.restore putting back the handlers it saved;
- no asyncio `add_signal_handler` (its callbacks run later, but in a loop we do not own);
- `rclpy.init` on the default context never installs rclpy's handlers (they shut the context
  down under threads that still publish, then raise KeyboardInterrupt into the cleanup).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / 'vla_insertion'
# (file, function) that may pass a variable to signal.signal: restoring the saved handlers
RESTORERS = {('vla_insertion/core/orchestration/processes.py', 'restore')}
SAFE_CONSTANTS = {'SIG_DFL', 'SIG_IGN'}


def _is_signal_signal(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == 'signal'
            and isinstance(f.value, ast.Name) and f.value.id == 'signal')


def _safe_body(function: ast.FunctionDef) -> bool:
    """Return whether a handler's body only stores constants in self (or writes a byte)."""
    for stmt in function.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue                                     # a docstring
        if isinstance(stmt, ast.Assign):
            if not isinstance(stmt.value, ast.Constant):
                return False
            for target in stmt.targets:
                base = target.value if isinstance(target, (ast.Attribute, ast.Subscript)) \
                    else None
                if base is None or any(isinstance(n, ast.Call) for n in ast.walk(target)):
                    return False
                while isinstance(base, (ast.Attribute, ast.Subscript)):
                    base = base.value
                if not (isinstance(base, ast.Name) and base.id == 'self'):
                    return False
            continue
        if (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                and ast.unparse(stmt.value.func) == 'os.write'):
            continue                                     # a wakeup fd
        return False
    return True


class _Checker(ast.NodeVisitor):
    def __init__(self, rel: str) -> None:
        self.rel = rel
        self.problems: list[str] = []
        self._classes: list[ast.ClassDef] = []
        self._functions: list[str] = []

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._classes.append(node)
        self.generic_visit(node)
        self._classes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._functions.append(node.name)
        self.generic_visit(node)
        self._functions.pop()

    def _where(self, node: ast.AST) -> str:
        return f'{self.rel}:{node.lineno}'

    def _handler_ok(self, handler: ast.expr) -> bool:
        if isinstance(handler, ast.Attribute) and handler.attr in SAFE_CONSTANTS:
            return True
        if isinstance(handler, ast.Name) and handler.id == 'self' and self._classes:
            call = next((n for n in self._classes[-1].body
                         if isinstance(n, ast.FunctionDef) and n.name == '__call__'), None)
            return call is not None and _safe_body(call)
        return (isinstance(handler, ast.Name) and self._functions
                and (self.rel, self._functions[-1]) in RESTORERS)

    def visit_Call(self, node: ast.Call) -> None:
        name = ast.unparse(node.func)
        if _is_signal_signal(node):
            if len(node.args) < 2 or not self._handler_ok(node.args[1]):
                handler = ast.unparse(node.args[1]) if len(node.args) > 1 else '?'
                self.problems.append(f'{self._where(node)}: signal handler {handler!r} may '
                                     'do more than set a flag (use StopRequest)')
        elif name.endswith('add_signal_handler'):
            self.problems.append(f'{self._where(node)}: add_signal_handler (use StopRequest)')
        elif name == 'rclpy.init':
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if 'context' not in keywords and not keywords.get(
                    'signal_handler_options', '').endswith('SignalHandlerOptions.NO'):
                self.problems.append(
                    f"{self._where(node)}: rclpy.init installs rclpy's signal handlers; pass "
                    'signal_handler_options=SignalHandlerOptions.NO and poll a StopRequest')
        self.generic_visit(node)


def violations(source: str, rel: str) -> list[str]:
    checker = _Checker(rel)
    checker.visit(ast.parse(source))
    return checker.problems


def test_every_signal_handler_of_the_package_only_sets_a_flag():
    problems = []
    installs = 0
    for path in sorted(PACKAGE.rglob('*.py')):
        source = path.read_text()
        installs += source.count('signal.signal(')
        problems += violations(source, str(path.relative_to(ROOT)))
    assert installs > 0          # the scan reads the package
    assert not problems, '\n'.join(problems)


def test_the_check_catches_handlers_that_lock_log_or_raise():
    bad = """
import logging, signal, threading
import rclpy
stop = threading.Event()
signal.signal(signal.SIGINT, lambda *_: stop.set())
def handler(signum, frame):
    logging.info('stopping')
signal.signal(signal.SIGTERM, handler)
class Flag:
    def __call__(self, signum, frame):
        self.lock.acquire()
    def install(self):
        signal.signal(signal.SIGINT, self)
class Counter:
    def __call__(self, signum, frame):
        self.count = self.count + 1
    def install(self):
        signal.signal(signal.SIGINT, self)
rclpy.init(args=[])
loop.add_signal_handler(signal.SIGINT, stop.set)
"""
    problems = violations(bad, 'bad.py')
    assert [p.split(':')[1] for p in problems] == ['5', '8', '13', '18', '19', '20'], problems


def test_the_check_accepts_flags_and_wakeup_bytes():
    good = """
import os, signal
import rclpy
from rclpy.signals import SignalHandlerOptions
class Flag:
    def __call__(self, signum, frame):
        'Set the flag.'
        self.signals[signum] = True
        self.requested = True
    def install(self):
        signal.signal(signal.SIGINT, self)
class Wakeup:
    def __call__(self, signum, frame):
        os.write(self.fd, b'x')
    def install(self):
        signal.signal(signal.SIGTERM, self)
signal.signal(signal.SIGINT, signal.SIG_IGN)
rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
rclpy.init(context=context)
"""
    assert violations(good, 'good.py') == []
