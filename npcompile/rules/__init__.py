"""Channel rules, one module per op family (see :mod:`npcompile.rules.registry`)."""

from npcompile.rules.registry import Freeze, load_builtin_rules, register, registered_ops, rule_for

__all__ = ["Freeze", "load_builtin_rules", "register", "registered_ops", "rule_for"]
