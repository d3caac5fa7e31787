"""Channel rules, one module per op family (see :mod:`npcompile.rules.registry`)."""

from npcompile.rules.registry import load_builtin_rules, register, registered_ops, rule_for

__all__ = ["load_builtin_rules", "register", "registered_ops", "rule_for"]
